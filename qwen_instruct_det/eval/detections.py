"""Detections, the shape shared by predictions, references and the metric, and its strict checks.

Inputs are :class:`Detections` dicts ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}`` in
pixels, one per image, checked strictly: another shape (other keys, ragged or non-numeric boxes,
an inverted box) is an error naming the image, never a silent zero. :func:`read_detections`
checks and flattens many images into columns for the matching in ``matching.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

MATCHINGS = ("greedy", "hungarian")

_REQUIRED = frozenset({"boxes", "labels"})
# keys each side may carry: the shape itself, plus what the library writes (parse_detections' counts; image_id, area)
_KEYS = {
    "predictions": _REQUIRED | {"scores", "unparsed", "dropped", "unknown_labels"},
    "references": _REQUIRED | {"scores", "iscrowd", "image_id", "area"},
}
_SHAPE = ('{"boxes": [[x1, y1, x2, y2], ...], "labels": ["name", ...]} in pixels with optional "scores" '
          '(references: optional "iscrowd")')
_OBJECTS_HINT = (' A data set row\'s `objects` converts as {"boxes": [o["bbox"] for o in objects], '
                 '"labels": [o["category"] for o in objects]}.')


class _DetectionsRequired(TypedDict):
    boxes: Sequence[Sequence[float]]
    labels: Sequence[str]


class Detections(_DetectionsRequired, total=False):
    """One image's detections in pixels: predictions, references and the metric share this shape.

    ``boxes`` are ``[x1, y1, x2, y2]`` with one label each; ``scores`` (optional) rank predictions
    for AP; ``iscrowd`` (optional, references only) marks crowd regions.
    """

    scores: Sequence[float]
    iscrowd: Sequence[bool]


def objects_as_detections(objects: Sequence[Mapping]) -> Detections:
    """A data set row's ``objects`` (``{bbox, category}`` each) as the detections the metric and the rewards score."""
    return {"boxes": [o["bbox"] for o in objects], "labels": [o["category"] for o in objects]}


def check_options(iou_threshold: float, matching: str) -> None:
    """Raise ValueError unless ``iou_threshold`` is in (0, 1] and ``matching`` is a known procedure."""
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}; "
                         "0 would count disjoint boxes as matches (COCO's usual value is 0.5).")
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}.")


@dataclass
class FlatDetections:
    """Boxes of many images as columns, one row per box."""

    image: np.ndarray  # image index
    xyxy: np.ndarray
    labels: list  # as given
    crowd: np.ndarray  # bool; always False for predictions


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shape_error(item, role: str, i: int) -> ValueError:
    if isinstance(item, Mapping):
        keys = set(item)
        parts = [f"no {sorted(_REQUIRED - keys)}"] if _REQUIRED - keys else []
        parts += [f"unknown keys {sorted(keys - _KEYS[role])}"] if keys - _KEYS[role] else []
        got = "has " + " and ".join(parts)
        objects = bool(keys & {"bbox", "category", "objects"})
    else:
        got = f"is a {type(item).__name__} ({_short(item)})"
        objects = isinstance(item, list)
    return ValueError(f"{role}[{i}] {got}; each image's detections are {_SHAPE}. "
                      f"Accepted keys: {sorted(_KEYS[role])}.{_OBJECTS_HINT if objects else ''}")


def _numbers(values: list, width: int = 0) -> np.ndarray | None:
    """``values`` as a finite float array of shape (n,) or (n, width); None if they are not that."""
    shape = (len(values), width) if width else (len(values),)
    if not values:
        return np.zeros(shape)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # ragged rows
        return None
    if arr.shape != shape or arr.dtype.kind not in "iuf":
        return None
    arr = arr.astype(np.float64, copy=False)
    return arr if np.isfinite(arr).all() else None


