"""det_iou50 speed against pycocotools' COCOeval on COCO-val-sized detections.

5,000 images with about 7 truth and 10 predicted boxes each (80 classes), in one run:
the library's matching alone (greedy, hungarian), the same through
``evaluate.load("./metrics/det_iou50").compute`` and COCOeval's evaluate + accumulate.
Prints medians of --repeats runs. Run: python benchmarks/metric_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np


def make(n_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = [f"class {i}" for i in range(80)]
    preds, refs = [], []
    for _ in range(n_images):
        n_true = rng.poisson(7)
        xy = rng.uniform(0, 500, (n_true, 2))
        wh = rng.uniform(10, 150, (n_true, 2))
        truth = np.concatenate([xy, xy + wh], axis=1)
        t_lab = rng.integers(0, 12, n_true)  # COCO images hold a few classes each
        keep = rng.random(n_true) < 0.75
        found = truth[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)  # jitter never turns a box inside out
        n_extra = max(0, 10 - len(found))
        xy2 = rng.uniform(0, 500, (n_extra, 2))
        extra = np.concatenate([xy2, xy2 + rng.uniform(10, 150, (n_extra, 2))], axis=1)
        boxes = np.concatenate([found, extra])
        p_lab = np.concatenate([t_lab[keep], rng.integers(0, 12, n_extra)])
        refs.append({"boxes": truth.tolist(), "labels": [labels[i] for i in t_lab]})
        preds.append({"boxes": boxes.tolist(), "labels": [labels[i] for i in p_lab], "scores": rng.random(len(boxes)).tolist()})
    return preds, refs


def cocoeval_seconds(preds, refs) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = sorted({lab for r in refs for lab in r["labels"]} | {lab for p in preds for lab in p["labels"]})
    cat = {n: i + 1 for i, n in enumerate(labels)}
    gt, dt = [], []
    for i, (p, r) in enumerate(zip(preds, refs)):
        for b, lab in zip(r["boxes"], r["labels"]):
            gt.append({"id": len(gt) + 1, "image_id": i + 1, "category_id": cat[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                       "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
        for b, lab, s in zip(p["boxes"], p["labels"], p["scores"]):
            dt.append({"image_id": i + 1, "category_id": cat[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i + 1} for i in range(len(refs))], "annotations": gt,
                        "categories": [{"id": v, "name": k} for k, v in cat.items()]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dt), "bbox")
        t = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        return time.perf_counter() - t


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import evaluate

    from qwen_instruct_det.eval.matching import detection_scores

    preds, refs = make(args.images)
    n_true = sum(len(r["boxes"]) for r in refs)
    n_pred = sum(len(p["boxes"]) for p in preds)
    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "det_iou50"))  # from any folder
    runs: dict[str, list[float]] = {k: [] for k in ("lib greedy", "lib hungarian", "evaluate greedy", "evaluate hungarian", "COCOeval")}
    for _ in range(args.repeats):
        runs["lib greedy"].append(timed(lambda: detection_scores(preds, refs)))
        runs["lib hungarian"].append(timed(lambda: detection_scores(preds, refs, matching="hungarian")))
        runs["evaluate greedy"].append(timed(lambda: metric.compute(predictions=preds, references=refs)))
        runs["evaluate hungarian"].append(timed(lambda: metric.compute(predictions=preds, references=refs, matching="hungarian")))
        runs["COCOeval"].append(cocoeval_seconds(preds, refs))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.images} images, {n_true} truth and {n_pred} predicted boxes; medians of {args.repeats} runs, {os.cpu_count()} cores")
    for name, sec in med.items():
        speedup = med["COCOeval"] / sec
        print(f"{name:<20}{sec:8.3f} s   {speedup:6.1f}x faster than COCOeval" if name != "COCOeval" else f"{name:<20}{sec:8.3f} s   (evaluate + accumulate)")


if __name__ == "__main__":
    main()
