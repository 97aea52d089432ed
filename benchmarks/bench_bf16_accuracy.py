"""bfloat16 against float32 on trained models: `dabdetr eval` of each checkpoint with --amp off
and --amp bf16 (as a user runs it), the APs side by side, and the detections compared: every
float32 detection scoring at least --min-score is paired with the bfloat16 detection of its image
and category that overlaps it most.

    python benchmarks/bench_bf16_accuracy.py demo=outputs/demo/best.pt tinycoco=outputs/overfit/best.pt

Columns: AP_float32 / AP_bf16 and their difference (AP50 too); detections: the float32 ones
compared; iou_0.9: the share of them whose pair overlaps it by IoU >= 0.9; median_iou; score_diff
(mean and max): |bf16 score - float32 score| of the pairs. Written as bf16_accuracy_<machine>.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.box_ops import box_iou

COLUMNS = ("model", "AP_float32", "AP_bf16", "AP_diff", "AP50_diff", "detections", "iou_0.9", "median_iou",
           "mean_score_diff", "max_score_diff")


def evaluate(checkpoint, amp, scratch, eval_args):
    """(metrics, detections) of `dabdetr eval checkpoint --amp amp`."""
    detections, metrics = os.path.join(scratch, f"{amp}.json"), os.path.join(scratch, f"{amp}_metrics.json")
    subprocess.run([sys.executable, "-m", "dabdetr", "eval", checkpoint, "--amp", amp, "--output", detections,
                    "--metrics", metrics, *eval_args], check=True)
    with open(metrics) as f, open(detections) as g:
        return json.load(f), json.load(g)


def _by_image_and_category(detections):
    grouped = defaultdict(list)
    for d in detections:
        grouped[d["image_id"], d["category_id"]].append(d)
    return grouped


def _xyxy(detections):
    boxes = torch.tensor([d["bbox"] for d in detections], dtype=torch.float64).view(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def pair_detections(reference, other, min_score):
    """[(iou, |score difference|)] for every reference detection scoring >= min_score, paired with
    the detection of `other` on its image and category that overlaps it most (iou 0 if none)."""
    others = _by_image_and_category(other)
    pairs = []
    for key, group in _by_image_and_category(reference).items():
        group = [d for d in group if d["score"] >= min_score]
        if not group:
            continue
        candidates = others.get(key, [])
        if not candidates:
            pairs += [(0.0, d["score"]) for d in group]
            continue
        iou = box_iou(_xyxy(group), _xyxy(candidates))[0]
        best_iou, best = iou.max(dim=1)
        pairs += [(float(i), abs(d["score"] - candidates[j]["score"]))
                  for d, i, j in zip(group, best_iou.tolist(), best.tolist())]
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT (anything `dabdetr eval` reads)")
    parser.add_argument("--eval-args", default="", help="more arguments of `dabdetr eval`, e.g. '--batch-size 4'")
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    rows = []
    for entry in args.checkpoints:
        name, _, checkpoint = entry.partition("=")
        with tempfile.TemporaryDirectory() as scratch:
            (fp32, reference), (bf16, other) = (evaluate(checkpoint, amp, scratch, args.eval_args.split())
                                                for amp in ("off", "bf16"))
        pairs = pair_detections(reference, other, args.min_score)
        ious, score_diffs = [p[0] for p in pairs], [p[1] for p in pairs]
        rows.append({"model": name, "AP_float32": round(fp32["AP"], 4), "AP_bf16": round(bf16["AP"], 4),
                     "AP_diff": round(bf16["AP"] - fp32["AP"], 4), "AP50_diff": round(bf16["AP50"] - fp32["AP50"], 4),
                     "detections": len(pairs), "iou_0.9": round(sum(i >= 0.9 for i in ious) / len(pairs), 4),
                     "median_iou": round(statistics.median(ious), 4),
                     "mean_score_diff": round(statistics.fmean(score_diffs), 4),
                     "max_score_diff": round(max(score_diffs), 4)})
    harness.write_results("bf16_accuracy", torch.device("cpu"), rows, COLUMNS,
                          {"min_score": args.min_score, "eval_args": args.eval_args,
                           "checkpoints": dict(c.partition("=")[::2] for c in args.checkpoints)}, args.out_dir)


if __name__ == "__main__":
    main()
