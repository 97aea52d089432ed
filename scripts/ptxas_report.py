"""What a GPU would tell, statically: ptxas's resource usage of every CUDA kernel instantiation
(registers, spills, stack, static shared memory) for sm_80 and sm_90, with the block size and
dynamic shared memory each launch asks for and the resulting theoretical occupancy on an A100 and
an H100/H200. No GPU needed: nvcc compiles csrc/cuda/*.cu with -Xptxas -v.

    python scripts/ptxas_report.py [--out benchmarks/results/ptxas]   # writes ptxas.json and ptxas.md

Block sizes and dynamic shared memory come from the sources (KERNEL_LAUNCHES below, and the
tiles' sizes measured by compiling csrc/cuda/attention_mma.cuh with the host compiler).
"""

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = {"sm_80": {"gpu": "A100", "smem_per_sm": 167936, "max_smem_block": 166912},
         "sm_90": {"gpu": "H100/H200", "smem_per_sm": 233472, "max_smem_block": 232448}}
REGISTERS_PER_SM, MAX_WARPS_PER_SM, MAX_BLOCKS_PER_SM = 65536, 64, 32
NVCC_FLAGS = ["-std=c++17", "-O3", "-Icsrc", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Xptxas", "-v"]
# Threads per block of each kernel (the kRowsPerBlock, kRowsPerBlock * kRowParts, kMmaThreads, kThreads of
# the sources), by source and name: two files may each have a forward_kernel.
DEFORMABLE_KERNELS = ("forward_kernel", "backward_kernel", "entries_kernel", "value_grad_sorted_kernel",
                      "sample_grad_kernel", "round_value_grad_kernel")
KERNEL_THREADS = {
    "attention_forward.cu": {"forward_kernel": 64},
    "attention_backward.cu": {"key_grad_kernel": 128, "query_grad_kernel": 128, "delta_kernel": 128},
    "attention_mma_forward.cu": {"mma_forward_kernel": 128, "combine_kernel": 256},
    "attention_mma_backward.cu": {"mma_key_grad_kernel": 128, "mma_query_grad_kernel": 128, "delta_kernel": 128},
    "sine_embed.cu": {"forward_kernel": 256, "backward_kernel": 256},
    "deformable_attention.cu": dict.fromkeys(DEFORMABLE_KERNELS, 256),
}
# Dynamic shared memory that depends on the call: the deformable backward's shared sums, at most
# kDeformableSharedBytes (csrc/cuda/launch.h); its occupancy is given at that most.
CALL_DYNAMIC_SMEM = {("deformable_attention.cu", "backward_kernel"): 48 * 1024}
# The dynamic shared memory of the tensor-core kernels: sizeof their tiles, per instantiation.
TILES_PROGRAM = r"""
#include <cstdio>
#include "cuda/attention_mma.cuh"
using namespace dabdetr::cuda;
template <typename T> const char* name();
template <> const char* name<float>() { return "float"; }
template <> const char* name<__half>() { return "__half"; }
template <> const char* name<__nv_bfloat16>() { return "__nv_bfloat16"; }
template <typename T, int W, bool P> void print() {
  std::printf("mma_forward_kernel<%s, %d, %s> %zu\n", name<T>(), W, P ? "true" : "false",
              sizeof(MmaQueryTiles<T, W, kMmaBlockRows, P, false>) + sizeof(MmaKeyTiles<T, W, kMmaKeyTile, P>));
  std::printf("mma_key_grad_kernel<%s, %d, %s> %zu\n", name<T>(), W, P ? "true" : "false",
              sizeof(MmaKeyTiles<T, W, kMmaBlockRows, P>) + sizeof(MmaQueryTiles<T, W, mma_tile_rows<W>(), P, true>));
  std::printf("mma_query_grad_kernel<%s, %d, %s> %zu\n", name<T>(), W, P ? "true" : "false",
              sizeof(MmaQueryTiles<T, W, kMmaBlockRows, P, true>) + sizeof(MmaKeyTiles<T, W, mma_tile_rows<W>(), P>));
}
template <typename T> void each_width() {
  print<T, 32, true>(); print<T, 32, false>(); print<T, 64, true>(); print<T, 64, false>();
}
int main() { each_width<float>(); each_width<__half>(); each_width<__nv_bfloat16>(); }
"""


def tile_bytes():
    """{kernel signature: dynamic shared bytes} of the tensor-core kernels (struct sizes as the
    tiles are laid out; the kernels take the struct of both members)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = os.path.join(tmp, "tiles.cpp"), os.path.join(tmp, "tiles")
        with open(source, "w") as f:
            f.write(TILES_PROGRAM)
        subprocess.run(["g++", "-std=c++20", "-DDABDETR_CUDA_EMULATOR", "-Icsrc/cuda_emulator/include", "-Icsrc",
                        "-Wno-unknown-pragmas", source, "-o", binary], cwd=ROOT, check=True)
        out = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def compile_one(source, arch):
    result = subprocess.run(["nvcc", *NVCC_FLAGS, f"-arch={arch}", "-c", source, "-o", os.devnull], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"nvcc failed on {source} for {arch}:\n{result.stderr[-3000:]}")
    return source, arch, result.stderr + result.stdout


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def parse(log):
    """[{mangled, stack, spill_stores, spill_loads, registers, barriers, smem}] of one -Xptxas -v log."""
    kernels, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = {"mangled": m.group(1)}
            kernels.append(current)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            barriers, smem = re.search(r"used (\d+) barriers", line), re.search(r"(\d+) bytes smem", line)
            current.update(registers=int(m.group(1)), barriers=int(barriers.group(1)) if barriers else 0,
                           smem=int(smem.group(1)) if smem else 0)
    return kernels


def occupancy(registers, threads, smem, arch):
    warps = (threads + 31) // 32
    registers_per_warp = (registers * 32 + 255) // 256 * 256
    limits = [MAX_BLOCKS_PER_SM, MAX_WARPS_PER_SM // warps, REGISTERS_PER_SM // (registers_per_warp * warps)]
    if smem:
        limits.append(ARCHS[arch]["smem_per_sm"] // (smem + 1024))  # 1 KiB a block reserved by the system
    blocks = min(limits)
    return blocks, blocks * warps / MAX_WARPS_PER_SM


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "ptxas"))
    args = parser.parse_args()
    sources = sorted(os.path.join("csrc", "cuda", f) for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                     if f.endswith(".cu"))
    dynamic = tile_bytes()
    jobs = [(s, a) for s in sources for a in ARCHS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        logs = list(pool.map(lambda job: compile_one(*job), jobs))
    version = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = []
    for source, arch, log in logs:
        kernels = parse(log)
        for kernel, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
            short = re.sub(r"^void |\(.*$", "", name.replace("dabdetr::cuda::(anonymous namespace)::", ""))
            base, file = short.split("<")[0], os.path.basename(source)
            threads = KERNEL_THREADS.get(file, {}).get(base)
            dyn = dynamic.get(short, CALL_DYNAMIC_SMEM.get((file, base), 0))
            total_smem = kernel.get("smem", 0) + dyn
            blocks, occ = occupancy(kernel["registers"], threads, total_smem, arch) if threads else (None, None)
            rows.append({"source": source, "arch": arch, "kernel": short, "threads": threads,
                         "dynamic_smem": dyn, **{k: v for k, v in kernel.items() if k != "mangled"},
                         "blocks_per_sm": blocks, "occupancy": occ})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ptxas.json"), "w") as f:
        json.dump({"nvcc": version, "flags": NVCC_FLAGS, "kernels": rows}, f, indent=1)
    lines = [f"# ptxas resource usage ({version})", "",
             "Registers, spills and shared memory of every kernel instantiation, and the theoretical occupancy "
             "(resident warps of 64 per SM) of its launch; written by `python scripts/ptxas_report.py`. The "
             "deformable attention's backward_kernel is given with the most shared memory it asks for (48 KiB).",
             "",
             "| arch | kernel | threads | registers | spill st/ld (B) | stack (B) | smem static + dynamic (B) "
             "| blocks/SM | occupancy |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arch"], r["source"], r["kernel"])):
        occ = f"{r['occupancy']:.0%}" if r["occupancy"] is not None else "?"
        lines.append(f"| {r['arch']} | `{r['kernel']}` | {r['threads']} | {r['registers']} | "
                     f"{r.get('spill_stores', 0)}/{r.get('spill_loads', 0)} | {r.get('stack', 0)} | "
                     f"{r.get('smem', 0)} + {r['dynamic_smem']} | {r['blocks_per_sm']} | {occ} |")
    spills = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    lines += ["", f"Instantiations with spills: {len(spills)} of {len(rows)}."]
    lines += [f"- {r['arch']} `{r['kernel']}`: {r['spill_stores']} B stored, {r['spill_loads']} B loaded"
              for r in spills]
    with open(os.path.join(args.out, "ptxas.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
