"""What the benchmarks share: timing, peak memory, the device's measured roofline, and output.

Timing: every peer of a shape is run in turn within each repetition (so drift in machine load
hits all of them alike), in an order shuffled anew for each repetition from a fixed seed, and each
timed call comes right after an untimed call of the same peer: a CPU peer that runs just after
another finds the caches full of that one's data and its own inputs evicted (1 ms more for the
deformable attention's decoder shape after the reference, a bimodal spread whose median fell on
whichever peer happened to follow the reference in most repetitions; until 2026-12-05 peers ran
in rotation without the untimed call). The median is reported; on CUDA with events.
Memory on CPU: glibc returns each freed block of a few MiB or more to the OS, and the next
allocation faults fresh zeroed pages in, a few milliseconds that land on whichever peer
allocates next; --keep-memory (dabdetr.host_memory) keeps freed memory mapped instead, as a
caching allocator would, and the timings become steady.
Peak memory: on CUDA, torch.cuda.max_memory_allocated above the inputs; on CPU (Linux), the
growth of the peak resident set (VmHWM) of a fresh process that holds only the inputs (the CPU
allocator keeps no statistics).
"""

import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import random
import re
import statistics
import time

import torch

import dabdetr
import dabdetr.host_memory


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The environment that puts the CUDA attention on its tensor-core kernels (not yet the default).
TENSOR_CORE_PATH = {"DABDETR_ATTENTION_PATH": "tensor_core"}


def bf16_attention_levels_below(best):
    """The levels from avx512 up below `best`: those whose bfloat16 attention differs from best's."""
    levels = dabdetr.ops.CPU_ISA_LEVELS
    return list(levels[levels.index("avx512"): levels.index(best)])


def cpu_isa_variants(device, requested=None, bf16_attention=False):
    """{peer name: environment} of the CPU kernels at levels below the best this CPU runs (which
    is the plain "kernel" peer), timed side by side with it: `requested` (a list of levels), or
    by default those from AVX2 up, avx512 and avx512_bf16 only where they differ from the best
    (bf16_attention: the attention of bfloat16 inputs). Empty on CUDA."""
    if device.type != "cpu":
        return {}
    best = dabdetr.ops.kernel_info()["cpu_isa"]
    levels = dabdetr.ops.CPU_ISA_LEVELS
    below = levels[: levels.index(best)]
    same_as_best = () if bf16_attention else bf16_attention_levels_below(best)
    default = [level for level in below[1:] if level not in same_as_best]
    wanted = default if requested is None else requested
    unknown = [level for level in wanted if level not in levels]
    if unknown:
        raise ValueError(f"unknown CPU instruction-set level(s) {unknown}; choose from {levels}")
    return {f"kernel {level}": {"DABDETR_CPU_ISA": level} for level in wanted if level in below}


@contextlib.contextmanager
def environment(values):
    """os.environ with `values` set (the CUDA kernels read their path settings on every call)."""
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def in_environment(fn, values):
    """fn, run with os.environ holding `values` (fn itself where there are none)."""
    if not values:
        return fn

    def run():
        with environment(values):
            return fn()

    return run


def time_peers(peers, device, repeats, warmup=3):
    """peers: {name: zero-arg callable}. Returns {name: median milliseconds}."""
    for fn in peers.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples = {name: [] for name in peers}
    order = random.Random(0)
    for _ in range(repeats):
        names = list(peers)
        order.shuffle(names)
        for name in names:
            fn = peers[name]
            fn()  # its own data into the caches, whatever ran before
            synchronize(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _peak_rss_bytes():
    # VmHWM belongs to this process's address space; ru_maxrss would also carry the peak of the
    # parent, which Linux keeps across the exec that starts a spawned process.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_probe(build, args):
    """In a fresh process: build (inputs, fn), run fn once, return the peak-RSS growth in bytes."""
    fn = build(*args)
    before = _peak_rss_bytes()
    fn()
    return _peak_rss_bytes() - before


def peak_memory_bytes(build, args, device):
    """Extra peak memory of running build(*args)() once, beyond its inputs.

    `build` must be a module-level function returning a zero-arg callable (it is pickled by
    reference into a fresh process on CPU).
    """
    if device.type == "cuda":
        fn = build(*args)
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_rss_probe, (build, args))


# The CPU features our timings depend on: vector width, and 16-bit matrix arithmetic (AVX-512 BF16, AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def describe_device(device):
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"name": props.name, "kind": "cuda", "memory_gib": round(props.total_memory / 2**30, 1),
                "cuda_version": torch.version.cuda, "capability": f"{props.major}.{props.minor}"}
    name, numbers, flags = platform.processor() or "cpu", "", []
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
        name = re.search(r"model name\s*:\s*(.*)", cpuinfo).group(1)
        present = set(re.search(r"flags\s*:\s*(.*)", cpuinfo).group(1).split())
        flags = [flag for flag in CPU_FLAGS if flag in present]
        family, model = (re.search(rf"{key}\s*:\s*(\d+)", cpuinfo).group(1) for key in ("cpu family", "model"))
        numbers = f"family {family} model {model}"
    except (OSError, AttributeError):
        pass
    return {"name": name, "kind": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "model_numbers": numbers, "flags": flags}


