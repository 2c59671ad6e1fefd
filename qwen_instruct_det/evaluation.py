"""Scoring detections: COCO mAP through pycocotools, det_iou50, and the report of a predictions file.

``coco_map`` builds COCO-format ground truth and results from the same detection dicts
the metric takes, checked the same way (labels are strings compared in canonical form; the
mapping to category ids is internal) and runs
pycocotools' ``COCOeval`` unchanged, so crowd regions (``iscrowd``) and areas (``area``,
when the references carry it) are treated exactly as pycocotools treats them.
``evaluate_file`` reads the JSONL that ``qid predict`` writes and returns the full report;
``markdown_table`` renders its per-class table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .formats import normalize_label
from .matching import Detections, check_detections, detection_scores

if TYPE_CHECKING:
    from .inference import PredictionRecord

COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def coco_map(predictions: Sequence[Detections], references: Sequence[Detections], categories: Sequence[str] | None = None,
             max_dets: int = 100) -> dict:
    """COCOeval's twelve bbox numbers (AP, AP50, AP75, ...) for detection dicts in pixels.

    Inputs are checked as :func:`~qwen_instruct_det.matching.detection_scores` checks them, and
    labels are compared in the same canonical form (``normalize_label``). ``categories`` fixes
    the label order (the data set's category-id order); COCOeval averages over categories in
    that order, so passing it reproduces pycocotools' numbers on the original file to the last
    digit. Labels outside it are appended in sorted order. With no prediction, or nothing to
    find (no truth, or crowd regions only), every number is 0.0 (COCOeval itself says -1 for the
    latter); a size range with no truth keeps COCOeval's -1.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    check_detections(predictions, "predictions")
    check_detections(references, "references")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references; give one of each per image.")
    cat_id, names = _category_ids(categories or [], [lab for d in (*references, *predictions) for lab in d["labels"]])
    images, gt, dt = [], [], []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        image_id = int(ref["image_id"]) if ref.get("image_id") is not None else i + 1
        images.append({"id": image_id})
        boxes = np.asarray(ref["boxes"], dtype=np.float64).reshape(-1, 4)
        crowd = ref.get("iscrowd")
        crowd = np.zeros(len(boxes), dtype=bool) if crowd is None else np.asarray(crowd, dtype=bool)
        areas = ref.get("area")
        for k, (box, label) in enumerate(zip(boxes.tolist(), ref["labels"])):
            w, h = box[2] - box[0], box[3] - box[1]
            gt.append({"id": len(gt) + 1, "image_id": image_id, "category_id": cat_id[label],
                       "bbox": [box[0], box[1], w, h], "area": float(areas[k]) if areas is not None else w * h,
                       "iscrowd": int(crowd[k])})
        p_boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = pred.get("scores")
        scores = [1.0] * len(p_boxes) if scores is None else scores
        for box, label, score in zip(p_boxes.tolist(), pred["labels"], scores):
            dt.append({"image_id": image_id, "category_id": cat_id[label],
                       "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
    if len({im["id"] for im in images}) != len(images):
        raise ValueError("references carry repeated image_id values; give each image its own id (or none).")
    if not dt or all(g["iscrowd"] for g in gt):  # nothing predicted, or nothing to find (crowd regions are no targets)
        return dict.fromkeys(COCO_STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {"images": images, "annotations": gt, "categories": [{"id": k, "name": n} for k, n in enumerate(names, 1)]}
        ground.createIndex()
        results = ground.loadRes(dt)
        ev = COCOeval(ground, results, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(COCO_STATS, ev.stats)}


def _category_ids(categories: Sequence[str], labels: list[str]) -> tuple[dict[str, int], list[str]]:
    """Label (any spelling) -> COCO category id, ``categories`` first in their order, then other labels sorted; and the names by id."""
    ids: dict[str, int] = {}
    names: list[str] = []
    for name in categories:
        key = normalize_label(name)
        if key in ids:
            raise ValueError(f"categories name {key!r} twice ({name!r} is another spelling); give each category once.")
        ids[key] = len(names) + 1
        names.append(str(name))
    spellings = {label: normalize_label(label) for label in dict.fromkeys(labels)}
    first = {key: label for label, key in reversed(spellings.items())}
    for key in sorted(set(spellings.values()) - ids.keys()):
        ids[key] = len(names) + 1
        names.append(first[key])
    return {label: ids[key] for label, key in spellings.items()}, names


def read_predictions(path: str | os.PathLike) -> list[PredictionRecord]:
    """Records of a predictions JSONL file, checked for the keys the report needs."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not JSON ({e.msg}); the file may be cut off: delete the line and re-run qid predict to resume.") from None
            for key in ("detections", "truth"):
                if key not in record:
                    raise ValueError(f"{path}: line {n} has no {key!r}; evaluation needs predictions with truth (qid predict on a split with labels).")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no predictions in the file.")
    return records


def evaluate_records(records: list[PredictionRecord], iou_threshold: float = 0.5, matching: str = "greedy") -> dict:
    """det_iou50 (overall and per class), COCO mAP, and what the parser could not read."""
    predictions = [r["detections"] for r in records]
    references = [dict(r["truth"], image_id=r.get("image_id", i + 1)) for i, r in enumerate(records)]
    return {
        "images": len(records),
        "det_iou50": detection_scores(predictions, references, iou_threshold, matching),
        "coco_map": coco_map(predictions, references),
        "parsing": {
            "unparsed_fragments": int(sum(r.get("unparsed", 0) for r in records)),
            "dropped_boxes": int(sum(r.get("dropped", 0) for r in records)),
            "truncated_answers": int(sum(bool(r.get("truncated")) for r in records)),
            "unknown_labels": sorted({lab for r in records for lab in r.get("unknown_labels", [])}),
        },
    }


def evaluate_file(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, **kwargs) -> dict:
    """Evaluate a predictions JSONL; with ``out_dir``, write ``report.json`` and ``report.md`` there."""
    report = evaluate_records(read_predictions(path), **kwargs)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(markdown_report(report))
    return report


def predict_and_score(model, processor, rows, path: str | os.PathLike, box_format: str, max_new_tokens: int, categories=None,
                      out_dir: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Predict ``rows`` into a fresh ``path`` (the model in eval mode, its mode restored after) and evaluate it.

    Returns ``evaluate_file``'s report (written to ``out_dir`` when given) and the prediction counts.
    """
    from .inference import predict_to_file

    path = Path(path)
    path.unlink(missing_ok=True)
    was_training = model.training
    model.eval()
    try:
        counts = predict_to_file(model, processor, rows, path, box_format=box_format, batch_size=32, max_new_tokens=max_new_tokens,
                                 categories=categories, progress=False)
    finally:
        model.train(was_training)
    return evaluate_file(path, out_dir), counts


def markdown_table(scores: dict) -> str:
    """Per-class precision, recall, F1, mean IoU and counts (crowd-ignored predictions too), then the overall row."""
    lines = ["| class | precision | recall | F1 | mean IoU | TP | FP | FN | ignored (crowd) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = list(scores["per_class"].items()) + [("**all**", scores)]
    for name, s in rows:
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['mean_iou']:.3f} | {s['tp']} | {s['fp']} | {s['fn']} "
                     f"| {s.get('ignored', 0)} |")  # reports from before the count: 0
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The whole report as Markdown: det_iou50 table, COCO mAP line, parsing counts."""
    m = report["coco_map"]
    p = report["parsing"]
    return "\n".join([
        f"# Detection report ({report['images']} images)",
        "",
        "## det_iou50 (IoU >= 0.5, class must match)",
        "",
        markdown_table(report["det_iou50"]),
        "",
        "## COCO mAP (pycocotools)",
        "",
        f"AP {m['AP']:.3f} | AP50 {m['AP50']:.3f} | AP75 {m['AP75']:.3f} | AR100 {m['AR100']:.3f}",
        "",
        "## Parsing",
        "",
        f"unparsed fragments {p['unparsed_fragments']}, dropped boxes {p['dropped_boxes']}, "
        f"truncated answers {p['truncated_answers']}, unknown labels {p['unknown_labels'] or 'none'}",
        "",
    ])


@dataclass
class EvaluateArguments:
    """``qid evaluate``: the predictions to score and how."""

    predictions: str = field(metadata={"help": "Predictions JSONL written by qid predict.", "positional": True})
    out: str | None = field(default=None, metadata={"help": "Folder for report.json and report.md (default: beside the predictions)."})
    iou_threshold: float = field(default=0.5, metadata={"help": "IoU at or above which a pair matches."})
    matching: str = field(default="greedy", metadata={"help": "'greedy' or 'hungarian'."})


def evaluate(args: EvaluateArguments) -> dict:
    """``qid evaluate``: score a predictions file; write the report beside it (or in ``out``)."""
    out = args.out or str(Path(args.predictions).parent)
    return evaluate_file(args.predictions, out, iou_threshold=args.iou_threshold, matching=args.matching)
