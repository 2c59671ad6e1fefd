"""Does the whole path learn? The demo's held-out F1@50, wall time, and detection-only vs mixture.

    python benchmarks/demo_learning.py                  # the demo as `qid demo` runs it, --repeats times
    python benchmarks/demo_learning.py --compare-mix    # same step budget: detection only vs detection + count + regions
    python benchmarks/demo_learning.py --family qwen3_vl  # the tiny Qwen3-VL (or qwen2_5_vl) in its own box format

Prints F1@50 (det_iou50), precision, recall, mean IoU, AP50 and seconds per run, and the
median over runs (each run with its own seed). CPU, offline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace

from qwen_instruct_det.demo import DemoArguments, run_demo
from qwen_instruct_det.tiny_model import FAMILIES

MIXTURE = "detection=0.5,count=0.125,full_region=0.125,partial_region=0.125,none_region=0.125"


def one(args: DemoArguments) -> dict:
    report = run_demo(args, progress=lambda *_: None)
    d = report["det_iou50"]
    return {"f1": d["f1"], "precision": d["precision"], "recall": d["recall"], "mean_iou": d["mean_iou"],
            "AP50": report["coco_map"]["AP50"], "seconds": report["demo"]["seconds"]["total"],
            "truncated": report["parsing"]["truncated_answers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per variant, seeds first-seed, first-seed+1, ...")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--compare-mix", action="store_true")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="Tiny model family (each answers in its own box format).")
    parser.add_argument("--train-images", type=int, default=None, help="Synthetic training images (default: the demo's).")
    parser.add_argument("--val-images", type=int, default=None, help="Held-out images (default: the demo's).")
    args = parser.parse_args()
    base = DemoArguments(family=args.family)
    if args.train_images:
        base = replace(base, train_images=args.train_images)
    if args.val_images:
        base = replace(base, val_images=args.val_images)
    if args.max_steps:
        base = replace(base, max_steps=args.max_steps)
    variants = {"demo": base.mix} if not args.compare_mix else {"detection only": "detection=1.0", "detection + count + regions": MIXTURE}
    for name, mix in variants.items():
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.repeats):
            with tempfile.TemporaryDirectory() as out:
                r = one(replace(base, out=out, mix=mix, seed=seed))
            runs.append(r)
            print(f"{args.family} {name} seed {seed}: F1@50 {r['f1']:.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
                  f"mIoU {r['mean_iou']:.3f}  AP50 {r['AP50']:.3f}  {r['seconds']:.0f} s  truncated {r['truncated']}", flush=True)
        print(f"{args.family} {name}: median F1@50 {statistics.median(r['f1'] for r in runs):.3f}, "
              f"median {statistics.median(r['seconds'] for r in runs):.0f} s over {len(runs)} runs ({base.max_steps} steps)\n", flush=True)


if __name__ == "__main__":
    main()
