"""ResNet backbones with torchvision's state-dict names, frozen batch norm, and DC5 dilation.

DAB-DETR reads one stage's output: C5 (stride 32, or 16 with dilation) in every published
model; C4 or C3 (backbone_stage=3 or 2, stride 16 or 8) for small images, where the later stages
are not built at all. DAB-Deformable-DETR reads the last three (C3, C4, C5). With pretrained
weights (every published recipe) the norms are FrozenBatchNorm2d and the stem and layer1 stay
frozen (backbone_frozen_stages=1); train_backbone=False freezes everything. Training from
scratch (the synthetic demo, no pretrained weights at hand) uses backbone_norm="batch_norm" with
every stage trainable, since a ResNet with frozen identity norms and random weights learns
poorly.

Each convolution and the norm after it run as one convolution wherever the norm's statistics are
fixed (always for FrozenBatchNorm2d, in eval mode for BatchNorm2d): the norm's per-channel scale
goes into the weights and its shift becomes the bias (conv_norm). Under bfloat16 autocast the
activations then stay in 16 bits from one convolution to the next, with no float32 norm between
them. On the CPU the activations are channels-last (NHWC), the layout oneDNN's convolutions work
in, so that no convolution reorders its input and output. There, where nothing needs a gradient
(inference, the frozen stages in training), the ReLU and the residual's add after a convolution
happen as oneDNN writes the convolution's output (conv_norm_relu): a separate bfloat16 ReLU or add
costs as much as the convolution itself on a CPU with AMX.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dabdetr.models.onednn_fusion import compute_dtype, fuses_pointwise


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers):
    y = x * s + (b - mean * s), s = weight * rsqrt(var + eps)."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of ordinary BatchNorm carry num_batches_tracked, which we do not keep.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        scale, shift = norm_scale_and_shift(self)
        # In x's dtype: a bfloat16 activation stays bfloat16.
        return torch.addcmul(shift.to(x.dtype)[None, :, None, None], x, scale.to(x.dtype)[None, :, None, None])


def has_fixed_statistics(norm):
    """Whether norm is a per-channel affine map: FrozenBatchNorm2d, or BatchNorm2d in eval mode."""
    return isinstance(norm, FrozenBatchNorm2d) or (not norm.training and norm.running_mean is not None)


def norm_scale_and_shift(norm):
    """(scale [C], shift [C]) of a norm with fixed statistics: norm(x) = x * scale + shift."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


def folded_weight_and_bias(conv, norm):
    """(weight, bias) of the one convolution that computes norm(conv(x)) for a bias-free conv and a
    norm with fixed statistics: the weights scaled per output channel, the shift as bias."""
    scale, shift = norm_scale_and_shift(norm)
    return conv.weight * scale[:, None, None, None], shift


def conv_norm(conv, norm, x):
    """norm(conv(x)) for a bias-free conv: one convolution with folded_weight_and_bias where norm's
    statistics are fixed (differentiable in the conv's and norm's parameters alike), else the two
    in turn (BatchNorm2d training)."""
    if not has_fixed_statistics(norm):
        return norm(conv(x))
    weight, bias = folded_weight_and_bias(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def conv_norm_relu(conv, norm, x, residual=None):
    """relu(norm(conv(x)) + residual), the residual optional, as conv_norm computes norm(conv(x)).
    One oneDNN convolution with the add and the ReLU applied to its output where
    fuses_pointwise (onednn_fusion.py) allows; else conv_norm, then the add and the ReLU in place."""
    if has_fixed_statistics(norm) and fuses_pointwise(x, conv.weight, norm.weight, norm.bias):
        dtype = compute_dtype(x)
        weight, bias = (t.to(dtype) for t in folded_weight_and_bias(conv, norm))
        x = x.to(dtype)
        geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual.to(dtype), weight, bias, *geometry, "add",
                                                               1.0, "relu", [], "")
    out = conv_norm(conv, norm, x)
    return (out if residual is None else out.add_(residual)).relu_()


