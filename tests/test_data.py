"""Datasets, transforms, batching and COCO evaluation."""

import contextlib
import io
import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools", reason="COCO loading and COCOeval need pycocotools (not on the GPU "
                                         "machines unless its wheel is carried)")
from PIL import Image
from pycocotools.cocoeval import COCOeval

from dabdetr.data import CocoDetection, SyntheticShapes, collate_detection, load_coco, make_transforms
from dabdetr.data import coco as coco_module
from dabdetr.data import transforms as T
from dabdetr.data.synthetic import synthetic_coco
from dabdetr.data.worker_logging import WorkerLogHandlers
from dabdetr.evaluation.coco_eval import evaluate_detections


def white_boxes_image(width, height, boxes):
    """A black image with white filled rectangles at integer xyxy boxes."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def white_extent(image):
    """xyxy extent of the bright pixels (the drawn box) in a PIL image."""
    bright = np.asarray(image.convert("L")) > 127
    ys, xs = np.nonzero(bright)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def one_box_target(box, width, height):
    return {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([1]),
            "size": torch.tensor([height, width]), "orig_size": torch.tensor([height, width])}


@pytest.mark.parametrize("transform", [
    lambda image, target: T.hflip(image, target),
    lambda image, target: T.resize(image, target, 90, max_size=200),
    lambda image, target: T.resize(image, target, 150, max_size=170),
    lambda image, target: T.crop(image, target, 10, 30, 60, 80),
], ids=["flip", "resize", "resize-capped", "crop"])
def test_transforms_move_boxes_with_the_pixels(transform):
    box = [40, 20, 100, 70]
    image = white_boxes_image(160, 120, [box])
    out_image, out_target = transform(image, one_box_target(box, 160, 120))
    assert out_target["size"].tolist() == [out_image.height, out_image.width]
    np.testing.assert_allclose(out_target["boxes"][0].numpy(), white_extent(out_image), atol=1.0)


def test_crop_drops_boxes_outside_and_clips_the_rest():
    boxes = [[5, 5, 20, 20], [50, 40, 90, 80]]
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2]),
              "size": torch.tensor([100, 100])}
    image, cropped = T.crop(white_boxes_image(100, 100, boxes), target, 30, 30, 40, 40)
    assert cropped["labels"].tolist() == [2]
    assert cropped["boxes"].tolist() == [[20.0, 10.0, 40.0, 40.0]]
    assert cropped["size"].tolist() == [40, 40]


def test_resize_rule_matches_detr():
    assert T.resized_shape(480, 640, 800, 1333) == (800, 1066)
    assert T.resized_shape(100, 1000, 800, 1333) == (133, 1330)  # capped: shorter = round(1333 / 10)
    assert T.resized_shape(640, 480, 600) == (800, 600)


def test_resize_fits_an_exported_image_size():
    """fit: an artifact exported for one size takes a portrait photo at that size's height (its
    width scaled alike), and what already fits unchanged."""
    assert T.resized_shape(480, 640, 800, 1333, fit=(800, 1066)) == (800, 1066)
    assert T.resized_shape(640, 480, 800, 1333, fit=(800, 1066)) == (800, 600)  # not (1066, 800)
    assert T.resized_shape(100, 1000, 800, 1333, fit=(800, 1066)) == (106, 1066)
    target = {"boxes": torch.tensor([[0.0, 0.0, 480.0, 640.0]]), "size": torch.tensor([640, 480])}
    image, target = make_transforms(False, [800], 1333, fit=(800, 1066))(Image.new("RGB", (480, 640)), target)
    assert tuple(image.shape[-2:]) == (800, 600) and target["size"].tolist() == [800, 600]


def test_train_pipeline_is_a_function_of_the_generator():
    box = [40, 20, 100, 70]
    pipeline = make_transforms(True, [96, 128, 160], 200, crop_resize_sizes=(100, 120), crop_size=(60, 90))
    image = white_boxes_image(160, 120, [box])
    runs = [pipeline(image, one_box_target(box, 160, 120), random.Random(seed)) for seed in (7, 7, 8)]
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1]["boxes"], runs[1][1]["boxes"])
    for pixels, target in runs:  # normalized cxcywh inside the image
        assert pixels.shape[0] == 3 and (target["boxes"] >= 0).all() and (target["boxes"] <= 1).all()


def test_collate_pads_bottom_right_and_masks_the_padding():
    samples = [(torch.ones(3, 4, 6), {"image_id": 1}), (torch.full((3, 5, 3), 2.0), {"image_id": 2})]
    images, mask, targets = collate_detection(samples)
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6)
    assert mask[0, :4, :].logical_not().all() and mask[0, 4, :].all()
    assert mask[1, :, :3].logical_not().all() and mask[1, :, 3:].all()
    assert images[1, :, :, 3:].abs().sum() == 0 and [t["image_id"] for t in targets] == [1, 2]


def test_collated_targets_share_one_buffer_per_dtype_and_keep_their_values():
    given = [{"boxes": torch.rand(3, 4), "labels": torch.tensor([1, 2, 3]), "size": torch.tensor([5, 6]),
              "image_id": 7},
             {"boxes": torch.rand(4, 2).t(), "labels": torch.zeros(0, dtype=torch.int64),
              "size": torch.tensor([4, 6]), "image_id": 8, "area": torch.tensor(2.5)},
             {"boxes": torch.zeros(0, 4), "labels": torch.tensor([4]), "size": torch.tensor([1, 1]), "image_id": 9}]
    originals = [{k: v.clone() if torch.is_tensor(v) else v for k, v in t.items()} for t in given]
    samples = [(torch.zeros(3, 2, 2), t) for t in given]
    _, _, targets = collate_detection(samples)
    for target, original, passed in zip(targets, originals, given):
        assert target.keys() == original.keys() and target is not passed
        for key, value in original.items():
            if torch.is_tensor(value):
                assert target[key].dtype == value.dtype and torch.equal(target[key], value)
                assert passed[key] is not target[key] and torch.equal(passed[key], value)  # the caller's left alone
            else:
                assert target[key] == value
    for dtype in (torch.float32, torch.int64):
        storages = {t[k].untyped_storage().data_ptr() for t in targets for k in t
                    if torch.is_tensor(t[k]) and t[k].dtype == dtype}
        assert len(storages) == 1
    targets[0]["boxes"].add_(1)  # a target's tensors are its own region of the buffer
    assert torch.equal(targets[1]["boxes"], originals[1]["boxes"])
    assert torch.equal(targets[0]["boxes"], originals[0]["boxes"] + 1)


def test_collated_targets_cross_a_worker_process_intact():
    dataset = SyntheticShapes(6, make_transforms(False, [64], 64), split_seed=5)
    loader = torch.utils.data.DataLoader(dataset, 3, num_workers=1, collate_fn=collate_detection)
    expected = [dataset[i][1] for i in range(6)]
    received = [t for _, _, targets in loader for t in targets]
    assert len(received) == 6
    for target, original in zip(received, expected):
        assert target.keys() == original.keys()
        for key, value in original.items():
            assert torch.equal(target[key], value) if torch.is_tensor(value) else target[key] == value


def test_synthetic_set_is_deterministic_and_boxes_fit_the_drawn_shapes():
    first = synthetic_coco(30, seed=3)
    assert first == synthetic_coco(30, seed=3) and first != synthetic_coco(30, seed=4)
    counts = {}
    for image in first["images"]:
        counts[image["id"]] = sum(a["image_id"] == image["id"] for a in first["annotations"])
    assert min(counts.values()) >= 1 and max(counts.values()) <= 5
    assert {a["category_id"] for a in first["annotations"]} == {1, 2, 3, 4}

    dataset = SyntheticShapes(30, make_transforms(False, [128], 128), split_seed=3)
    singles = [i for i, c in counts.items() if c == 1]
    assert singles
    for image_id in singles:
        (ann,) = [a for a in first["annotations"] if a["image_id"] == image_id]
        pixels = np.asarray(dataset.load_image(dataset.coco.imgs[image_id]))
        ys, xs = np.nonzero((pixels == ann["color"]).all(axis=-1))
        x, y, w, h = ann["bbox"]
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == pytest.approx([x, y, x + w, y + h], abs=1)
    image, target = dataset[0]
    assert image.shape == (3, 128, 128) and target["labels"].max() < 4 and dataset.num_classes == 4


@pytest.mark.parametrize("mapping", ["category_id", "contiguous"])
def test_coco_folders_load_with_crowds_dropped_and_labels_mapped(coco_folder, mapping):
    annotation_file, image_dir = coco_folder
    with open(annotation_file) as f:
        raw = json.load(f)
    assert any(a["iscrowd"] for a in raw["annotations"])
    dataset = CocoDetection(annotation_file, image_dir, make_transforms(False, [200], 333), mapping)
    assert len(dataset) == len(raw["images"])
    category_ids = sorted(c["id"] for c in raw["categories"])
    assert dataset.num_classes == (max(category_ids) + 1 if mapping == "category_id" else len(category_ids))
    total = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        info = dataset.coco.imgs[target["image_id"]]
        assert target["orig_size"].tolist() == [info["height"], info["width"]]
        assert min(image.shape[1:]) == 200 or max(image.shape[1:]) == 333
        anns = [a for a in raw["annotations"] if a["image_id"] == target["image_id"] and not a["iscrowd"]]
        assert len(target["labels"]) == len(anns)
        expected = sorted(a["category_id"] if mapping == "category_id" else category_ids.index(a["category_id"])
                          for a in anns)
        assert sorted(target["labels"].tolist()) == expected
        total += len(anns)
    assert total == sum(1 for a in raw["annotations"] if not a["iscrowd"])


def test_cached_images_give_the_samples_of_fresh_reads_and_are_decoded_once(coco_folder, monkeypatch):
    annotation_file, image_dir = coco_folder
    transforms = make_transforms(True, [160, 200], 333, (150,), (100, 140))  # random: flips, sizes, crops
    fresh, cached = (CocoDetection(annotation_file, image_dir, transforms, cache_images=c) for c in (False, True))
    decoded = []
    real_open = coco_module.open_image
    monkeypatch.setattr(coco_module, "open_image", lambda path: decoded.append(path) or real_open(path))
    for epoch in range(3):
        for dataset in (fresh, cached):
            dataset.set_epoch(epoch)
        for index in range(len(fresh)):
            (image_a, target_a), (image_b, target_b) = fresh[index], cached[index]
            assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
    assert len(decoded) == 3 * len(fresh) + len(cached)  # the cached dataset: once per image


def test_coco_eval_of_the_ground_truth_is_perfect(coco_folder):
    coco = load_coco(coco_folder[0])
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.dataset["annotations"] if not a["iscrowd"]]
    metrics = evaluate_detections(coco, results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    shifted = [{**r, "bbox": [r["bbox"][0] + r["bbox"][2] * 0.4, *r["bbox"][1:]]} for r in results]
    assert evaluate_detections(coco, shifted)["AP"] < 0.5  # and it does measure something


def test_bad_annotation_files_give_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_coco(str(broken))
    other = tmp_path / "other.json"
    other.write_text('{"foo": 1}')
    with pytest.raises(ValueError, match="other.json: not a COCO detection file"):
        load_coco(str(other))
    bad_box = tmp_path / "bad_box.json"
    bad_box.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}],
                                   "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}))
    with pytest.raises(ValueError, match="bad_box.json: annotation 7 has no valid bbox"):
        load_coco(str(bad_box))


def test_missing_and_corrupt_images_give_errors_naming_the_file(tmp_path):
    data = synthetic_coco(2, seed=0)
    Image.new("RGB", (128, 128)).save(tmp_path / data["images"][0]["file_name"])
    (tmp_path / data["images"][1]["file_name"]).write_bytes(b"not an image")
    dataset = CocoDetection(load_coco(data), str(tmp_path), make_transforms(False, [128], 128))
    dataset[0]
    with pytest.raises(ValueError, match=f"cannot decode image .*{data['images'][1]['file_name']}"):
        dataset[1]
    os.remove(tmp_path / data["images"][0]["file_name"])
    with pytest.raises(FileNotFoundError, match=data["images"][0]["file_name"]):
        dataset[0]


def spawned_loader_log(tmp_path, log_name, worker_init_fn):
    """What a skipped image's warning, logged in a spawned loader worker, leaves in the log file
    tmp_path/log_name that the main process's "dabdetr" logger writes to."""
    data = synthetic_coco(2, seed=0)
    Image.new("RGB", (data["images"][0]["width"], data["images"][0]["height"])).save(
        tmp_path / data["images"][0]["file_name"])
    (tmp_path / data["images"][1]["file_name"]).write_bytes(b"not an image")
    dataset = CocoDetection(load_coco(data), str(tmp_path), make_transforms(False, [64], 64), skip_bad_images=True)
    path = tmp_path / log_name
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("from the worker: %(levelname)s %(message)s"))
    logger = logging.getLogger("dabdetr")
    logger.addHandler(handler)
    try:
        loader = torch.utils.data.DataLoader(dataset, 2, num_workers=1, collate_fn=collate_detection,
                                             multiprocessing_context="spawn", worker_init_fn=worker_init_fn)
        assert [len(targets) for _, _, targets in loader] == [1]
    finally:
        logger.removeHandler(handler)
        handler.close()
    return path.read_text()


