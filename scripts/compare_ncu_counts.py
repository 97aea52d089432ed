"""Nsight Compute's counts of the CUDA kernels beside the CUDA emulator's (docs/results/gpu_model.md), for
a GPU run: benchmarks/run_gpu_suite.sh (phase counters) profiles the calls of
`scripts/profile_cuda_emulated.py --target cuda` under ncu and the same calls on the emulator, then

    python scripts/compare_ncu_counts.py --ncu NCU.csv --emulated EMULATED.json --markdown OUT.md
    python scripts/compare_ncu_counts.py --metrics      # the ncu metric names, comma-separated

The launches are matched in order (both runs make the same calls through the same host code);
a kernel name that differs marks the row. Requests, sectors, shared wavefronts and bank conflicts
side by side, and ncu's DRAM bytes and time beside the emulator's distinct sectors and the H100
model of profile_cuda_emulated.py.
"""

import argparse
import csv
import functools
import importlib.util
import json
import os
import re

# Emulator key (or derived count) -> ncu metric (Hopper/Ampere names; ncu --query-metrics lists them).
NCU_METRICS = {
    "global_load_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    "global_load_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "global_store_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    "global_store_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
    "shared_load_wavefronts": "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
    "shared_store_wavefronts": "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "shared_load_conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "shared_store_conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "dram_bytes": "dram__bytes.sum",
    "time_ns": "gpu__time_duration.sum",
}


def ncu_launches(path):
    """The dabdetr kernels' rows of `ncu --csv --page raw` output (other lines and kernels skipped),
    in launch order: [{"kernel": base name, metric: float}]."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise SystemExit(f"{path}: no ncu CSV header (\"ID\", ...) found")
    launches = []
    for row in csv.DictReader(lines[start:]):
        if not (row.get("ID") or "").isdigit() or "dabdetr" not in row.get("Kernel Name", ""):
            continue  # the units row, torch's own kernels
        values = {}
        for key, metric in NCU_METRICS.items():
            text = (row.get(metric) or "").replace(",", "")
            values[key] = float(text) if re.fullmatch(r"[0-9.eE+-]+", text) else None
        launches.append({"kernel": profile_script().kernel_base(row["Kernel Name"]), **values})
    return launches


@functools.cache
def profile_script():
    """scripts/profile_cuda_emulated.py as a module (its H100 model and kernel names)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profile_cuda_emulated.py")
    spec = importlib.util.spec_from_file_location("profile_cuda_emulated", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pair(emulated, ncu, scale=1.0, digits=0):
    shown = "n/a" if ncu is None else f"{ncu / scale:.{digits}f}"
    return f"{emulated} / {shown}"


def markdown(emulated, launches):
    lines = ["Each cell: emulator / ncu. Conflicts: the emulator's wavefronts beyond the ideal; ncu's "
             "l1tex bank conflicts.", "",
             "| op | path | dtype | pass | kernel | global ld req | ld sectors | global st req | st sectors | "
             "shared ld wavefronts | ld conflicts | shared st wavefronts | st conflicts | DRAM KB (distinct "
             "sectors / ncu) | µs (H100 model / ncu) |",
             "|" + "---|" * 15]
    for index, record in enumerate(emulated):
        ncu = launches[index] if index < len(launches) else {}
        kernel = profile_script().kernel_base(record["kernel"])
        if ncu.get("kernel") != kernel:
            kernel += f" (ncu: {ncu.get('kernel', 'no launch')})"
        model_us, _ = profile_script().h100_bound(record)
        dram, time_ns = ncu.get("dram_bytes"), ncu.get("time_ns")  # bytes, ns
        distinct_kb = f"{record['global_distinct_sectors'] * 32 / 1024:.1f}"
        conflicts = {access: record[f"shared_{access}_wavefronts"] - record[f"shared_{access}_ideal_wavefronts"]
                     for access in ("load", "store")}
        lines.append(
            f"| {record['op']} | {record['path']} | {record['dtype']} | {record['pass']} | `{kernel}` | "
            f"{pair(record['global_load_requests'], ncu.get('global_load_requests'))} | "
            f"{pair(record['global_load_sectors'], ncu.get('global_load_sectors'))} | "
            f"{pair(record['global_store_requests'], ncu.get('global_store_requests'))} | "
            f"{pair(record['global_store_sectors'], ncu.get('global_store_sectors'))} | "
            f"{pair(record['shared_load_wavefronts'], ncu.get('shared_load_wavefronts'))} | "
            f"{pair(conflicts['load'], ncu.get('shared_load_conflicts'))} | "
            f"{pair(record['shared_store_wavefronts'], ncu.get('shared_store_wavefronts'))} | "
            f"{pair(conflicts['store'], ncu.get('shared_store_conflicts'))} | "
            f"{pair(distinct_kb, dram, 1024, 1)} | "
            f"{pair(f'{model_us:.2f}', time_ns, 1000, 2)} |")
    if len(launches) != len(emulated):
        lines += ["", f"Launches: {len(emulated)} on the emulator, {len(launches)} under ncu."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", action="store_true", help="print the ncu metrics, comma-separated, and exit")
    parser.add_argument("--ncu", help="ncu --csv --page raw output")
    parser.add_argument("--emulated", help="profile_cuda_emulated.py's JSON for the same calls")
    parser.add_argument("--markdown", help="where to write the table")
    args = parser.parse_args()
    if args.metrics:
        print(",".join(NCU_METRICS.values()))
        return
    if not (args.ncu and args.emulated and args.markdown):
        parser.error("--ncu, --emulated and --markdown are needed (or --metrics)")
    with open(args.emulated) as f:
        emulated = json.load(f)["records"]
    table = markdown(emulated, ncu_launches(args.ncu))
    with open(args.markdown, "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