def conv3x3(in_ch, out_ch, stride=1, dilation=1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_ch, out_ch, stride=1):
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class Downsample(nn.Sequential):
    """The shortcut's projection, conv (0) and norm (1): torchvision's keys, conv_norm's arithmetic."""

    def forward(self, x):
        return conv_norm(self[0], self[1], x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch, width, norm_layer, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride, dilation)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, dilation=dilation)
        self.bn2 = norm_layer(width)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_norm_relu(self.conv1, self.bn1, x)
        return conv_norm_relu(self.conv2, self.bn2, out, residual=identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits in the 3x3 conv."""

    expansion = 4

    def __init__(self, in_ch, width, norm_layer, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = norm_layer(width * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_norm_relu(self.conv1, self.bn1, x)
        out = conv_norm_relu(self.conv2, self.bn2, out)
        return conv_norm_relu(self.conv3, self.bn3, out, residual=identity)


ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """conv1/bn1/layer1..layer{last_stage} as in torchvision (no fc); forward returns the outputs
    of the last `outputs` stages (C5 alone by default; C3, C4, C5 for the multi-scale models), and
    num_channels their channel counts. With dilate_c5, layer4 keeps stride 16 and dilates its 3x3
    convs by 2 (its first block's conv keeps dilation 1, as torchvision does)."""

    def __init__(self, name, dilate_c5=False, norm_layer=FrozenBatchNorm2d, last_stage=4, outputs=1):
        super().__init__()
        block, counts = ARCHITECTURES[name]
        self._norm_layer = norm_layer
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._in_ch, self._dilation = 64, 1
        self.last_stage = last_stage
        self.output_stages = range(last_stage - outputs + 1, last_stage + 1)
        self.num_channels = []
        for stage in range(1, last_stage + 1):
            stride = 1 if stage == 1 else 2
            layer = self._make_layer(block, 64 * 2 ** (stage - 1), counts[stage - 1], stride, dilate_c5 and stage == 4)
            setattr(self, f"layer{stage}", layer)
            if stage in self.output_stages:
                self.num_channels.append(self._in_ch)

    def _make_layer(self, block, width, count, stride=1, dilate=False):
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._in_ch != width * block.expansion:
            downsample = Downsample(conv1x1(self._in_ch, width * block.expansion, stride),
                                    self._norm_layer(width * block.expansion))
        layers = [block(self._in_ch, width, self._norm_layer, stride, downsample, previous_dilation)]
        self._in_ch = width * block.expansion
        layers += [block(self._in_ch, width, self._norm_layer, dilation=self._dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x):
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(conv_norm_relu(self.conv1, self.bn1, x))
        features = []
        for stage in range(1, self.last_stage + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.output_stages:
                features.append(x)
        return features


def downsampled_mask(mask, size):
    """mask [B, H, W] (True = padding) at size (h, w), by nearest interpolation."""
    return F.interpolate(mask[None].float(), size=size)[0].to(torch.bool)


class Backbone(nn.Module):
    """images [B, 3, H, W], mask [B, H, W] (True = padding) -> (features, masks): the outputs of
    the last `outputs` stages up to config.backbone_stage ([B, C_i, h_i, w_i], finest first) and the
    mask downsampled to each (downsampled_mask); num_channels lists their channel counts."""

    def __init__(self, config, outputs=1):
        super().__init__()
        norm_layer = FrozenBatchNorm2d if config.backbone_norm == "frozen_bn" else nn.BatchNorm2d
        self.body = ResNet(config.backbone, config.dilation, norm_layer, config.backbone_stage, outputs)
        self.num_channels = self.body.num_channels
        if config.backbone_norm == "batch_norm":
            for module in self.body.modules():  # torchvision's init for training from scratch
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        frozen = ("conv1.", "bn1.", "layer1.")[: 3 * config.backbone_frozen_stages]
        for name, parameter in self.body.named_parameters():
            parameter.requires_grad_(config.train_backbone and not name.startswith(frozen))

    def forward(self, images, mask):
        features = self.body(images)
        return features, [downsampled_mask(mask, f.shape[-2:]) for f in features]
