"""Benchmark of modulated_attention at DAB-DETR shapes: the decoder's cross-attention
([content | positional] queries and keys, "cross") and the plain self-attention of the encoder
and the decoder ("self").

Peers per shape: the PyTorch reference; torch SDPA fed the concatenated [content | pos] inputs
and a mask, under each backend that accepts the shapes (the backend is recorded; "flash, V
padded" zero-pads V to the q/k head dim, a workaround that makes FlashAttention accept it); and
the fused kernel ("kernel": its default path; on CPU also "kernel avx2" on an AVX-512 CPU, or
the levels --cpu-isas names, timed in the same process; with --tensor-cores, on CUDA in 16
bits, also "kernel tensor_core", and with --sweep-splits that path at each forced key-split
count). Forward (no grad) and forward+backward (torch.autograd.grad of all inputs).
dtype "tf32" is float32 with torch.backends.cuda.matmul.allow_tf32 on, for every peer.

    python benchmarks/bench_attention.py                 # CPU grid, float32
    python benchmarks/bench_attention.py --device cuda   # CUDA grid, float32, tf32 and bfloat16
    python benchmarks/bench_attention.py --cpu-isas generic,avx2   # those levels beside the best
"""

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.ops import modulated_attention

HEADS, HEAD_DIM = 8, 32  # Dc = Dp = Dv = 32


@dataclass(frozen=True)
class Shape:
    batch: int
    num_queries: int
    num_keys: int
    padded: float  # fraction of keys padded
    kind: str = "cross"  # "cross": q/k of [content | positional] halves; "self": content only

    def __str__(self):
        return f"{self.kind} B{self.batch} Nq{self.num_queries} Nk{self.num_keys} pad{round(self.padded * 100)}%"

    @property
    def qk_dim(self):
        return 2 * HEAD_DIM if self.kind == "cross" else HEAD_DIM


TARGET = Shape(2, 300, 850, 0.25)  # R50 decoder cross-attention, 800x1066 image
# Self-attention: the encoder's over the feature map (850 tokens at 800x1066, 3400 for DC5),
# padded; the decoder's over the queries (300, or 900 with 3 patterns), unpadded.
SELF_SHAPES = [Shape(b, n, n, p, "self") for b in (2, 8) for n, p in ((850, 0.25), (3400, 0.25), (300, 0.0),
                                                                       (900, 0.0))]
CPU_SHAPES = [TARGET, Shape(2, 300, 850, 0.0), Shape(8, 300, 850, 0.25), Shape(2, 900, 850, 0.25),
              Shape(2, 300, 3400, 0.25), *[s for s in SELF_SHAPES if s.batch == 2 and s.num_keys <= 850]]
CUDA_SHAPES = [*(Shape(b, q, k, p) for b in (2, 8) for q in (300, 900) for k in (850, 3400) for p in (0.0, 0.25)),
               *SELF_SHAPES]
MEMORY_SHAPES = [Shape(2, 300, 850, 0.25), Shape(2, 300, 8500, 0.25)]


def make_inputs(shape, device, dtype, requires_grad, seed=0):
    g = torch.Generator().manual_seed(seed)

    def operand(n):
        t = torch.randn(shape.batch, HEADS, n, HEAD_DIM, generator=g).to(device, dtype)
        return t.requires_grad_(requires_grad)

    cross = shape.kind == "cross"
    inputs = {
        "q_content": operand(shape.num_queries), "q_pos": operand(shape.num_queries) if cross else None,
        "k_content": operand(shape.num_keys), "k_pos": operand(shape.num_keys) if cross else None,
        "value": operand(shape.num_keys),
    }
    mask = torch.rand(shape.batch, shape.num_keys, generator=g) < shape.padded
    mask[:, 0] = False  # no fully padded row: SDPA would return NaN there
    inputs["key_padding_mask"] = mask.to(device) if shape.padded > 0 else None
    return inputs


def sdpa_call(inputs, backend, pad_value):
    query, key = inputs["q_content"], inputs["k_content"]
    if inputs["q_pos"] is not None:
        query = torch.cat([query, inputs["q_pos"]], dim=-1)
        key = torch.cat([key, inputs["k_pos"]], dim=-1)
    value = inputs["value"]
    if pad_value:
        value = F.pad(value, (0, query.shape[-1] - value.shape[-1]))
    mask = inputs["key_padding_mask"]
    attn_mask = ~mask[:, None, None, :] if mask is not None else None
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    return out[..., : HEAD_DIM] if pad_value else out