def measure_roofline(device, dtype):
    """(peak FLOP/s of a large matmul, copy bandwidth in bytes/s), measured here and now."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_peers({"mm": lambda: a @ b}, device, repeats=10)["mm"]
    flops = 2 * n**3 / (ms * 1e-3)
    numel = (256 if device.type == "cuda" else 32) * 2**20
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = time_peers({"copy": lambda: dst.copy_(src)}, device, repeats=10)["copy"]
    bandwidth = 2 * src.numel() * src.element_size() / (ms * 1e-3)
    return flops, bandwidth


def floor_ms(flops, bytes_moved, roofline):
    peak_flops, bandwidth = roofline
    return max(flops / peak_flops, bytes_moved / bandwidth) * 1e3


def add_op_arguments(parser, dtypes, dtypes_help=None):
    """The arguments of the op benchmarks: --device, --dtypes (default `dtypes`), --repeats,
    --cpu-isas (cpu_isa_variants), --keep-memory (apply_memory_argument), --out-dir."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default=dtypes, help=dtypes_help or "comma-separated torch dtypes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cpu-isas", default=None, type=lambda text: [t for t in text.split(",") if t],
                        help="comma-separated levels (generic, avx2, avx512) whose CPU kernels are timed beside "
                             "the best one, in the same process (default: those from avx2 up)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="keep freed memory mapped for reuse (glibc mallopt), so no peer pays for page "
                             "faults on memory another just gave back; results named *_kept-memory")
    parser.add_argument("--out-dir", default=None)


def apply_memory_argument(args):
    """(suffix of the result names, the allocator's description) for --keep-memory, applied when given."""
    if not args.keep_memory:
        return "", "default"
    setting = dabdetr.host_memory.keep_freed_memory()
    if setting is None:
        raise SystemExit("--keep-memory needs glibc (Linux)")
    return "_kept-memory", setting


def add_model_arguments(parser):
    """The arguments of the whole-model benchmarks: --device, --preset, --size, --repeats,
    --keep-memory (apply_memory_argument), --out-dir."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="dab_detr_r50")
    parser.add_argument("--size", default="800x1066", help="image HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 10 on CUDA, 3 on CPU)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="keep freed memory for reuse (glibc mallopt), as dabdetr train, eval and predict do "
                             "on the CPU; results named *_kept-memory")
    parser.add_argument("--out-dir", default=None)


def image_batch(batch, height, width, device):
    """(images [batch, 3, H, W], mask [batch, H, W]): random pixels; every image after the first
    padded on its right quarter, as in a real batch."""
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch)).to(device)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    mask[1:, :, width * 3 // 4:] = True
    return images, mask


# Profiler op names (forward and backward) by the part of the model they belong to, first match wins.
OP_CATEGORIES = [
    ("fused ops (attention, sine embedding)", ("dabdetr",)),
    ("data loader (in the profiled step)", ("dataloader",)),
    ("convolutions (backbone)", ("convolution", "conv2d", "mkldnn_conv")),
    ("max pooling (backbone stem)", ("max_pool",)),
    ("batch norm (backbone)", ("batch_norm",)),
    ("matrix products (transformer, heads)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear")),
    ("optimizer", ("adamw", "foreach", "clip_grad", "aten::norm", "linalg_vector_norm")),
    # dtype conversions (autocast's casts) and layout changes (oneDNN reorders, contiguous copies)
    ("dtype conversions and layout copies", ("copy", "to_dense", "reorder", "clone", "contiguous")),
]


def op_category(op_name):
    lowered = op_name.lower()
    for name, patterns in OP_CATEGORIES:
        if any(p in lowered for p in patterns):
            return name
    return "other element-wise"


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_results(bench_name, device, rows, columns, extra_meta=None, out_dir=None):
    """Print the table and write it as JSON and markdown under benchmarks/results/."""
    meta = {
        "benchmark": bench_name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": describe_device(device),
        "torch": torch.__version__,
        "dabdetr": dabdetr.__version__,
        "kernel_info": dabdetr.ops.kernel_info(),
        **(extra_meta or {}),
    }
    table = format_table(rows, columns)
    print(table)
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    # A CPU's results name its instruction set too: one machine name covers AVX2-only and AVX-512 CPUs.
    machine = meta["device"]["name"] + (f" {meta['kernel_info']['cpu_isa']}" if device.type == "cpu" else "")
    stem = os.path.join(out_dir, f"{bench_name}_{slug(machine)}_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(f"# {bench_name} on {meta['device']['name']} ({device.type})\n\n")
        f.write(f"{meta['date']}; torch {meta['torch']}; CUDA {torch.version.cuda}; "
                f"CPU kernels: {meta['kernel_info']['cpu_isa']}; threads: {torch.get_num_threads()}"
                + (f"; CPU: {meta['device']['model_numbers']}, {' '.join(meta['device']['flags'])}"
                   if device.type == "cpu" else "")
                + (f"; allocator: {meta['allocator']}" if "allocator" in meta else "") + "\n\n")
        f.write(table + "\n")
    print(f"wrote {stem}.json and .md")


def format_table(rows, columns):
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])
