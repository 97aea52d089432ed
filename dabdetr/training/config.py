"""Training settings (one object, saved in every checkpoint) and the recipe of each preset."""

import logging
from dataclasses import dataclass, field

from dabdetr.data.transforms import COCO_EVAL_SIZE, COCO_MAX_SIZE, COCO_TRAIN_SIZES
from dabdetr.evaluation.precision import check_amp
from dabdetr.models.config import DictConfig

LR_SCHEDULES = ("step", "cosine")
# Settings of earlier versions, read from their checkpoints and ignored: name -> why.
RETIRED_FIELDS = {"channels_last": "the backbone now arranges its own memory format"}

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(DictConfig):
    """Defaults = the published DAB-DETR recipe (docs/training.md): AdamW lr 1e-4 with
    the backbone at 1e-5, weight decay 1e-4, 50 epochs with the lr divided by 10 after 40, batch
    2 per process (x 8 GPUs = 16), gradient-norm clip 0.1, DETR's multi-scale augmentation."""

    preset: str = "dab_detr_r50"  # model preset (dabdetr.models.config.PRESETS)
    model: dict = field(default_factory=dict)  # DABDETRConfig overrides
    output_dir: str = "outputs/train"
    init: str | None = None  # pretrained weights to start from (from_pretrained path); the class head is
    # kept only where its shape fits the dataset's classes
    # A model with frozen batch norm or frozen stages needs pretrained weights (the model's
    # backbone_weights, or init); True runs it without (random frozen layers: for tests and timing).
    allow_random_backbone: bool = False

    # Data: COCO under data_root ({train,val}_images/ and the two annotation files), or, without a
    # data_root, the embedded synthetic shapes.
    data_root: str | None = None
    train_images: str = "train2017"
    val_images: str = "val2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_annotations: str = "annotations/instances_val2017.json"
    label_mapping: str = "category_id"  # COCO: "category_id" (91 logits) or "contiguous" (80)
    synthetic_train_images: int = 4000
    synthetic_val_images: int = 200
    synthetic_image_size: int = 128
    synthetic_max_objects: int = 5
    synthetic_object_size: tuple = (0.12, 0.45)  # side range, fraction of the image
    synthetic_max_overlap: float = 0.3  # largest IoU between two shapes of an image
    group_by_aspect_ratio: bool = True  # training batches of landscape or portrait images only (less padding)
    hflip_prob: float = 0.5  # horizontal flips in training
    train_sizes: tuple = COCO_TRAIN_SIZES  # shorter side, drawn per image
    max_size: int = COCO_MAX_SIZE  # longer side cap
    crop_resize_sizes: tuple = (400, 500, 600)  # the random-crop branch; () disables it
    crop_size: tuple = (384, 600)
    eval_size: int = COCO_EVAL_SIZE

    # Optimization.
    epochs: int = 50
    lr_schedule: str = "step"  # "step": lr x 0.1 from epoch lr_drop on; "cosine": from lr down to 0
    # along half a cosine over the epochs (lr_drop unused)
    lr_drop: int = 40
    batch_size: int = 2  # per process
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    amp: str = "off"  # "bf16" | "fp16" autocast (fp16 with a gradient scaler)
    compile: bool = False  # train with the backbone, encoder and decoder under torch.compile
    # (training/compilation.py): about a minute or two of compiling, then faster steps
    ema_decay: float = 0.0  # > 0: evaluate and export an exponential moving average of the weights,
    # updated after every optimizer step (ema = decay * ema + (1 - decay) * weights); 0: off
    time_budget_min: float = 0.0  # > 0: after the first epoch, shorten the later ones (fewer steps
    # each) where needed so that training and its evaluations end within this many minutes

    # Loss weights and matching costs (the published ones; the same for every decoder layer).
    loss_ce: float = 1.0  # sigmoid focal classification loss
    loss_bbox: float = 5.0  # L1 of normalized (cx, cy, w, h)
    loss_giou: float = 2.0  # 1 - GIoU
    cost_class: float = 2.0  # focal cost of the Hungarian matcher
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal_alpha: float = 0.25  # of both the focal loss and the focal cost
    focal_gamma: float = 2.0

    # Running.
    device: str = "auto"  # "auto" (CUDA if available) | "cpu" | "cuda"
    keep_freed_memory: bool = True  # on CPU, glibc keeps freed memory for reuse instead of returning it
    # to the OS after every large tensor (dabdetr.host_memory; 5 % faster demo steps on a 2-core EPYC)
    num_workers: int = 2
    cache_images: bool = False  # keep decoded COCO images in memory (per loader process): for small datasets
    seed: int = 42  # the initial model on every process; then process r > 0 draws from seed + 1000003 r
    eval_every: int = 1  # epochs between COCO evaluations (the last epoch is always evaluated)
    log_every: int = 10  # steps between step records in log.jsonl
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at the end of each epoch only)
    checkpoint_epochs: int = 1  # epochs between end-of-epoch checkpoints; evaluated, last and preempted epochs save too
    keep_last: int = 1  # epoch checkpoints kept as checkpoint_epochNNNN.pt besides checkpoint.pt and best.pt
    accumulate_steps: int = 1  # micro-batches of batch_size per optimizer step (effective batch x this)
    skip_bad_images: bool = False  # skip (and count) unreadable images instead of stopping with an error
    tensorboard: bool = False  # also write TensorBoard scalars and pictures to output_dir/tensorboard
    progress: bool = True  # tqdm bars

    @classmethod
    def from_dict(cls, values):
        for name in RETIRED_FIELDS.keys() & values.keys():
            logger.info("ignoring the training setting %s=%r: %s", name, values[name], RETIRED_FIELDS[name])
        return super().from_dict({k: v for k, v in values.items() if k not in RETIRED_FIELDS})

    def __post_init__(self):
        check_amp(self.amp)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("epochs", "batch_size", "eval_every", "log_every", "accumulate_steps", "checkpoint_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: per epoch only), got {self.checkpoint_every}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {self.keep_last}")
        if self.time_budget_min < 0:
            raise ValueError(f"time_budget_min must be >= 0 (0: none), got {self.time_budget_min}")
        self.train_sizes, self.crop_resize_sizes, self.crop_size, self.synthetic_object_size = (
            tuple(self.train_sizes), tuple(self.crop_resize_sizes), tuple(self.crop_size),
            tuple(self.synthetic_object_size))


