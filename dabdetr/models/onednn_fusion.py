"""oneDNN's fused CPU ops for eager inference: a convolution or linear layer that applies the
pointwise op after it (a ReLU, a residual's add) as it writes its output, instead of a separate
pass over memory. ATen's bfloat16 ReLU is several times slower than its float32 one on the CPU, so
these pay most under bfloat16 autocast. The fused ops have no derivative, and graphs under
torch.compile or export keep standard ops (Inductor fuses them itself): fuses_pointwise says where
they may run.
"""

import torch
import torch.nn.functional as F


def compute_dtype(x):
    """The dtype a convolution or linear layer of x computes in: autocast's where it is on, else x's."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def fuses_pointwise(x, *parameters):
    """Whether x may go through one of oneDNN's fused ops with these parameters: eager CPU code in
    float32 or bfloat16 through which no gradient flows (to x or any parameter given)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available():
        return False
    if not torch.backends.mkldnn.enabled or compute_dtype(x) not in (torch.float32, torch.bfloat16):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *parameters)))


class LinearReLU:
    """x -> relu(linear(x)) for an nn.Linear, built for one input and called on it or on blocks of
    it ([..., in_features] -> [..., out_features]): oneDNN's linear with the ReLU applied to its
    output where fuses_pointwise allows for that input, the weights cast to the compute dtype once
    for all the calls; else the layer, then the ReLU in place (the layer's backward does not read
    its output)."""

    def __init__(self, linear, x):
        self.linear = linear
        self.fused = fuses_pointwise(x, linear.weight, linear.bias)
        if self.fused:
            self.dtype = compute_dtype(x)
            self.weight = linear.weight.to(self.dtype)
            self.bias = None if linear.bias is None else linear.bias.to(self.dtype)

    def __call__(self, x):
        if self.fused:
            return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias, "relu", [], "")
        return F.relu(self.linear(x), inplace=True)
