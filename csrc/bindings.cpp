// The dabdetr op library (its schemas: op_schemas.h), and the build information exposed to Python.
// Backends register their kernels in cpu/ops_cpu.cpp and cuda/ops_cuda.cpp.
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>
#include <torch/version.h>

#include "cpu/kernels.h"
#include "op_params.h"
#include "op_schemas.h"

TORCH_LIBRARY(dabdetr, m) { dabdetr::define_ops(m); }

namespace dabdetr::cpu {
std::vector<std::string> kernel_dtypes();  // cpu/ops_cpu.cpp, beside the check it lists
}

#ifdef DABDETR_WITH_CUDA
namespace dabdetr::cuda {
pybind11::dict cuda_build_info();  // cuda/ops_cuda.cpp
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The level the CPU kernels run at now (DABDETR_CPU_ISA is read on every call).
  m.def("cpu_isa", [] { return dabdetr::cpu::isa_name(dabdetr::cpu::selected_isa()); });
  m.def("build_info", [] {
    pybind11::dict info;
    info["cpu"] = true;
    info["cpu_dtypes"] = dabdetr::cpu::kernel_dtypes();
    info["deformable_max_levels"] = dabdetr::kMaxDeformableLevels;
    info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef DABDETR_WITH_CUDA
    info["cuda"] = true;
    for (auto item : dabdetr::cuda::cuda_build_info()) info[item.first] = item.second;
#else
    info["cuda"] = false;
    info["cuda_archs"] = pybind11::list();
    info["cuda_version"] = pybind11::none();
    info["cuda_dtypes"] = pybind11::list();
#endif
    return info;
  });
}