def _check_image(item: Mapping, role: str, i: int) -> None:
    """One image's detections, checked field by field: raises a ValueError that names the image and the fix."""
    boxes, labels = item["boxes"], item["labels"]
    if boxes is None:
        raise ValueError(f"{role}[{i}] has boxes None; give a list of [x1, y1, x2, y2] in pixels (an empty list for none).")
    try:
        arr = np.asarray(boxes) if isinstance(boxes, (list, tuple, np.ndarray)) else None
    except (ValueError, TypeError):  # ragged rows
        arr = None
    if arr is not None and arr.size == 0:
        arr = np.zeros((0, 4))
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype.kind not in "iuf":
        raise ValueError(f"{role}[{i}] has boxes {_short(boxes)}; each box is [x1, y1, x2, y2], four numbers in pixels.")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise ValueError(f"{role}[{i}] has a box that is not finite, {arr[~finite][0].tolist()}; boxes are pixel coordinates.")
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inverted.any():  # COCO's [x, y, width, height] passed as corners is the usual cause: scored, it is a zero, not an error
        raise ValueError(f"{role}[{i}] has a box with x2 < x1 or y2 < y1, {arr[inverted][0].astype(np.float64).tolist()}; boxes are "
                         "[x1, y1, x2, y2] in pixels (COCO's [x, y, width, height] is [x, y, x + width, y + height]).")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise ValueError(f"{role}[{i}] has labels {_short(labels)}; give a list with one name per box.")
    if len(labels) != len(arr):
        raise ValueError(f"{role}[{i}] has {len(arr)} boxes and {len(labels)} labels; each box needs [x1, y1, x2, y2] and one label.")
    for label in labels:
        if not isinstance(label, str):
            raise ValueError(f"{role}[{i}] has label {_short(label)}; labels are category names (strings).")
    for name in ("scores", "area", "iscrowd"):
        values = item.get(name)
        if values is None:
            continue
        flat = list(values) if isinstance(values, (list, tuple, np.ndarray)) else None
        ok = flat is not None and len(flat) == len(arr)
        if name == "iscrowd":
            ok = ok and all(isinstance(v, (bool, np.bool_, numbers.Integral)) and v in (0, 1) for v in flat)
            what = "one flag per box (True/False or 1/0)"
        else:
            ok = ok and _numbers(flat) is not None
            what = "one finite number per box"
        if not ok:
            raise ValueError(f"{role}[{i}] has {name} {_short(values)} for {len(arr)} boxes; give {what}.")


def read_detections(items: Sequence[Detections], role: str, start: int = 0) -> FlatDetections:
    """Check every image's detections (naming the first bad one) and flatten them into columns.

    The common case costs a few list operations per image and one numpy conversion per column;
    only when a column does not convert are the images checked one by one to name the culprit.
    """
    if isinstance(items, (Mapping, str)) or not isinstance(items, (Sequence, np.ndarray)):
        raise ValueError(f"{role} must be a list with one detections dict per image, {_SHAPE}; got {type(items).__name__} "
                         f"{_short(items)}. Wrap a single image's dict in a list.")
    allowed = _KEYS[role]
    counts, rows, labels, scores, areas, crowd, crowd_at = [], [], [], [], [], [], []
    for i, item in enumerate(items, start):
        if not isinstance(item, Mapping) or not _REQUIRED <= item.keys() <= allowed:
            raise _shape_error(item, role, i)
        boxes, lab, sc, ar, cr = item["boxes"], item["labels"], item.get("scores"), item.get("area"), item.get("iscrowd")
        n = len(lab) if isinstance(lab, (list, tuple, np.ndarray)) else -1
        if not (isinstance(boxes, (list, tuple, np.ndarray)) and len(boxes) == n and all(
                v is None or (isinstance(v, (list, tuple, np.ndarray)) and len(v) == n) for v in (sc, ar, cr))):
            _check_image(item, role, i)
        rows.extend(boxes)
        labels.extend(lab)
        counts.append(n)
        if sc is not None:
            scores.extend(sc)
        if ar is not None:
            areas.extend(ar)
        if cr is not None:
            crowd_at.extend(range(len(labels) - n, len(labels)))
            crowd.extend(cr)
    xyxy = _numbers(rows, 4)
    flags = np.asarray(crowd)
    try:
        labels_ok = all(isinstance(label, str) for label in dict.fromkeys(labels))
    except TypeError:  # an unhashable label
        labels_ok = False
    if (xyxy is None or _numbers(scores) is None or _numbers(areas) is None or not labels_ok
            or bool(((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])).any())
            or (len(flags) and (flags.dtype.kind not in "biu" or not np.isin(flags, (0, 1)).all()))):
        for i, item in enumerate(items, start):
            _check_image(item, role, i)
        raise ValueError(f"{role} could not be read as detections, {_SHAPE}.")  # not reached: one image fails above
    is_crowd = np.zeros(len(labels), dtype=bool)
    is_crowd[np.asarray(crowd_at, dtype=np.int64)] = flags.astype(bool)
    image = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
    return FlatDetections(image=image, xyxy=xyxy, labels=labels, crowd=is_crowd)


def check_detections(items: Sequence[Detections], role: str = "predictions", start: int = 0) -> None:
    """Raise ValueError naming the image (counted from ``start``) unless ``items`` are detections for ``role``."""
    if role not in _KEYS:
        raise ValueError(f"role must be one of {sorted(_KEYS)}, got {role!r}.")
    read_detections(items, role, start)
