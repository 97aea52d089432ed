"""The pictures: ground truth and detections stay visible whatever the image colours; AP bars as long as the AP."""

import numpy as np
import pytest
import torch
from PIL import Image

from dabdetr.evaluation.plots import PALETTE, draw_detections, plot_category_ap

NO_DETECTIONS = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}


@pytest.mark.parametrize("fill", [(255, 255, 255), (0, 0, 0), (200, 200, 250)])
def test_ground_truth_outline_is_visible_on_any_fill(fill):
    image = Image.new("RGB", (64, 64), fill)
    drawn = np.asarray(draw_detections(image, NO_DETECTIONS, {}, ground_truth=torch.tensor([[10.0, 20, 40, 50]])))
    # Across every point of every side, the 3-pixel band centred on the edge differs from the fill.
    differs = (drawn != fill).any(axis=-1)
    assert differs[19:22, 10:41].any(axis=0).all() and differs[49:52, 10:41].any(axis=0).all()
    assert differs[20:51, 9:12].any(axis=1).all() and differs[20:51, 39:42].any(axis=1).all()
    assert (drawn[25:45, 15:35] == fill).all()  # the inside is untouched
    assert (drawn[:15] == fill).all()


def test_detections_below_the_threshold_are_not_drawn():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    detections = {"scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 2]),
                  "boxes": torch.tensor([[5.0, 30, 30, 60], [35.0, 30, 60, 60]])}
    drawn = np.asarray(draw_detections(image, detections, {1: "a", 2: "b"}, score_threshold=0.5))
    assert (drawn[45, 5] == PALETTE[1]).all()  # the left edge of the kept box
    assert (drawn[40:62, 33:62] == 128).all()  # nothing where the dropped box was


def test_curves_leave_the_pyplot_backend_alone(tmp_path):
    import importlib

    import matplotlib

    import dabdetr.evaluation.plots

    matplotlib.use("svg")  # whatever the user chose
    importlib.reload(dabdetr.evaluation.plots)
    records = [{"type": "train", "epoch": 0, "step": s, "loss": 2.0 - s / 10, "loss_ce": 1.0, "loss_bbox": 0.5,
                "loss_giou": 0.5} for s in range(3)]
    records += [{"type": "epoch", "epoch": 0, "loss": 1.9}, {"type": "eval", "epoch": 0, "AP": 0.1, "AP50": 0.2,
                                                              "AP75": 0.05}]
    dabdetr.evaluation.plots.plot_training_curves(records, str(tmp_path / "curves.png"))
    assert matplotlib.get_backend() == "svg"
    with Image.open(tmp_path / "curves.png") as picture:
        assert picture.size == (1200, 450)


def test_category_ap_bars_are_sorted_and_as_long_as_their_ap(tmp_path):
    classes = {"rare": {"AP": 0.1, "AP50": 0.2}, "common": {"AP": 0.8, "AP50": 0.9}, "mid": {"AP": 0.4, "AP50": 0.6}}
    plot_category_ap(classes, str(tmp_path / "ap.png"))
    with Image.open(tmp_path / "ap.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    blue = np.abs(pixels - (31, 119, 180)).sum(axis=2) < 30  # matplotlib's tab:blue: the AP bars
    left = np.flatnonzero(blue.any(axis=0)).min()  # where every bar starts: AP 0
    lengths = []  # the blue run from AP 0 in each row that has one, one entry per bar, top to bottom
    for row in np.flatnonzero(blue[:, left]):
        run = int(np.argmin(blue[row, left:]))
        if lengths and row == lengths[-1][0] + 1:
            lengths[-1] = (row, max(run, lengths[-1][1]))
        else:
            lengths.append((row, run))
    lengths = [run for _, run in lengths]
    assert len(lengths) == 3 and lengths[0] > lengths[1] > lengths[2]  # 0.8 at the top, 0.1 at the bottom
    assert abs(lengths[0] / lengths[2] - 8) < 0.5 and abs(lengths[1] / lengths[2] - 4) < 0.3
