"""Loads the CMake-built extension (instead of dabdetr._C) and checks both ops against the
reference, so the CMake build cannot silently rot.  Usage: check_cmake_extension.py BUILD_DIR"""

import glob
import os
import sys
import warnings

os.environ["DABDETR_DISABLE_KERNELS"] = "1"  # keep the setup.py build out of this process
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch

    from dabdetr.ops import reference

(library,) = glob.glob(os.path.join(sys.argv[1], "_C*.so"))
torch.ops.load_library(library)

g = torch.Generator().manual_seed(0)
qc, qp, kc, kp, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (5, 5, 40, 40, 40))
mask = torch.rand(2, 40, generator=g) < 0.3
out, _ = torch.ops.dabdetr.modulated_attention(qc, qp, kc, kp, v, mask, 0.25)
torch.testing.assert_close(out, reference.modulated_attention(qc, qp, kc, kp, v, mask, 0.25))
boxes = torch.rand(7, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05
torch.testing.assert_close(torch.ops.dabdetr.anchor_sine_embed(boxes, 16, 20.0),
                           reference.anchor_sine_embed(boxes, 16, 20.0))
print(f"CMake-built extension {os.path.basename(library)}: both ops match the reference")
