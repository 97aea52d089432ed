"""The bfloat16 goals (docs/results/bf16.md) against benchmark JSON files of one CPU: which goals
that CPU's kind has (AMX, or AVX-512 BF16 without it), the ratio each measured, met or missed.

    python benchmarks/summarize_bf16_goals.py DIR [DIR ...] [--out FILE]

Reads, from the first DIR that holds each, the results of bench_inference.py (the R50 preset,
batch 1), bench_demo_step.py and profile_forward.py (the R50 preset); `benchmarks/run_bf16_goals.sh`
runs the three and then this. Prints the table and writes it to --out (markdown) when given;
exits 1 when a results file it needs is missing.
"""

import argparse
import glob
import json
import os
import sys

# (goal, CPU kinds it applies to, the measure below, at least / at most, bound).
GOALS = [
    ("bf16 eager R50 forward vs float32 eager", ("amx",), "eager", ">=", 3.0),
    ("fastest bf16 R50 forward vs float32 eager", ("amx",), "fastest", ">=", 4.0),
    ("bf16 eager R50 forward vs float32 eager", ("avx512_bf16",), "eager", ">=", 1.8),
    ("bf16 demo training step vs float32", ("amx",), "demo_step", ">=", 2.0),
    ("bf16 demo training step vs float32", ("avx512_bf16",), "demo_step", ">=", 1.5),
    ("copies and reorders, share of the bf16 R50 forward", ("amx", "avx512_bf16"), "copies_share", "<=", 0.10),
]
COPIES = "dtype conversions and layout copies"
KIND_NAMES = {"amx": "an AMX CPU", "avx512_bf16": "AVX-512 BF16 without AMX", None: "no bf16 CPU kind"}


def find(dirs, benchmark):
    """(path, data) of the first results file of `benchmark` (harness.write_results' name) in the
    first of dirs that has one."""
    for directory in dirs:
        for path in sorted(glob.glob(os.path.join(directory, f"{benchmark}_*.json"))):
            with open(path) as f:
                data = json.load(f)
            if data.get("meta", {}).get("benchmark") == benchmark:
                return path, data
    raise FileNotFoundError(f"no {benchmark} results in {', '.join(dirs)}")


def cpu_kind(device):
    """"amx", "avx512_bf16" or None, from a results file's device flags."""
    flags = set(device.get("flags", ()))
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None


def inference_measures(rows):
    """eager: float32 eager kernel / bf16 eager kernel; fastest: float32 eager kernel over the
    fastest bf16 runtime (batch 1)."""
    rows = [r for r in rows if r["batch"] == 1]
    float32 = next(r["median_ms"] for r in rows if r["precision"] == "float32" and r["runtime"] == "eager kernel")
    bf16 = {r["runtime"]: r["median_ms"] for r in rows if r["precision"] != "float32"}
    fastest = min(bf16, key=bf16.get)
    return {"eager": (float32 / bf16["eager kernel"], f"{float32:.0f} / {bf16['eager kernel']:.0f} ms"),
            "fastest": (float32 / bf16[fastest], f"{float32:.0f} / {bf16[fastest]:.0f} ms ({fastest})")}


def demo_step_measure(rows):
    times = {r["amp"]: r["ms_per_step"] for r in rows}
    return (times["off"] / times["bf16"], f"{times['off']:.0f} / {times['bf16']:.0f} ms")


def copies_measure(rows):
    bf16 = {r["part"]: r["ms_per_forward"] for r in rows
            if r["precision"] != "float32" and r["table"] == "by kind of op"}
    return (bf16.get(COPIES, 0.0) / bf16["all ops (self time)"],
            f"{bf16.get(COPIES, 0.0):.0f} of {bf16['all ops (self time)']:.0f} ms")


def summarize(dirs):
    """(markdown table, whether every applicable goal is met)."""
    inference_path, inference = find(dirs, "inference")
    demo_path, demo = find(dirs, "demo_step")
    profile_path, profile = find(dirs, "forward_profile_dab_detr_r50")
    device = inference["meta"]["device"]
    kind = cpu_kind(device)
    measures = {**inference_measures(inference["rows"]), "demo_step": demo_step_measure(demo["rows"]),
                "copies_share": copies_measure(profile["rows"])}
    lines = [f"CPU: {device['name']}, {device.get('model_numbers', '')}, flags {' '.join(device.get('flags', []))}, "
             f"{device.get('threads')} threads; torch {inference['meta']['torch']}; goals of {KIND_NAMES[kind]}",
             f"files: {', '.join(os.path.relpath(p) for p in (inference_path, demo_path, profile_path))}", "",
             "| goal | bound | measured | | times |", "|---|---|---|---|---|"]
    all_met = kind is not None
    for goal, kinds, measure, sense, bound in GOALS:
        if kind not in kinds:
            continue
        value, detail = measures[measure]
        met = value >= bound if sense == ">=" else value <= bound
        all_met &= met
        shown = f"{value:.1%}" if measure == "copies_share" else f"{value:.2f}x"
        limit = f"{sense} {bound:.0%}" if measure == "copies_share" else f"{sense} {bound}x"
        lines.append(f"| {goal} | {limit} | {shown} | {'met' if met else 'MISSED'} | {detail} |")
    if kind is None:
        lines.append("| (none: this CPU has neither amx_bf16 nor avx512_bf16) | | | | |")
    return "\n".join(lines) + "\n", all_met


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="directories of results, searched in order")
    parser.add_argument("--out", help="write the table there too (markdown)")
    args = parser.parse_args()
    try:
        table, all_met = summarize(args.dirs)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write("# bfloat16 goals\n\n" + table)
    print("every goal of this CPU met" if all_met else "not every goal of this CPU met")


if __name__ == "__main__":
    main()