# Settings that differ from the defaults, per preset.
RECIPES = {
    # The CPU demo on the synthetic shapes: the small `demo` model trained from scratch (no
    # pretrained backbone at hand, so the backbone learns at the full lr), sized to finish in
    # under 15 minutes on 2 CPU cores (about 135 s per epoch on the AVX2 EPYC of 2026-12-03); on
    # a slower machine its time budget shortens the epochs after the first.
    "demo": {
        "preset": "demo", "epochs": 6, "lr_drop": 5, "batch_size": 8, "lr": 3e-4, "lr_backbone": 3e-4,
        "time_budget_min": 14.0,
        "synthetic_train_images": 3600, "synthetic_val_images": 200, "synthetic_object_size": (0.2, 0.5),
        "synthetic_max_overlap": 0.15,
        "train_sizes": (128,), "max_size": 128,
        "crop_resize_sizes": (), "eval_size": 128, "num_workers": 1, "log_every": 20,
    },
}
# DAB-Deformable-DETR's demo: the same data, schedule and time budget as DAB-DETR's, side by side.
RECIPES["demo_deformable"] = {**RECIPES["demo"], "preset": "demo_deformable"}


def recipe(preset, **overrides):
    """TrainConfig of a preset's recipe (the published one for the COCO presets), with overrides."""
    return TrainConfig.from_dict({"preset": preset, **RECIPES.get(preset, {}), **overrides})
