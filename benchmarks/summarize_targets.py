"""Prints the performance targets of the ops issues against benchmark JSON files.

    python benchmarks/summarize_targets.py [RESULTS_DIR]     (default benchmarks/results)
"""

import glob
import json
import os
import sys

# (device kind, shape): the shapes the issues set targets on.
ATTENTION_TARGET_SHAPE = {"cpu": "cross B2 Nq300 Nk850 pad25%", "cuda": "cross B8 Nq300 Nk850 pad25%"}
ENCODER_TARGET_SHAPE = "self B8 Nq850 Nk850 pad25%"  # CUDA, bf16 (tensor-core issue)


def load(pattern):
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            yield path, json.load(f)


def times(rows, **where):
    return {r["impl"]: r["median_ms"] for r in rows if all(r.get(k) == v for k, v in where.items())}


def check(label, value, goal):
    ok = value is not None and value >= goal
    shown = "n/a" if value is None else f"{value:.2f}"
    print(f"  [{'PASS' if ok else 'MISS'}] {label}: {shown} (target >= {goal})")
    return ok


def ratio(t, num, den):
    return t[num] / t[den] if num in t and den in t else None


def main(results_dir):
    all_ok = True
    for path, data in load(os.path.join(results_dir, "attention_*.json")):
        if "memory" in os.path.basename(path):
            continue
        kind = data["meta"]["device"]["kind"]
        print(f"{os.path.basename(path)} ({data['meta']['device']['name']}, {data['meta']['date']})")
        shape = ATTENTION_TARGET_SHAPE[kind]
        for dtype in sorted({r["dtype"] for r in data["rows"]}):
            fwd = times(data["rows"], shape=shape, dtype=dtype, **{"pass": "fwd"})
            both = times(data["rows"], shape=shape, dtype=dtype, **{"pass": "fwd+bwd"})
            if kind == "cpu":  # on every x86 CPU, AVX2-only ones included
                all_ok &= check(f"{dtype} fwd kernel vs reference", ratio(fwd, "reference", "kernel"), 2.0)
                all_ok &= check(f"{dtype} fwd+bwd kernel vs reference", ratio(both, "reference", "kernel"), 2.0)
                sdpa = [k for k in fwd if k.startswith("sdpa")]
                fastest = min(ratio(fwd, s, "kernel") for s in sdpa) if sdpa else None
                all_ok &= check(f"{dtype} fwd kernel vs fastest SDPA", fastest, 1.2)
                fastest = min(ratio(both, s, "kernel") for s in sdpa if s in both) if sdpa else None
                all_ok &= check(f"{dtype} fwd+bwd kernel vs fastest SDPA", fastest, 1.5)
            elif dtype == "tf32":
                fp32 = times(data["rows"], shape=shape, dtype="float32", **{"pass": "fwd+bwd"})
                tc = "kernel tensor_core" if "kernel tensor_core" in both else "kernel"
                tf32_vs_fp32 = fp32["sdpa efficient"] / both[tc] if "sdpa efficient" in fp32 else None
                all_ok &= check(f"tf32 fwd+bwd {tc} vs SDPA efficient in float32", tf32_vs_fp32, 1.5)
            else:
                all_ok &= check(f"{dtype} fwd+bwd kernel vs reference", ratio(both, "reference", "kernel"), 4.0)
                # The tensor-core issue's targets: its path by name while it is not the default.
                tc = "kernel tensor_core" if "kernel tensor_core" in both else "kernel"
                all_ok &= check(f"{dtype} fwd+bwd {tc} vs SDPA efficient", ratio(both, "sdpa efficient", tc), 1.5)
                all_ok &= check(f"{dtype} fwd {tc} vs SDPA efficient", ratio(fwd, "sdpa efficient", tc), 1.5)
                encoder = times(data["rows"], shape=ENCODER_TARGET_SHAPE, dtype=dtype, **{"pass": "fwd+bwd"})
                sdpa = [encoder[k] for k in encoder if k.startswith("sdpa")]
                if dtype == "bfloat16" and tc in encoder:
                    best = min(sdpa) / encoder[tc] if sdpa else None
                    all_ok &= check(f"bfloat16 encoder self-attention fwd+bwd {tc} vs best SDPA", best, 1.2)
    for path, data in load(os.path.join(results_dir, "sine_embed_*.json")):
        kind = data["meta"]["device"]["kind"]
        print(f"{os.path.basename(path)} ({data['meta']['device']['name']}, {data['meta']['date']})")
        for dtype in sorted({r["dtype"] for r in data["rows"]}):
            both = times(data["rows"], workload="both workloads", dtype=dtype)
            goal = 3.0 if kind == "cpu" else 5.0
            all_ok &= check(f"{dtype} fwd+bwd kernel vs reference (both workloads)",
                            ratio(both, "reference", "kernel"), goal)
            if kind == "cuda":
                big = [r for r in data["rows"] if r["workload"] == "1000000 boxes" and r["impl"] == "kernel"
                       and r["dtype"] == dtype and r["pass"] == "fwd"]
                all_ok &= check(f"{dtype} 1M boxes fwd, fraction of copy bandwidth",
                                big[0]["of_copy_bandwidth"] if big else None, 0.5)
    for path, data in load(os.path.join(results_dir, "deformable_attention_*.json")):
        if "memory" in os.path.basename(path):
            continue
        kind = data["meta"]["device"]["kind"]
        print(f"{os.path.basename(path)} ({data['meta']['device']['name']}, {data['meta']['date']})")
        for shape in sorted({r["shape"] for r in data["rows"]}):
            for dtype in sorted({r["dtype"] for r in data["rows"]}):
                fwd = times(data["rows"], shape=shape, dtype=dtype, **{"pass": "fwd"})
                both = times(data["rows"], shape=shape, dtype=dtype, **{"pass": "fwd+bwd"})
                if kind == "cpu":
                    all_ok &= check(f"{shape} {dtype} fwd kernel vs reference", ratio(fwd, "reference", "kernel"), 3.0)
                all_ok &= check(f"{shape} {dtype} fwd+bwd kernel vs reference", ratio(both, "reference", "kernel"), 5.0)
                if "deformable_detr_extension" in both:
                    all_ok &= check(f"{shape} {dtype} fwd+bwd kernel vs the Deformable DETR extension",
                                    ratio(both, "deformable_detr_extension", "kernel"), 1.0)
    for path, data in load(os.path.join(results_dir, "model_*.json")):
        print(f"{os.path.basename(path)} ({data['meta']['device']['name']}, {data['meta']['date']})")
        for row in data["rows"]:
            if row["impl"] != "kernel":
                continue
            same = times(data["rows"], task=row["task"], batch=row["batch"], precision=row["precision"])
            label = f"{row['precision']} {row['task']} batch {row['batch']}: kernel model vs"
            all_ok &= check(f"{label} reference ops", ratio(same, "reference", "kernel"), 1.0)
            if "huggingface" in same:
                all_ok &= check(f"{label} Hugging Face", ratio(same, "huggingface", "kernel"), 1.0)
    for path, data in load(os.path.join(results_dir, "inference_*.json")):
        print(f"{os.path.basename(path)} ({data['meta']['device']['name']}, {data['meta']['date']})")
        exported = ("aoti", "onnxruntime")
        for batch in sorted({r["batch"] for r in data["rows"]}):
            same = times([dict(r, impl=r["runtime"]) for r in data["rows"]], batch=batch, precision="float32")
            fastest = min((same[k] for k in exported if k in same), default=None)
            for peer in ("eager reference", "huggingface"):
                if batch == 1 and peer in same:
                    all_ok &= check(f"batch 1: fastest exported vs {peer}",
                                    same[peer] / fastest if fastest else None, 1.5)
    return 0 if all_ok else 1


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else default))
