"""One config object that builds every part of the model, and the published presets."""

import dataclasses
from dataclasses import dataclass

from dabdetr.ops.extension import IMPLS as OPS_IMPLS

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONE_NORMS = ("frozen_bn", "batch_norm")
# "dab_detr": one feature map, modulated attention (models/detector.py); "dab_deformable_detr":
# multi-scale features, deformable attention (models/deformable_detector.py).
ARCHITECTURES = ("dab_detr", "dab_deformable_detr")


class DictConfig:
    """Dict round trip of a dataclass config (checkpoints store configs as plain dicts)."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field{'s' * (len(unknown) > 1)} {', '.join(unknown)}; the fields "
                             f"are {', '.join(known)}")
        return cls(**values)

    def replace(self, **overrides):
        return dataclasses.replace(self, **overrides)


@dataclass
class DABDETRConfig(DictConfig):
    """Architecture of a model of the DAB-DETR family (docs/architecture.md), defaults = DAB-DETR-R50."""

    architecture: str = "dab_detr"
    backbone: str = "resnet50"
    dilation: bool = False  # DC5: stride 16, layer4 dilated
    backbone_stage: int = 4  # the ResNet stage whose output the transformer reads: 4 = C5 (every published
    # model), 3 = C4 (stride 16), 2 = C3 (stride 8; for small images, e.g. the synthetic demo)
    train_backbone: bool = True  # False freezes the whole backbone
    backbone_frozen_stages: int = 1  # 1: stem and layer1 frozen (the recipe); 0: nothing frozen
    backbone_norm: str = "frozen_bn"  # "frozen_bn" (pretrained weights) | "batch_norm" (from scratch)
    # The backbone's initial weights when a model is built for training (dabdetr/weights/backbone.py):
    # "imagenet" (torchvision's, as every published recipe), a URL, a file, a hub id, or "none".
    backbone_weights: str = "imagenet"
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.0
    num_queries: int = 300
    num_patterns: int = 0  # 3 for the "3 pattern" models: num_patterns * num_queries queries
    random_refpoints_xy: bool = False  # anchor centres initialized as logit(U(0, 1))
    keep_query_pos: bool = False  # positional query in every cross-attention, not only layer 0
    pe_temperature_h: float = 20.0  # feature-map sine encoding (10 for the official R50-DC5)
    pe_temperature_w: float = 20.0
    # Anchor sine embedding: 10000 in every published model. With a small hidden_dim that leaves most
    # frequencies nearly constant across the image; the feature map's 20 trains the demo-size
    # model faster, on real photos and on the synthetic shapes (docs/results/training.md).
    anchor_temperature: float = 10000.0
    # inverse_sigmoid eps (docs/checkpoints.md, pitfall 1): official 1e-3 in both places, Hugging Face
    # 1e-5 in both, MMDetection 1e-5 in the decoder's anchor update and 1e-3 in the box head.
    anchor_update_eps: float = 1e-3
    box_head_eps: float = 1e-3
    num_classes: int = 91  # logits; 91 = COCO category ids 0..90 (official, Hugging Face)
    prior_prob: float = 0.01  # class bias init: -log((1 - p) / p)
    num_select: int = 300  # post-processing top-k over queries x classes
    ops_impl: str = "auto"  # "auto" | "reference" | "kernel" | "cuda_emulated", for every fused op of the model
    # Denoising training (DN-DETR; models/denoising.py): noised copies of the ground truth as extra
    # queries in training. 0 = off = the published DAB-DETR; adds label_embed to the weights.
    dn_groups: int = 0
    dn_label_noise: float = 0.2
    dn_box_noise: float = 0.4
    # DAB-Deformable-DETR only. Feature levels: the last min(3, L) backbone stages up to
    # backbone_stage (C3-C5 in the published models), then strided 3x3 convolutions for the rest.
    num_feature_levels: int = 4
    # Kernel of the backbone levels' input projections: 1 (official), 3 (detrex's ChannelMapper
    # default, where one of its checkpoints has it; read from the weights).
    input_proj_kernel_size: int = 1
    encoder_points: int = 4  # sampling points per head and level of the encoder's deformable attention
    decoder_points: int = 4  # the decoder's
    # Two-stage (detrex's): the encoder's top-scoring proposals become the decoder's anchors and
    # queries (num_queries of them), instead of learned ones.
    two_stage: bool = False

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.ops_impl not in OPS_IMPLS:
            raise ValueError(f"ops_impl must be one of {OPS_IMPLS}, got {self.ops_impl!r}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm must be one of {BACKBONE_NORMS}, got {self.backbone_norm!r}")
        if self.backbone_stage not in (2, 3, 4):
            raise ValueError(f"backbone_stage must be 2, 3 or 4, got {self.backbone_stage}")
        if self.dilation and self.backbone_stage != 4:
            raise ValueError("dilation (DC5) dilates stage 4: it needs backbone_stage=4")
        if not isinstance(self.backbone_weights, str) or not self.backbone_weights:
            raise ValueError("backbone_weights must be 'imagenet', 'none', a URL, a file or a hub id, got "
                             f"{self.backbone_weights!r}")
        if self.backbone_frozen_stages not in (0, 1):
            raise ValueError(f"backbone_frozen_stages must be 0 or 1, got {self.backbone_frozen_stages}")
        if self.backbone_norm == "batch_norm" and self.backbone_frozen_stages:
            raise ValueError("backbone_norm='batch_norm' trains the backbone from scratch: it needs "
                             "backbone_frozen_stages=0")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        if self.hidden_dim % 4:
            raise ValueError(f"hidden_dim must be a multiple of 4 (sine encodings), got {self.hidden_dim}")
        if self.architecture == "dab_deformable_detr":
            self._check_deformable()

    def _check_deformable(self):
        if self.hidden_dim % 32:
            raise ValueError(f"dab_deformable_detr normalizes its input projections with GroupNorm(32): hidden_dim "
                             f"must be a multiple of 32, got {self.hidden_dim}")
        if not 1 <= self.num_feature_levels <= 16:  # the fused op's most levels
            raise ValueError(f"num_feature_levels must be 1 to 16, got {self.num_feature_levels}")
        if self.input_proj_kernel_size not in (1, 3):
            raise ValueError(f"input_proj_kernel_size must be 1 or 3, got {self.input_proj_kernel_size}")
        if self.encoder_points < 1 or self.decoder_points < 1:
            raise ValueError(f"encoder_points and decoder_points must be positive, got {self.encoder_points} and "
                             f"{self.decoder_points}")
        if min(3, self.num_feature_levels) > self.backbone_stage:
            raise ValueError(f"{min(3, self.num_feature_levels)} backbone levels need backbone_stage >= "
                             f"{min(3, self.num_feature_levels)}, got {self.backbone_stage}")
        unsupported = {"dn_groups": 0, "keep_query_pos": False}
        for field, value in unsupported.items():
            if getattr(self, field) != value:
                raise ValueError(f"dab_deformable_detr does not use {field} (got {getattr(self, field)!r})")
        if self.two_stage and (self.num_patterns or self.random_refpoints_xy):
            raise ValueError("two_stage takes its queries from the encoder's proposals: it has no num_patterns or "
                             "random_refpoints_xy")

    @property
    def total_queries(self):
        return self.num_queries * max(self.num_patterns, 1)


PRESETS = {
    # The seed recipe (MMDetection R50, 42.3 AP; official 42.2).
    "dab_detr_r50": {},
    "dab_detr_r50_3pat": {"num_patterns": 3},
    # The official R50-DC5 checkpoint uses feature-map temperature 10 (docs/checkpoints.md, pitfall 2).
    "dab_detr_r50_dc5": {"dilation": True, "pe_temperature_h": 10.0, "pe_temperature_w": 10.0},
    "dab_detr_r50_dc5_3pat": {"dilation": True, "num_patterns": 3},
    # Fixed random anchor centres (paper, Table 8).
    "dab_detr_r50_dc5_fixxy": {"dilation": True, "random_refpoints_xy": True},
    "dab_detr_r101": {"backbone": "resnet101"},
    # Small enough to train from scratch on a laptop CPU (the synthetic-shapes demo): trainable
    # batch norm and no frozen stage (no pretrained weights to keep), C4 features (stride 16: an
    # 8x8 map for the 128-pixel images), and denoising queries (DN-DETR's remedy for slow early
    # training) with half of their labels flipped (DINO's ratio): with DN-DETR's 0.2 the denoising
    # queries mostly copy their label, and AP was 0.01-0.03 after 3 epochs; with 0.5 they must
    # classify from the image, and AP was 0.25-0.29 after 3 epochs. The anchors' sine embedding at
    # the feature map's temperature, 20 (see anchor_temperature): on the synthetic demo the
    # backbone took off sooner (seed 0: AP50 0.614 after 6 epochs, against 0.05 after 4; docs/results/training.md).
    "demo": {
        "backbone": "resnet18", "backbone_norm": "batch_norm", "backbone_frozen_stages": 0, "backbone_weights": "none",
        "backbone_stage": 3,
        "hidden_dim": 128, "num_heads": 8, "ffn_dim": 512, "num_encoder_layers": 3, "num_decoder_layers": 3,
        "num_queries": 30, "num_select": 100, "dn_groups": 3, "dn_label_noise": 0.5, "anchor_temperature": 20.0,
    },
}


# DAB-Deformable-DETR (models/deformable_detector.py): the official repository's README model,
# 48.7 AP with R50 in 50 epochs. Its position encoding is Deformable DETR's, at temperature 10000
# (the official code ignores its pe_temperature arguments), and it keeps the top 100 detections.
DEFORMABLE = {
    "architecture": "dab_deformable_detr", "pe_temperature_h": 10000.0, "pe_temperature_w": 10000.0,
    "num_select": 100,
}
PRESETS.update({
    "dab_deformable_detr_r50": DEFORMABLE,
    # detrex's two-stage model (49.7 AP): the encoder's best proposals as the decoder's queries.
    "dab_deformable_detr_r50_two_stage": {**DEFORMABLE, "two_stage": True},
    # The synthetic-shapes demo's size (see "demo"), on the published four levels: C3-C5 of a
    # ResNet-18 (16x16 to 4x4 for the 128-pixel images) and a 2x2 one from a strided convolution.
    # C2-C4 (32x32 to 8x8) made 4 times the tokens and a training step 760 ms instead of 400.
    "demo_deformable": {
        **DEFORMABLE, "backbone": "resnet18", "backbone_norm": "batch_norm", "backbone_frozen_stages": 0,
        "backbone_weights": "none", "backbone_stage": 4,
        "hidden_dim": 128, "num_heads": 8, "ffn_dim": 512, "num_encoder_layers": 3, "num_decoder_layers": 3,
        "num_queries": 30, "num_select": 100,
    },
})


def preset(name, **overrides):
    """DABDETRConfig of a named preset, with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return DABDETRConfig.from_dict({**PRESETS[name], **overrides})
