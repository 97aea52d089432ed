"""Detection on many image files with any runtime (dabdetr.deployment.runtime): a DataLoader of images
batched by aspect ratio, COCO results, and annotated pictures on request."""

import os

import torch
from tqdm import tqdm

from dabdetr.box_ops import clip_boxes_to_image
from dabdetr.data.collate import collate_detection
from dabdetr.data.images import ImageFiles, as_rgb_image, aspect_ratio_batches, open_image
from dabdetr.data.transforms import COCO_EVAL_SIZE, COCO_MAX_SIZE, make_transforms
from dabdetr.data.worker_logging import WorkerLogHandlers
from dabdetr.deployment.runtime import Detector, EagerDetector, load_detector
from dabdetr.evaluation.coco_eval import to_coco_results
from dabdetr.evaluation.plots import draw_detections
from dabdetr.models.detector import select_detections


def image_id(path, index):
    """A COCO image id: the file name's number for COCO-style names (000000397133.jpg), else index."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else index


def collate_readable(samples):
    """collate_detection of a batch's readable samples; None when it has none."""
    return collate_detection(samples) if any(sample is not None for sample in samples) else None


def detect_batch(detector, images, mask, targets, score_threshold):
    """The detections of one collated batch at or above score_threshold: a dict per image (scores,
    labels, boxes xyxy in original-image pixels, clipped to the image), on the CPU.

    The clipping is for people and their tools (a box's pixels exist); COCO evaluation
    (dabdetr.evaluation) leaves boxes unclipped, as the published models were evaluated."""
    metadata, device = detector.metadata, detector.device
    orig_sizes = torch.stack([target["orig_size"] for target in targets]).to(device)
    outputs = detector(images.to(device, non_blocking=True), mask.to(device, non_blocking=True), orig_sizes)
    if metadata["postprocess"]:
        scores, labels, boxes = outputs["scores"], outputs["labels"], outputs["boxes"]
    else:
        scores, labels, boxes = select_detections(outputs["logits"], outputs["boxes"], orig_sizes,
                                                  metadata["model_config"]["num_select"])
    boxes = clip_boxes_to_image(boxes, orig_sizes)
    detections = []
    for image_scores, classes, image_boxes in zip(scores.cpu(), labels.cpu(), boxes.cpu()):
        keep = image_scores >= score_threshold
        detections.append({"scores": image_scores[keep], "labels": classes[keep], "boxes": image_boxes[keep]})
    return detections


