"""The ResNet backbone's arithmetic: each convolution and its norm folded into one convolution
where the statistics are fixed, against the two written out here; bfloat16 autocast keeping the
activations in 16 bits and channels-last from one convolution to the next."""

import pytest
import torch
import torch.nn.functional as F
from conftest import OpLog
from torch.utils._python_dispatch import TorchDispatchMode

from dabdetr.models import build_model
from dabdetr.models.backbone import FrozenBatchNorm2d, ResNet, conv_norm, conv_norm_relu


def _random_statistics(norm, g):
    """Give a norm statistics and affine parameters far from the identity."""
    with torch.no_grad():
        C = norm.running_mean.numel()
        norm.running_mean.copy_(torch.randn(C, generator=g))
        norm.running_var.copy_(torch.rand(C, generator=g) * 2 + 0.1)
        norm.weight.copy_(torch.randn(C, generator=g))
        norm.bias.copy_(torch.randn(C, generator=g))
    return norm


def _norm_written_out(norm, x):
    """(x - mean) / sqrt(var + eps) * weight + bias with the running statistics."""
    shape = (1, -1, 1, 1)
    mean, var = norm.running_mean.view(shape), norm.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(shape) + norm.bias.view(shape)


@pytest.mark.parametrize("norm_type", [FrozenBatchNorm2d, torch.nn.BatchNorm2d])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_conv_norm_equals_the_convolution_then_the_norm(norm_type, stride, dilation):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 10, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    norm = _random_statistics(norm_type(10), g).eval()
    x = torch.randn(2, 6, 13, 11, generator=g, dtype=torch.float64, requires_grad=True)
    conv, norm = conv.double(), norm.double()

    folded = conv_norm(conv, norm, x)
    expected = _norm_written_out(norm, F.conv2d(x, conv.weight, None, stride, dilation, dilation))
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)

    # The gradients reach the input, the conv's weights and (BatchNorm2d's parameters) the norm's.
    grad = torch.randn(folded.shape, generator=g, dtype=torch.float64)
    leaves = [x, conv.weight] + [p for p in norm.parameters()]
    got = torch.autograd.grad(folded, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_conv_norm_in_training_mode_normalizes_by_the_batch():
    g = torch.Generator().manual_seed(1)
    conv, norm = torch.nn.Conv2d(4, 8, 1, bias=False), _random_statistics(torch.nn.BatchNorm2d(8), g).train()
    x = torch.randn(3, 4, 5, 5, generator=g)
    y = conv(x)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (y - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(conv_norm(conv, norm, x), expected, rtol=1e-5, atol=1e-5)


FUSED_CONVOLUTION = "mkldnn._convolution_pointwise"


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_conv_norm_relu_in_inference_is_one_fused_convolution(residual, stride, dilation):
    """Without gradients on the CPU: oneDNN's convolution with the add and the ReLU applied to its
    output, equal to the convolution, the norm, the add and the ReLU written out in float64."""
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(6, 10, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    norm = _random_statistics(FrozenBatchNorm2d(10), g)
    x = torch.randn(2, 6, 13, 11, generator=g).contiguous(memory_format=torch.channels_last)
    out_size = (13 - 1) // stride + 1, (11 - 1) // stride + 1
    extra = torch.randn(2, 10, *out_size, generator=g) if residual else None
    log = OpLog()
    with torch.no_grad(), log:
        got = conv_norm_relu(conv, norm, x, residual=extra)
    assert FUSED_CONVOLUTION in log.ops and "aten.relu_" not in log.ops and "aten.clamp_min_" not in log.ops

    conv64, norm64 = conv.double(), norm.double()
    expected = _norm_written_out(norm64, F.conv2d(x.double(), conv64.weight, None, stride, dilation, dilation))
    expected = F.relu(expected + extra.double() if residual else expected)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)

    # Under bfloat16 autocast: bfloat16 out, within bf16 rounding of the float64 result.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = conv_norm_relu(conv.float(), norm.float(), x, residual=extra)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), expected, rtol=0.03, atol=0.03 * expected.abs().max().item())


def test_conv_norm_relu_with_gradients_takes_the_differentiable_path():
    """Where anything needs a gradient (the fused op has no derivative) the convolution, add and
    ReLU run as separate ops, and the gradients are those of the formula."""
    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    norm = _random_statistics(FrozenBatchNorm2d(8), g)
    x = torch.randn(2, 4, 9, 7, generator=g, requires_grad=True)
    extra = torch.randn(2, 8, 9, 7, generator=g)
    log = OpLog()
    with log:
        got = conv_norm_relu(conv, norm, x, residual=extra)
    assert FUSED_CONVOLUTION not in log.ops
    expected = F.relu(_norm_written_out(norm, F.conv2d(x, conv.weight, None, 1, 1)) + extra)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(got.shape, generator=g)
    for a, b in zip(torch.autograd.grad(got, [x, conv.weight], grad),
                    torch.autograd.grad(expected, [x, conv.weight], grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_frozen_batch_norm_computes_in_the_activation_dtype():
    norm = _random_statistics(FrozenBatchNorm2d(8), torch.Generator().manual_seed(2))
    x = torch.randn(2, 8, 4, 4)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _norm_written_out(norm, x), rtol=0.02, atol=0.05)


def _resnet_written_out(net, x):
    """torchvision's ResNet forward, each conv then its norm (_norm_written_out) then ReLU."""
    def conv_then_norm(conv, norm, x):
        return _norm_written_out(norm, conv(x))

    x = F.max_pool2d(F.relu(conv_then_norm(net.conv1, net.bn1, x)), 3, 2, 1)
    outputs = []
    for stage in range(1, net.last_stage + 1):
        for block in getattr(net, f"layer{stage}"):
            identity = x if block.downsample is None else conv_then_norm(*block.downsample, x)
            out = F.relu(conv_then_norm(block.conv1, block.bn1, x))
            if hasattr(block, "conv3"):
                out = F.relu(conv_then_norm(block.conv2, block.bn2, out))
                out = conv_then_norm(block.conv3, block.bn3, out)
            else:
                out = conv_then_norm(block.conv2, block.bn2, out)
            x = F.relu(out + identity)
        if stage in net.output_stages:
            outputs.append(x)
    return outputs


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name,dilate", [("resnet18", False), ("resnet50", True)])
def test_resnet_equals_the_layers_written_out(name, dilate, grad):
    """In inference (the fused convolutions) and with gradients (the separate ops) alike."""
    g = torch.Generator().manual_seed(3)
    net = ResNet(name, dilate_c5=dilate, outputs=3).eval()
    for module in net.modules():
        if isinstance(module, FrozenBatchNorm2d):
            _random_statistics(module, g)
            with torch.no_grad():  # keep the activations' scale from growing stage after stage
                module.weight.mul_(0.3)
    x = torch.randn(1, 3, 96, 64, generator=g, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        got, want = net(x), _resnet_written_out(net, x)
    for a, b in zip(got, want):
        assert a.is_contiguous(memory_format=torch.channels_last)  # the CPU layout the model chose
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


class _ActivationLog(TorchDispatchMode):
    """Every 4-D floating-point tensor an op makes: (op name, dtype, channels-last, shape)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point():
                self.made.append((str(func.overloadpacket), t.dtype,
                                  t.is_contiguous(memory_format=torch.channels_last), tuple(t.shape)))
        return out


@pytest.mark.parametrize("preset,train", [("dab_detr_r50", False), ("dab_detr_r50", True), ("demo", True),
                                          ("demo_deformable", False)])
def test_bfloat16_autocast_keeps_the_backbone_in_bfloat16(preset, train):
    """The image is converted once; every activation after it is bfloat16 and channels-last (no
    float32 norm between convolutions, no layout reorders), in inference and training alike."""
    model = build_model(preset, num_queries=20).train(train)
    images = torch.randn(2, 3, 64, 96)
    log = _ActivationLog()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(train), log:
        features, _ = model.backbone(images, torch.zeros(2, 64, 96, dtype=torch.bool))
    # Activations [2, C, h, w] (weights are [C_out, C_in, k, k] with C_out >= 64), after the image.
    activations = [entry for entry in log.made if entry[3][0] == 2 and entry[3][1] > 3]
    assert len(activations) > 20
    assert {(dtype, channels_last) for _, dtype, channels_last, _ in activations} == {(torch.bfloat16, True)}
    conversions = [entry for entry in log.made if entry[0] == "aten._to_copy" and entry[3][0] == 2]
    assert conversions == [("aten._to_copy", torch.bfloat16, True, (2, 3, 64, 96))]  # the image, nothing else
    assert all(f.dtype == torch.bfloat16 for f in features)
