"""The bfloat16 goals (docs/results/bf16.md) against benchmark JSON files of one CPU: which goals
that CPU's kind has (AMX, or AVX-512 BF16 without it), the ratio each measured, met or missed.

    python benchmarks/summarize_bf16_goals.py DIR [DIR ...] [--out FILE]

Reads, from the first DIR that holds each, the results of bench_inference.py (the R50 preset,
batch 1), bench_demo_step.py, profile_forward.py (the R50 preset) and profile_demo_step.py (float32);
`benchmarks/run_bf16_goals.sh` runs the four and then this. Prints the table and writes it to --out
(markdown) when given; exits 1 when a results file it needs is missing.

The demo step's row also says how fast a bf16 step could be on that CPU at most (Amdahl's law on
the float32 step's profile): its convolutions and matrix products at the CPU kind's bf16 arithmetic
ratio (ARITHMETIC_SPEEDUP), everything else as long as in float32.
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
ARITHMETIC = ("convolutions", "matrix products")  # profile_demo_step.py's kinds of op that bf16 speeds up
# bf16 over float32 multiply-adds per instruction: AVX-512 BF16's dot product does two per 32-bit lane
# where an FMA does one; AMX's tiles leave the arithmetic next to free (the rest of the step alone).
ARITHMETIC_SPEEDUP = {"avx512_bf16": 2.0, "amx": float("inf")}
KIND_NAMES = {"amx": "an AMX CPU", "avx512_bf16": "AVX-512 BF16 without AMX", None: "no bf16 CPU kind"}


def find(dirs, benchmark, **meta):
    """(path, data) of the first results file of `benchmark` (harness.write_results' name) whose
    meta has the given values, in the first of dirs that has one."""
    for directory in dirs:
        for path in sorted(glob.glob(os.path.join(directory, f"{benchmark}_*.json"))):
            with open(path) as f:
                data = json.load(f)
            found = data.get("meta", {})
            if found.get("benchmark") == benchmark and all(found.get(k) == v for k, v in meta.items()):
                return path, data
    wanted = "".join(f", {k} {v}" for k, v in meta.items())
    raise FileNotFoundError(f"no {benchmark} results{wanted} in {', '.join(dirs)}")


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


def demo_step_measure(rows, float32_profile_rows, kind):
    """bf16 over float32 from bench_demo_step.py, with the most a bf16 step could gain on this CPU kind."""
    times = {r["amp"]: r["ms_per_step"] for r in rows}
    ops = {r["part"]: r["ms_per_step"] for r in float32_profile_rows
           if r["table"] == "ops (profiled forward + backward + optimizer)"}
    total = ops.pop("all ops (self time)")
    arithmetic = sum(ms for part, ms in ops.items() if part.startswith(ARITHMETIC))
    speedup = ARITHMETIC_SPEEDUP.get(kind, 1.0)
    reach = total / (total - arithmetic + arithmetic / speedup)
    at = "free" if speedup == float("inf") else f"{speedup:g}x faster"
    return (times["off"] / times["bf16"], f"{times['off']:.0f} / {times['bf16']:.0f} ms; at most {reach:.2f}x here "
            f"(float32 profile: convolutions and matrix products {arithmetic:.0f} of {total:.0f} ms, taken as {at})")


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
    step_profile_path, step_profile = find(dirs, "demo_step_profile", amp="off")
    device = inference["meta"]["device"]
    kind = cpu_kind(device)
    measures = {**inference_measures(inference["rows"]),
                "demo_step": demo_step_measure(demo["rows"], step_profile["rows"], kind),
                "copies_share": copies_measure(profile["rows"])}
    paths = (inference_path, demo_path, profile_path, step_profile_path)
    lines = [f"CPU: {device['name']}, {device.get('model_numbers', '')}, flags {' '.join(device.get('flags', []))}, "
             f"{device.get('threads')} threads; torch {inference['meta']['torch']}; goals of {KIND_NAMES[kind]}",
             f"files: {', '.join(os.path.relpath(p) for p in paths)}", "",
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