def test_spawned_loader_workers_log_to_the_main_process_handlers(tmp_path):
    """Under spawn or forkserver (macOS's default, Linux's from Python 3.14) a worker inherits no
    log handler: without WorkerLogHandlers a skipped image is missing from the run's log."""
    expected = ("from the worker: WARNING skipping an unreadable image (skip_bad_images): "
                f"cannot decode image {tmp_path}")
    assert expected not in spawned_loader_log(tmp_path, "without.log", None)
    assert expected in spawned_loader_log(tmp_path, "with.log", WorkerLogHandlers())


def test_image_size_disagreeing_with_its_annotation_is_an_error(coco_folder, tmp_path):
    annotation_file, image_dir = coco_folder
    coco = load_coco(annotation_file)
    first = coco.imgs[sorted(coco.imgs)[0]]
    shutil.copytree(image_dir, tmp_path / "images")
    Image.new("RGB", (10, 10)).save(tmp_path / "images" / first["file_name"])
    dataset = CocoDetection(coco, str(tmp_path / "images"), make_transforms(False, [200], 333))
    with pytest.raises(ValueError, match=f"{first['file_name']} is 10x10 but its annotation says"):
        dataset[0]


def test_per_category_ap_equals_cocoeval_of_that_category_alone(coco_folder):
    coco = load_coco(coco_folder[0])
    rng = random.Random(0)
    results = []
    for ann in coco.dataset["annotations"]:
        if not ann["iscrowd"]:  # each box shifted by 0 to 60 % of its width, with a random score
            x, y, w, h = ann["bbox"]
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [x + w * rng.uniform(0, 0.6), y, w, h], "score": rng.random()})
    metrics = evaluate_detections(coco, results)
    assert len(metrics["classes"]) == len({r["category_id"] for r in results}) >= 3
    for category_id, category in coco.cats.items():
        alone = COCOeval(coco, coco.loadRes(results), "bbox")
        alone.params.catIds = [category_id]
        with contextlib.redirect_stdout(io.StringIO()):
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        if alone.stats[0] == -1:  # no ground truth of this category: not listed
            assert category["name"] not in metrics["classes"]
        else:
            assert metrics["classes"][category["name"]] == pytest.approx({"AP": alone.stats[0], "AP50": alone.stats[1]})
    aps = [v["AP"] for v in metrics["classes"].values()]
    assert metrics["AP"] == pytest.approx(sum(aps) / len(aps)) and min(aps) < max(aps)
    assert set(evaluate_detections(coco, [])["classes"]) == set(metrics["classes"])
