"""What a GPU profiler would report of the CUDA kernels, counted on the CUDA emulator.

Inside `with emulated_counters() as counters:`, every call of an op with impl="cuda_emulated"
runs on the emulator's counting build (`COUNTERS=1 bash scripts/build_cuda_emulator.sh`), which
counts each kernel launch's global memory requests and 32-byte sectors, shared memory requests and
wavefronts (bank conflicts), atomics, barriers and warp collectives; after the block,
`counters.records` holds one dict per launch made inside it (nothing is counted outside one):

    kernel, grid, block, dynamic_shared_bytes,
    global_load_requests, global_load_sectors, global_load_ideal_sectors (the fewest sectors the
    requests' bytes need: equal when coalesced), global_load_bytes (and global_store_*, and
    global_atomic_* with global_atomic_addresses: distinct addresses summed over requests),
    shared_load_requests, shared_load_wavefronts, shared_load_ideal_wavefronts, shared_load_bytes
    (and shared_store_*, shared_atomic_* with shared_atomic_addresses),
    global_distinct_sectors (every global sector the launch touches: the least DRAM traffic),
    atomic_requests and atomic_addresses (both spaces), barriers, shfl, ldmatrix, mma (warp-level
    instructions),
    sites: the same counts per access site, each with space ("global" or "shared"), access
    ("load", "store" or "atomic"), source ("csrc/cuda/file.cu:line" of the access) and
    inlined_at (the file:line of the kernel code it was inlined into, innermost first).

The counting model and its limits are in docs/results/gpu_model.md (and csrc/cuda_emulator/counters.h).
The counts are deterministic: the same calls give the same records.
"""

import contextlib
import json
import re
import shutil
import subprocess

import torch

from dabdetr.ops import extension


class EmulatedCounters:
    """The records of the launches made inside one emulated_counters() block (filled when it ends)."""

    def __init__(self):
        self.records = []


@contextlib.contextmanager
def emulated_counters():
    """Counts the memory traffic of the emulated CUDA kernels run inside the block (module docstring)."""
    if not extension.COUNTED_EMULATOR:
        raise RuntimeError("emulated_counters: the CUDA emulator's counting build is not built "
                           f"({extension.COUNTED_EMULATOR_LIBRARY}); build it with "
                           "COUNTERS=1 bash scripts/build_cuda_emulator.sh")
    library = torch.ops.dabdetr_emulated_counted
    extension.count_emulated_calls(True)
    counters = EmulatedCounters()
    try:
        library.counters_start()
        yield counters
    finally:
        extension.count_emulated_calls(False)
        counters.records = _with_sources(json.loads(library.counters_take()))


def _with_sources(records):
    """Each record's sites named by source line (addr2line on the counting build's debug info)
    instead of offsets in the library, sites of the same line and access merged (unrolled loops,
    for one, repeat a line's access)."""
    lines = _source_lines(sorted({site["offset"] for r in records for site in r["sites"]}))
    for record in records:
        merged = {}
        for site in record.pop("sites"):
            source, inlined_at = lines.get(site["offset"], (f"offset {site['offset']:#x}", ()))
            key = (source, inlined_at, site["space"], site["access"])
            counts = {k: v for k, v in site.items() if k not in ("offset", "space", "access")}
            if key in merged:
                for k, v in counts.items():
                    merged[key][k] += v
            else:
                merged[key] = {"source": source, "inlined_at": list(inlined_at), "space": site["space"],
                               "access": site["access"], **counts}
        record["sites"] = sorted(merged.values(), key=lambda s: (s["source"], s["inlined_at"], s["access"]))
    return records


def _kernel_source(location):
    """'csrc/cuda/x.cu:12' from addr2line's 'path:line (discriminator n)', or None for a frame
    that is not the kernels' own source: the emulator's stand-in CUDA headers (atomicAdd) and the
    C++ library and launch code a kernel is inlined into."""
    location = re.sub(r" \(discriminator \d+\)$", "", location.strip())
    index = location.find("csrc/")
    if index < 0 or location.startswith("csrc/cuda_emulator/include/", index):
        return None
    return location[index:]


def _source_lines(offsets):
    """{offset: (source, inlined_at)} for offsets in the counting build, or {} without addr2line."""
    addr2line = shutil.which("addr2line")
    if not offsets or addr2line is None:
        return {}
    output = subprocess.run([addr2line, "-e", extension.COUNTED_EMULATOR_LIBRARY, "-i", "-a"]
                            + [f"{o:#x}" for o in offsets], capture_output=True, text=True, check=True).stdout
    lines, current, frames = {}, None, []
    for line in output.splitlines() + ["0x0"]:
        if line.startswith("0x"):
            if current is not None and frames:
                lines[current] = (frames[0], tuple(frames[1:]))
            current, frames = int(line, 16), []
        elif (source := _kernel_source(line)) is not None:
            frames.append(source)
    return lines
