// Stand-in for cuda_runtime.h in the emulated build.
#pragma once

#include "cuda_runtime_api.h"