def prediction_transforms(metadata, score_threshold, size=None, max_size=None):
    """The evaluation transforms of a detector's images, after checking the settings of a
    prediction: score_threshold in [0, 1]; size / max_size (the shorter side the model sees and
    the cap of the longer side) positive, default the detector's metadata, else COCO's; images
    scaled down further to fit an artifact exported for one image size."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1] (scores are probabilities), got {score_threshold}")
    for name, value in (("size", size), ("max_size", max_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of pixels (None: the default), got {value}")
    return make_transforms(False, [size or metadata["eval_size"] or COCO_EVAL_SIZE],
                           max_size or metadata["max_size"] or COCO_MAX_SIZE, fit=metadata.get("image_size"))


def detect(detector, images, score_threshold=0.3, size=None, max_size=None, batch_size=8, class_names=None,
           amp="off"):
    """Detections on images in memory or on disk, with the model's own preprocessing.

    detector: a Detector (load_detector), a checkpoint's path or a published model's name
    (load_detector: with its class names and evaluation size), or a DABDETR model (run eagerly;
    it carries no evaluation size: COCO's 800 / 1333 unless size / max_size say otherwise).
    images: one image or a list; each a PIL image, a path (read upright, as its EXIF orientation
    says), an [H, W, 3] RGB uint8 numpy array or a [3, H, W] uint8 tensor. size / max_size as in
    predict_images. class_names: {label: name} (default: the Detector's, e.g. from
    load_pretrained's metadata). Returns, per image (a list for a list, else one), {"scores" [n],
    "labels" [n] int64, "boxes" [n, 4] (x0, y0, x1, y1) in the image's pixels, "names": the
    labels' class names where known, else their numbers} at or above score_threshold, highest
    score first; boxes clipped to the image. A model runs in eval mode and is left in the mode it
    was in. amp: "off" (float32), "bf16" or "fp16" autocast for a model or checkpoint run eagerly (a
    Detector keeps the precision it was made with).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(detector, (str, os.PathLike)):
        detector = load_detector(detector, amp=amp)
    elif not isinstance(detector, Detector):
        detector = EagerDetector(detector, amp=amp)
    elif amp != "off":
        raise ValueError(f"amp={amp!r}: a Detector's precision is set when it is made (load_detector(..., amp=...))")
    single = not isinstance(images, (list, tuple))
    pictures = [as_rgb_image(image) for image in ([images] if single else images)]
    transforms = prediction_transforms(detector.metadata, score_threshold, size, max_size)
    names = {int(label): name for label, name in (class_names or detector.metadata["class_names"]).items()}
    detections = []
    for start in range(0, len(pictures), batch_size):
        samples = [transforms(picture, {"boxes": torch.zeros(0, 4), "orig_size": torch.tensor([picture.height,
                                                                                               picture.width])})
                   for picture in pictures[start:start + batch_size]]
        detections += detect_batch(detector, *collate_detection(samples), score_threshold)
    for found in detections:
        found["names"] = [names.get(int(label), str(int(label))) for label in found["labels"]]
    return detections[0] if single else detections


def predict_images(detector, paths, batch_size=8, num_workers=2, score_threshold=0.3, size=None, max_size=None,
                   picture_dir=None, progress=True, skip_bad_images=False):
    """Runs detector on every image of paths.

    size / max_size: the shorter side the model sees and the cap of the longer side (default:
    the detector's metadata, else the COCO evaluation sizes). picture_dir: where to write one
    annotated PNG per image (None: none). An unreadable image is a ValueError naming it; with
    skip_bad_images it is left out, with a warning.
    Returns (results, images): COCO results (image_id, category_id = the model's class index,
    bbox xywh in original pixels, score) at or above score_threshold, and the COCO "images"
    entries (id, file_name, height, width) of the images read, which their image ids refer to.
    """
    metadata = detector.metadata
    dataset = ImageFiles(paths, prediction_transforms(metadata, score_threshold, size, max_size), skip_bad_images)
    batches = aspect_ratio_batches(dataset.sizes, batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate_readable, pin_memory=detector.device.type == "cuda",
                                         worker_init_fn=WorkerLogHandlers())
    ids = [image_id(path, index) for index, path in enumerate(dataset.paths)]
    if len(set(ids)) != len(ids):  # numbered names that collide (a/1.jpg, b/1.jpg): number by position
        ids = list(range(len(ids)))
    names = {int(label): name for label, name in metadata["class_names"].items()}
    labels = {label: label for label in range(metadata["model_config"]["num_classes"])}
    results, read = [], []
    with tqdm(total=len(paths), initial=len(dataset.skipped), desc="predict", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for indices, batch in zip(batches, loader):
            bar.update(len(indices))
            if batch is None:  # no image of it could be read
                continue
            targets = batch[2]
            read += [target["index"] for target in targets]
            for target, detections in zip(targets, detect_batch(detector, *batch, score_threshold)):
                results += to_coco_results([ids[target["index"]]], [detections], labels)
                if picture_dir is not None:
                    path = dataset.paths[target["index"]]
                    picture = draw_detections(open_image(path, upright=True), detections, names, score_threshold)
                    picture.save(os.path.join(picture_dir, os.path.splitext(os.path.basename(path))[0] + ".png"))
    images = [{"id": ids[i], "file_name": dataset.paths[i], "height": dataset.sizes[i][0],
               "width": dataset.sizes[i][1]} for i in sorted(read)]
    return results, images
