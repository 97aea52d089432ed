"""Pictures: training curves from the log records, the AP of each category, and detections drawn
on images."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from dabdetr.evaluation.evaluator import detect_image
from dabdetr.weights.files import atomic_write

LOSS_NAMES = ("loss", "loss_ce", "loss_bbox", "loss_giou")
AP_NAMES = ("AP", "AP50", "AP75")
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


def save_figure(figure, path):
    """A PNG of figure at path, written atomically (a reader never sees half a picture)."""
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100), binary=True)


def plot_training_curves(records, path):
    """Losses per step (x = fractional epoch) and AP per evaluated epoch, from log.jsonl records."""
    steps = [r for r in records if r["type"] == "train"]
    epochs = [r for r in records if r["type"] == "epoch"]
    evals = [r for r in records if r["type"] == "eval"]
    steps_per_epoch = {r["epoch"]: r["step"] + 1 for r in steps}  # the last logged step closes an epoch
    x = [r["epoch"] + r["step"] / steps_per_epoch[r["epoch"]] for r in steps]
    # A Figure of our own on the Agg canvas: files only, and the caller's pyplot backend untouched.
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    loss_axis, ap_axis = figure.subplots(1, 2)
    for name in LOSS_NAMES:
        loss_axis.plot(x, [r[name] for r in steps], label=name, linewidth=1, alpha=0.8)
    if epochs:
        loss_axis.plot([r["epoch"] + 1 for r in epochs], [r["loss"] for r in epochs], "ko-", label="loss (epoch mean)")
    loss_axis.set(xlabel="epoch", ylabel="loss (weighted total, and its final-layer terms)", yscale="log",
                  title="training losses")
    loss_axis.legend(fontsize=8)
    for name in AP_NAMES:
        points = [(r["epoch"] + 1, r[name]) for r in evals if r[name] is not None]
        if points:
            ap_axis.plot(*zip(*points), "o-", label=name)
    ap_axis.set(xlabel="epoch", ylabel="COCO box AP", ylim=(0, 1), title="validation AP")
    ap_axis.grid(alpha=0.3)
    if evals:
        ap_axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def plot_category_ap(classes, path):
    """Horizontal bars of AP and AP50 per category ({name: {"AP", "AP50"}}, evaluate_detections'
    "classes"), highest AP at the top, so that the classes a model misses stand out."""
    ordered = sorted(classes.items(), key=lambda item: item[1]["AP"])  # barh draws bottom-up
    figure = Figure(figsize=(7, max(2.5, 0.6 + 0.22 * len(ordered))))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    rows = range(len(ordered))
    axis.barh([r + 0.2 for r in rows], [v["AP50"] for _, v in ordered], height=0.4, label="AP50", color="tab:orange")
    axis.barh([r - 0.2 for r in rows], [v["AP"] for _, v in ordered], height=0.4, label="AP", color="tab:blue")
    axis.set_yticks(list(rows), [name for name, _ in ordered], fontsize=8)
    axis.set(xlim=(0, 1), xlabel="COCO box AP", title=f"AP of each category ({len(ordered)})")
    axis.grid(axis="x", alpha=0.3)
    axis.set_axisbelow(True)  # grid lines behind the bars
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over one
    figure.tight_layout()
    save_figure(figure, path)


def draw_detections(image, detections, class_names, score_threshold=0.3, ground_truth=None):
    """A copy of the PIL image with detections (scores [k], labels [k], boxes [k, 4] xyxy pixels)
    above score_threshold drawn as coloured boxes with "name score"; ground_truth boxes [n, 4]
    (xyxy pixels), if given, as thin white boxes with a black rim (visible on any fill)."""
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    if ground_truth is not None:
        for box in ground_truth.tolist():
            draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], outline=(0, 0, 0), width=3)
            draw.rectangle(box, outline=(255, 255, 255), width=1)
    keep = detections["scores"] >= score_threshold
    for score, label, box in zip(detections["scores"][keep].tolist(), detections["labels"][keep].tolist(),
                                 detections["boxes"][keep].tolist()):
        color = PALETTE[label % len(PALETTE)]
        draw.rectangle(box, outline=color, width=2)
        text = f"{class_names.get(label, label)} {score:.2f}"
        left, top = box[0], max(box[1] - 11, 0)
        draw.rectangle(draw.textbbox((left, top), text), fill=color)
        draw.text((left, top), text, fill=(255, 255, 255))
    return image


def detection_grid(model, dataset, device, num_images=8, columns=4, score_threshold=0.3, min_side=256):
    """Predictions of model on the first num_images of a CocoDetection-like dataset, with its
    ground truth, as one PIL image grid (small images enlarged to about min_side pixels for
    legibility); None for an empty dataset."""
    tiles = []
    for index in range(min(num_images, len(dataset))):
        image_tensor, target = dataset[index]
        detections = detect_image(model, image_tensor, target["orig_size"].tolist(), device)
        original = dataset.load_image(dataset.coco.imgs[target["image_id"]])
        scale = max(1, min_side // min(original.width, original.height))
        detections["boxes"] = detections["boxes"] * scale
        original = original.resize((original.width * scale, original.height * scale), Image.Resampling.NEAREST)
        truth = dataset.raw_target(target["image_id"], original.width // scale, original.height // scale)["boxes"]
        tiles.append(draw_detections(original, detections, dataset.class_names, score_threshold, truth * scale))
    if not tiles:
        return None
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = Image.new("RGB", (min(columns, len(tiles)) * width, rows * height), (0, 0, 0))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    return grid


def save_detection_grid(model, dataset, device, path, **options):
    """detection_grid(...) written as a PNG at path (nothing for an empty dataset)."""
    grid = detection_grid(model, dataset, device, **options)
    if grid is not None:
        atomic_write(path, lambda f: grid.save(f, format="PNG"), binary=True)
