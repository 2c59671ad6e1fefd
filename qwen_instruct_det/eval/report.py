"""The report of a predictions file: det_iou50 overall and per class, COCO mAP, and what the parser could not read.

:class:`PredictionRecord` is one line of the JSONL that ``qid predict`` writes;
``evaluate_file`` reads such a file and returns (and writes) the full report;
``markdown_table`` and ``markdown_report`` render it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict

from .coco_map import coco_map
from .detections import Detections
from .matching import detection_scores

HEADER_KEY = "qid_predictions"  # the first line of a predictions file: {"qid_predictions": {what made it}}


class PredictionRecord(TypedDict, total=False):
    """One line of a predictions file: written by ``qid predict``, read by evaluation, visualize and resume."""

    image_id: int | str
    image: str | None
    width: int
    height: int
    text: str
    detections: Detections
    unparsed: int
    dropped: int
    unknown_labels: list[str]
    truncated: bool
    truth: Detections


def read_predictions(path: str | os.PathLike, need_truth: bool = True) -> list[PredictionRecord]:
    """Records of a predictions JSONL file, checked for the keys the report needs (``truth`` only when ``need_truth``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such predictions file; qid predict writes one (--out).")
    records = []
    seen: dict = {}  # image id -> the line it was first on
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not JSON ({e.msg}); the file may be cut off: delete the line and re-run qid predict to resume.") from None
            if n == 1 and isinstance(record, dict) and HEADER_KEY in record:
                continue  # what made the file, not a prediction
            for key in ("detections", "truth") if need_truth else ("detections",):
                if key not in record:
                    raise ValueError(f"{path}: line {n} has no {key!r}; evaluation needs predictions with truth (qid predict on a split with labels).")
            image_id = record.get("image_id")
            if image_id is not None and seen.setdefault(image_id, n) != n:
                raise ValueError(f"{path}: line {n} repeats image_id {image_id!r} of line {seen[image_id]}; a predictions file holds one "
                                 "record per image: delete one of the two lines (or predict again into a new --out).")
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


def evaluate_file(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, name: str = "report", **kwargs) -> dict:
    """Evaluate a predictions JSONL; with ``out_dir``, write ``NAME.json`` and ``NAME.md`` there.

    The report names the predictions file it scored; a report of another predictions file is not replaced.
    """
    report = {"predictions": os.path.abspath(path), **evaluate_records(read_predictions(path), **kwargs)}
    if out_dir is not None:
        out = Path(out_dir)
        existing = out / f"{name}.json"
        if existing.is_file():
            other = json.loads(existing.read_text()).get("predictions")
            if other and other != report["predictions"]:
                raise ValueError(f"{existing}: is the report of {other}; it is not replaced by the report of {path}. Choose another "
                                 "--out, or delete it.")
        out.mkdir(parents=True, exist_ok=True)
        existing.write_text(json.dumps(report, indent=2))
        (out / f"{name}.md").write_text(markdown_report(report))
    return report


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
