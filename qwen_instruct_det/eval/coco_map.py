"""COCO mAP through pycocotools, on the same detection dicts the metric takes.

``coco_map`` builds COCO-format ground truth and results from the detection dicts, checked the
same way as the metric checks them (labels are strings compared in canonical form; the mapping
to category ids is internal) and runs pycocotools' ``COCOeval`` unchanged, so crowd regions
(``iscrowd``) and areas (``area``, when the references carry it) are treated exactly as
pycocotools treats them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from ..formats import normalize_label
from .detections import Detections, check_detections

COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


def coco_map(predictions: Sequence[Detections], references: Sequence[Detections], categories: Sequence[str] | None = None,
             max_dets: int = 100, backend: str = "auto") -> dict:
    """COCOeval's twelve bbox numbers (AP, AP50, AP75, ...) for detection dicts in pixels.

    Inputs are checked as :func:`~qwen_instruct_det.eval.matching.detection_scores` checks them, and
    labels are compared in the same canonical form (``normalize_label``). ``categories`` fixes
    the label order (the data set's category-id order); COCOeval averages over categories in
    that order, so passing it reproduces pycocotools' numbers on the original file to the last
    digit. Labels outside it are appended in sorted order. With no prediction, or nothing to
    find (no truth, or crowd regions only), every number is 0.0 (COCOeval itself says -1 for the
    latter); a size range with no truth keeps COCOeval's -1.

    ``backend``: ``pycocotools`` (the reference), ``faster_coco_eval`` (the same algorithm in C++, the same twelve numbers:
    ``benchmarks/coco_map_speed.py``; much faster with many classes, e.g. LVIS's 1,203) or ``auto``, the second when it
    is installed (``pip install qwen_instruct_det[fast]``).
    """
    COCO, COCOeval = _backend(backend)
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


def _backend(name: str):
    """The COCO and COCOeval classes of a backend (``auto``: faster-coco-eval when it is installed, else pycocotools)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")
    if name in ("auto", "faster_coco_eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            if name == "faster_coco_eval":
                raise ImportError("backend 'faster_coco_eval' needs faster-coco-eval: pip install faster-coco-eval "
                                  "(or qwen_instruct_det[fast]).") from None
        else:
            return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval
