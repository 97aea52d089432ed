"""onednn_fusion.LinearReLU: oneDNN's linear with the ReLU applied to its output in eager CPU
inference, against relu(x W^T + b) written out in float64; the layer and a separate ReLU wherever a
gradient is needed, in float64, or under torch.compile."""

import pytest
import torch
from conftest import OpLog

from dabdetr.models.onednn_fusion import LinearReLU, fuses_pointwise

FUSED_LINEAR = "mkldnn._linear_pointwise"


def _layer_and_input(g, shape=(3, 5, 12), bias=True):
    linear = torch.nn.Linear(shape[-1], 20, bias=bias)
    return linear, torch.randn(*shape, generator=g)


def _written_out(linear, x):
    out = x.double() @ linear.weight.double().T
    return torch.relu(out if linear.bias is None else out + linear.bias.double())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 12), (7, 12)], ids=str)
def test_in_inference_one_fused_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    linear, x = _layer_and_input(g, shape, bias)
    log = OpLog()
    with torch.no_grad(), log:
        got = LinearReLU(linear, x)(x)
    assert FUSED_LINEAR in log.ops and "aten.relu_" not in log.ops and "aten.clamp_min_" not in log.ops
    assert got.shape == (*shape[:-1], 20)
    expected = _written_out(linear, x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (got == 0).any() and (got > 0).any()  # the ReLU had something to do

    # Under bfloat16 autocast: bfloat16 out, within its rounding.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = LinearReLU(linear, x)(x)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), expected, rtol=0.03, atol=0.03 * expected.abs().max().item())


def test_blocks_of_the_input_it_was_built_for():
    """Built for the whole input (its weights cast once), called on blocks of rows, each its rows
    of the result."""
    g = torch.Generator().manual_seed(1)
    linear, x = _layer_and_input(g, (40, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = LinearReLU(linear, x)
        whole = hidden(x)
        blocks = torch.cat([hidden(block) for block in x.split(16)])
    torch.testing.assert_close(blocks, whole, rtol=0, atol=0)


@pytest.mark.parametrize("needs_grad", ["input", "weight"])
def test_with_gradients_the_differentiable_path(needs_grad):
    """Where a gradient flows the fused op (it has no derivative) is not used, and the gradients
    are those of the formula."""
    g = torch.Generator().manual_seed(2)
    linear, x = _layer_and_input(g)
    if needs_grad == "input":
        linear.requires_grad_(False)
        x.requires_grad_()
    log = OpLog()
    with log:
        got = LinearReLU(linear, x)(x)
    assert FUSED_LINEAR not in log.ops
    expected = torch.relu(x @ linear.weight.T + linear.bias)
    torch.testing.assert_close(got, expected)
    leaf = x if needs_grad == "input" else linear.weight
    grad = torch.randn(got.shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, leaf, grad)[0], torch.autograd.grad(expected, leaf, grad)[0])


def test_where_oneDNN_does_not_serve():
    x = torch.zeros(2, 4)
    with torch.no_grad():
        assert fuses_pointwise(x)
        assert not fuses_pointwise(x.double())  # oneDNN's fused ops: float32 and bfloat16 only
        assert not fuses_pointwise(torch.zeros(2, 4, device="meta"))
        torch.backends.mkldnn.enabled = False
        try:
            assert not fuses_pointwise(x)
        finally:
            torch.backends.mkldnn.enabled = True
    assert fuses_pointwise(x, torch.zeros(3))
    assert not fuses_pointwise(x, torch.zeros(3, requires_grad=True))
    g = torch.Generator().manual_seed(3)
    linear, x = _layer_and_input(g, (4, 12))
    with torch.no_grad():  # float64: the layer and the ReLU, exact
        linear64 = linear.double()
        torch.testing.assert_close(LinearReLU(linear64, x.double())(x.double()), _written_out(linear64, x))


def test_under_torch_compile_the_standard_ops():
    """A compiled graph holds the layer and the ReLU (Inductor fuses them itself): one graph, no
    break at the oneDNN checks, equal to eager."""
    g = torch.Generator().manual_seed(4)
    linear, x = _layer_and_input(g)
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    compiled = torch.compile(lambda t: LinearReLU(linear, t)(t), fullgraph=True, backend=capture)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), torch.relu(linear(x)))
    assert len(graphs) == 1 and "linear" in graphs[0] and "relu" in graphs[0] and "mkldnn" not in graphs[0]
