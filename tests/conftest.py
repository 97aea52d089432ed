import os

import pytest
import torch
from coco_fixture import TINYCOCO, write_coco_folder

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


@pytest.fixture(params=["generated", "tinycoco"])
def coco_folder(request, tmp_path):
    """(annotation file, image dir): a generated COCO folder, and tinycoco's real photos."""
    if request.param == "generated":
        return write_coco_folder(str(tmp_path / "generated"))
    if not os.path.isdir(TINYCOCO):
        pytest.skip(f"tinycoco not found at {TINYCOCO}")
    return os.path.join(TINYCOCO, "annotations", "instances_val2017.json"), os.path.join(TINYCOCO, "images", "val2017")
