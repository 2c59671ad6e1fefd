"""COCO mAP at LVIS scale: pycocotools' COCOeval against faster-coco-eval on the same detections.

Synthetic LVIS-like detections: ``--classes`` classes (LVIS has 1,203), ``--images`` images
(5,000) with about 12 truth boxes of a few classes each and about 20 scored predictions (most near
a truth box, some anywhere). Each backend runs in its own process (``qwen_instruct_det.coco_map``
with ``backend=``), ``--repeats`` times; prints the medians of seconds, each process's peak RSS,
and the twelve numbers of both side by side with their largest difference.
Run: python benchmarks/coco_map_speed.py [--classes 1203] [--images 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make(n_images: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = [f"class {i}" for i in range(n_classes)]
    preds, refs = [], []
    for _ in range(n_images):
        n_true = max(1, rng.poisson(12))
        classes = rng.choice(n_classes, size=min(n_classes, 1 + rng.poisson(3)), replace=False)  # an image holds a few classes
        xy = rng.uniform(0, 500, (n_true, 2))
        truth = np.concatenate([xy, xy + rng.uniform(5, 200, (n_true, 2))], axis=1)
        t_lab = rng.choice(classes, n_true)
        keep = rng.random(n_true) < 0.7
        found = truth[keep] + rng.normal(0, 8, (int(keep.sum()), 4))
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        n_extra = max(0, 20 - len(found))
        xy2 = rng.uniform(0, 500, (n_extra, 2))
        boxes = np.concatenate([found, np.concatenate([xy2, xy2 + rng.uniform(5, 200, (n_extra, 2))], axis=1)])
        p_lab = np.concatenate([t_lab[keep], rng.choice(n_classes, n_extra)])
        refs.append({"boxes": truth.tolist(), "labels": [labels[i] for i in t_lab]})
        preds.append({"boxes": boxes.tolist(), "labels": [labels[i] for i in p_lab], "scores": rng.random(len(boxes)).tolist()})
    return preds, refs, labels


CHILD = """
import json, pickle, resource, sys, time
from qwen_instruct_det import coco_map
preds, refs, labels = pickle.load(open(sys.argv[1], "rb"))
t = time.perf_counter()
stats = coco_map(preds, refs, categories=labels, backend=sys.argv[2])
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "stats": stats}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = make(args.images, args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.pkl"
        path.write_bytes(pickle.dumps(data))
        results: dict[str, list[dict]] = {"pycocotools": [], "faster_coco_eval": []}
        for r in range(args.repeats):
            for backend in results:
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), backend], capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
                results[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {r + 1}: " + ", ".join(f"{b} {v[-1]['seconds']:.1f} s" for b, v in results.items()), flush=True)
    n_true = sum(len(r["boxes"]) for r in data[1])
    n_pred = sum(len(p["boxes"]) for p in data[0])
    print(f"\n{args.images} images, {args.classes} classes, {n_true:,} truth and {n_pred:,} predicted boxes; "
          f"medians of {args.repeats}, {os.cpu_count()} cores")
    for backend, runs in results.items():
        print(f"{backend:<18} {statistics.median(r['seconds'] for r in runs):8.2f} s   peak {max(r['peak_gib'] for r in runs):.2f} GiB")
    a, b = results["pycocotools"][0]["stats"], results["faster_coco_eval"][0]["stats"]
    print(f"\n{'number':<10}{'pycocotools':>14}{'faster_coco_eval':>18}")
    for name in a:
        print(f"{name:<10}{a[name]:>14.6f}{b[name]:>18.6f}")
    print(f"largest difference: {max(abs(a[k] - b[k]) for k in a):.2e}")


if __name__ == "__main__":
    main()
