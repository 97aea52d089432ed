import pytest
import torch

from dabdetr.ops import kernel_info

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not kernel_info()["cuda"]:
        pytest.fail("a CUDA device is present but dabdetr._C was built without CUDA kernels")
    return request.param


@pytest.fixture(autouse=True)
def _require_extension():
    if not kernel_info()["extension_loaded"]:
        pytest.fail(f"dabdetr._C did not load: {kernel_info()['unavailable_reason']}")
