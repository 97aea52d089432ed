import os

import pytest
import torch
from coco_fixture import TINYCOCO, write_coco_folder
from torch.utils._python_dispatch import TorchDispatchMode

from dabdetr.ops import kernel_info


class OpLog(TorchDispatchMode):
    """The name of every op dispatched while it is entered (ops.append(packet name))."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


class Target(str):
    """Where a test's tensors live ("cpu" or "cuda": usable as a torch device), with the impl that
    runs the kernels under test there and their op library: impl "kernel" and torch.ops.dabdetr,
    or for the CUDA kernels on the CUDA emulator impl "cuda_emulated" and torch.ops.dabdetr_emulated
    (CPU tensors)."""

    def __new__(cls, device, impl="kernel"):
        target = super().__new__(cls, device)
        target.impl = impl
        target.emulated = impl == "cuda_emulated"
        return target

    @property
    def ops(self):
        return torch.ops.dabdetr_emulated if self.emulated else torch.ops.dabdetr

    @property
    def cuda_kernels(self):
        """Whether the CUDA kernels are under test (on a GPU or emulated)."""
        return self.emulated or self == "cuda"


GPU = pytest.param(Target("cuda"), id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])
EMULATED = pytest.param(Target("cpu", "cuda_emulated"), id="cuda_emulated", marks=pytest.mark.cuda_emulated)
DEVICES = [pytest.param(Target("cpu"), id="cpu"), GPU, EMULATED]
CUDA_TARGETS = [GPU, EMULATED]  # the CUDA kernels, on a GPU and on the emulator


def require_emulator(key="cuda_emulated", what="the CUDA emulator", build="bash scripts/build_cuda_emulator.sh"):
    """Skips the test where kernel_info()[key] says `what` is not built; fails it instead under
    DABDETR_REQUIRE_CUDA_EMULATOR (CI builds both emulator libraries)."""
    if kernel_info()[key]:
        return
    if os.environ.get("DABDETR_REQUIRE_CUDA_EMULATOR", "") not in ("", "0"):
        pytest.fail(f"DABDETR_REQUIRE_CUDA_EMULATOR is set but {what} is not built ({build})")
    pytest.skip(f"{what} is not built ({build})")


def check_target(target):
    if target == "cuda" and not target.emulated and not kernel_info()["cuda"]:
        pytest.fail("a CUDA device is present but dabdetr._C was built without CUDA kernels")
    if target.emulated:
        require_emulator()
    return target


@pytest.fixture(params=DEVICES)
def device(request):
    """A Target: the CPU kernels, the CUDA kernels on a GPU, the CUDA kernels on the emulator."""
    return check_target(request.param)


@pytest.fixture(autouse=True)
def _require_extension():
    if not kernel_info()["extension_loaded"]:
        pytest.fail(f"dabdetr._C did not load: {kernel_info()['unavailable_reason']}")


@pytest.fixture(params=["generated", "tinycoco"])
def coco_folder(request, tmp_path):
    """(annotation file, image dir): a generated COCO folder, and tinycoco's real photos."""
    if request.param == "generated":
        return write_coco_folder(str(tmp_path / "generated"))
    if not os.path.isdir(TINYCOCO):
        pytest.skip(f"tinycoco not found at {TINYCOCO}")
    return os.path.join(TINYCOCO, "annotations", "instances_val2017.json"), os.path.join(TINYCOCO, "images", "val2017")