SDPA_CANDIDATES = [
    ("sdpa efficient", SDPBackend.EFFICIENT_ATTENTION, False),
    ("sdpa flash", SDPBackend.FLASH_ATTENTION, False),
    ("sdpa flash, V padded", SDPBackend.FLASH_ATTENTION, True),
    ("sdpa math", SDPBackend.MATH, False),
]


def sdpa_peers(inputs):
    """The SDPA backends that accept these inputs (forward and backward), by name."""
    accepted = {}
    for name, backend, pad_value in SDPA_CANDIDATES:
        if name == "sdpa flash, V padded" and "sdpa flash" in accepted:
            continue
        try:
            with warnings_silenced():
                out = sdpa_call(inputs, backend, pad_value)
                if out.requires_grad:
                    out.sum().backward()
        except RuntimeError:
            continue
        accepted[name] = (backend, pad_value)
    return accepted


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def kernel_variants(inputs, tensor_cores=False, sweep_splits=False, cpu_isas=None):
    """{peer name: {environment variable: value}} of the fused kernel: its default path ("kernel");
    on CPU, the lower instruction-set levels of harness.cpu_isa_variants (cpu_isas); and where
    tensor_cores, for the inputs that path serves on an sm_80+ GPU (16-bit, or float32 while TF32
    is allowed), the tensor-core path by name, with each forced key-split count where
    sweep_splits (to tune the split choice of ops_cuda.cpp)."""
    q = inputs["q_content"]
    variants = {"kernel": {}, **harness.cpu_isa_variants(q.device, cpu_isas, q.dtype == torch.bfloat16)}
    served = q.dtype in (torch.float16, torch.bfloat16) or (
        q.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest")
    if tensor_cores and served and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 8:
        variants["kernel tensor_core"] = harness.TENSOR_CORE_PATH
        for splits in (1, 2, 4, 8, 16) if sweep_splits else ():
            variants[f"kernel tensor_core splits={splits}"] = {**harness.TENSOR_CORE_PATH,
                                                               "DABDETR_ATTENTION_SPLITS": str(splits)}
    return variants


def peer_functions(inputs, sdpa, backward, tensor_cores=False, sweep_splits=False, cpu_isas=None):
    fns = {
        "reference": lambda: modulated_attention(**inputs, impl="reference"),
        **{name: (lambda b=b, p=p: sdpa_call(inputs, b, p)) for name, (b, p) in sdpa.items()},
    }
    settings = kernel_variants(inputs, tensor_cores, sweep_splits, cpu_isas)
    fns.update({name: (lambda: modulated_attention(**inputs, impl="kernel")) for name in settings})
    if not backward:
        fns = {name: _no_grad(fn) for name, fn in fns.items()}
    else:
        leaves = [t for t in inputs.values() if t is not None and t.requires_grad]
        fns = {name: (lambda fn=fn: torch.autograd.grad(fn().sum(), leaves)) for name, fn in fns.items()}
    return {name: harness.in_environment(fn, settings.get(name, {})) for name, fn in fns.items()}


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


def flops(shape, backward):
    dqk, dv = shape.qk_dim, HEAD_DIM
    pairs = shape.batch * HEADS * shape.num_queries * shape.num_keys
    forward = 2 * pairs * (dqk + dv)
    # backward: recomputed scores, dV, dP, dQ, dK
    return forward + (2 * pairs * (3 * dqk + 2 * dv) if backward else 0)


def bytes_moved(shape, element_size, backward):
    # q (Dqk), k (Dqk), v (Dv) read, out (Dv) written
    per_head = (shape.num_queries + shape.num_keys) * shape.qk_dim + (shape.num_keys + shape.num_queries) * HEAD_DIM
    once = shape.batch * HEADS * per_head * element_size
    return once * (3 if backward else 1)  # backward reads inputs, out, grad_out and writes grads


def build_forward(impl, shape, dtype_name, device_name):
    """Module-level (picklable) builder for the memory probe: inputs and a one-call closure."""
    device = torch.device(device_name)
    inputs = make_inputs(shape, device, getattr(torch, dtype_name), requires_grad=False)
    # No trial call here (as sdpa_peers makes): it would set the peak before it is measured.
    sdpa = {name: (backend, pad) for name, backend, pad in SDPA_CANDIDATES if name == impl}
    return peer_functions(inputs, sdpa, backward=False)[impl]


@contextlib.contextmanager
def tf32_allowed():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def dtype_setting(name):
    """(torch dtype, context it runs in) of a --dtypes entry: "tf32" is float32 under tf32_allowed."""
    if name == "tf32":
        return torch.float32, tf32_allowed
    return getattr(torch, name), contextlib.nullcontext


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_op_arguments(parser, None, "comma-separated torch dtypes or tf32; default float32 (CPU), "
                                           "float32,tf32,bfloat16 (CUDA)")
    parser.add_argument("--quick", action="store_true", help="only the target shape, no memory probe")
    parser.add_argument("--tensor-cores", action="store_true",
                        help="also time the tensor-core kernel path by name (CUDA, 16-bit, sm_80+)")
    parser.add_argument("--sweep-splits", action="store_true",
                        help="with --tensor-cores: also at each forced key-split count")
    args = parser.parse_args()
    result_suffix, allocator = harness.apply_memory_argument(args)
    device = torch.device(args.device)
    dtypes = (args.dtypes or ("float32,tf32,bfloat16" if device.type == "cuda" else "float32")).split(",")
    repeats = args.repeats or (50 if device.type == "cuda" else 15)
    shapes = [TARGET] if args.quick else (CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES)

    rows = []
    for dtype_name in dtypes:
        dtype, setting = dtype_setting(dtype_name)
        with setting():
            roofline = harness.measure_roofline(device, dtype)
        print(f"{dtype_name}: measured peak {roofline[0] / 1e12:.2f} TFLOP/s, "
              f"copy bandwidth {roofline[1] / 1e9:.1f} GB/s")
        for shape in shapes:
            for backward in (False, True):
                inputs = make_inputs(shape, device, dtype, requires_grad=backward)
                with setting(), warnings_silenced():
                    sdpa = sdpa_peers(inputs)
                    peers = peer_functions(inputs, sdpa, backward, args.tensor_cores, args.sweep_splits,
                                           args.cpu_isas)
                    times = harness.time_peers(peers, device, repeats)
                fl, nbytes = flops(shape, backward), bytes_moved(shape, dtype.itemsize, backward)
                for impl, ms in times.items():
                    rows.append({
                        "shape": str(shape), "dtype": dtype_name, "pass": "fwd+bwd" if backward else "fwd",
                        "impl": impl, "median_ms": ms, "speedup_vs_reference": times["reference"] / ms,
                        "tflops": fl / (ms * 1e-3) / 1e12, "floor_ms": harness.floor_ms(fl, nbytes, roofline),
                    })
                print(f"  {shape} {rows[-1]['pass']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in times.items()))
    memory_rows = []
    if not args.quick and not args.keep_memory:  # the probe's fresh processes keep the default allocator
        for shape in MEMORY_SHAPES:
            inputs = make_inputs(shape, device, torch.float32, requires_grad=False)
            impls = ["reference", *sdpa_peers(inputs), "kernel"]
            del inputs
            for impl in impls:
                extra = harness.peak_memory_bytes(build_forward, (impl, shape, "float32", device.type), device)
                out_bytes = shape.batch * HEADS * shape.num_queries * (HEAD_DIM + 1) * 4
                memory_rows.append({"shape": str(shape), "impl": impl, "fwd_peak_extra_mb": extra / 2**20,
                                    "output_mb": out_bytes / 2**20})
        print()
        harness.write_results("attention_memory", device, memory_rows,
                              ["shape", "impl", "fwd_peak_extra_mb", "output_mb"], out_dir=args.out_dir)
        print()
    harness.write_results(
        "attention" + result_suffix, device, rows,
        ["shape", "dtype", "pass", "impl", "median_ms", "speedup_vs_reference", "tflops", "floor_ms"],
        extra_meta={"heads": HEADS, "head_dim": HEAD_DIM, "repeats": repeats, "allocator": allocator},
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
