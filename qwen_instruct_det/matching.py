"""Detection matching at an IoU threshold, with class match: the one implementation.

``metrics/det_iou50`` (the ``evaluate`` module) and the library's own evaluation both call
:func:`detection_scores`. Inputs are :class:`Detections` dicts ``{"boxes": [[x1, y1, x2, y2], ...],
"labels": [...]}`` in pixels, one per image, checked strictly: another shape is an error naming
the image, never a silent zero. Labels are compared in one canonical form
(:func:`~qwen_instruct_det.formats.normalize_label`) and reported with the references' spelling.
Matching is per image and per class:

- ``greedy``: each truth box in order takes the best still-unmatched prediction of its
  class; a true positive if their IoU is at least the threshold, otherwise the truth box
  is a false negative and the prediction stays free. Unmatched predictions are false
  positives. (The seed project's published procedure.)
- ``hungarian``: scipy's assignment maximises the number of matches at or above the
  threshold (ties broken by total IoU).

Crowd references (``iscrowd``) are COCOeval's ignore regions: not targets, and a prediction
left unmatched that lies on a crowd region of its class (the intersection covers at least the
threshold of the prediction's own area) is ignored, neither a true nor a false positive.

All (image, class) groups are matched together: groups are bucketed by size, one padded
IoU tensor per bucket, and greedy steps through the truth rank, not through box pairs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from . import boxes as B
from .formats import normalize_label

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
class _Flat:
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


def _read(items: Sequence[Detections], role: str, start: int = 0) -> _Flat:
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
    return _Flat(image=image, xyxy=xyxy, labels=labels, crowd=is_crowd)


def check_detections(items: Sequence[Detections], role: str = "predictions", start: int = 0) -> None:
    """Raise ValueError naming the image (counted from ``start``) unless ``items`` are detections for ``role``."""
    if role not in _KEYS:
        raise ValueError(f"role must be one of {sorted(_KEYS)}, got {role!r}.")
    _read(items, role, start)


def _label_ids(reference_labels: list, prediction_labels: list) -> tuple[dict, list[str]]:
    """Label -> class id by canonical form; each class is named by its first spelling in the references, else in the predictions."""
    ids: dict[str, int] = {}
    by_label: dict = {}
    names: list[str] = []
    for label in dict.fromkeys(reference_labels + prediction_labels):
        canonical = normalize_label(label)
        if canonical not in ids:
            ids[canonical] = len(names)
            names.append(str(label))
        by_label[label] = ids[canonical]
    return by_label, names


@dataclass
class MatchResult:
    """Per-box outcome: which predictions and truths matched, and the IoU of each match.

    Truth arrays cover the targets only (crowd references are left out); ``pred_ignored`` marks
    unmatched predictions that lie on a crowd region of their class.
    """

    label_names: list[str]
    pred_label: np.ndarray
    true_label: np.ndarray
    pred_matched: np.ndarray  # bool per prediction
    true_matched: np.ndarray  # bool per truth box
    match_iou: np.ndarray  # IoU of every true-positive pair
    match_label: np.ndarray  # label id of every true-positive pair
    pred_ignored: np.ndarray  # bool per prediction: unmatched, on a crowd region of its class


def match(predictions: Sequence[Detections], references: Sequence[Detections], iou_threshold: float = 0.5,
          matching: str = "greedy") -> MatchResult:
    """Match predicted to true boxes per image and class."""
    check_options(iou_threshold, matching)
    pred = _read(predictions, "predictions")
    true = _read(references, "references")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references; give one of each per image.")
    by_label, names = _label_ids(true.labels, pred.labels)
    p_lab = np.fromiter(map(by_label.__getitem__, pred.labels), dtype=np.int64, count=len(pred.labels))
    t_lab = np.fromiter(map(by_label.__getitem__, true.labels), dtype=np.int64, count=len(true.labels))
    n_labels = max(len(names), 1)
    pkey = pred.image * n_labels + p_lab
    target = ~true.crowd
    tkey = (true.image * n_labels + t_lab)[target]
    p_order = np.argsort(pkey, kind="stable")
    t_order = np.argsort(tkey, kind="stable")
    pbox, tbox = pred.xyxy[p_order], true.xyxy[target][t_order]

    p_matched_s = np.zeros(len(pkey), dtype=bool)
    t_matched_s = np.zeros(len(tkey), dtype=bool)
    ious: list[np.ndarray] = []
    pair_labels: list[np.ndarray] = []
    solve = _greedy if matching == "greedy" else _hungarian
    for groups, t_idx, t_ok, p_idx, p_ok in _group_pairs(tkey[t_order], pkey[p_order]):
        iou = B.iou_matrix(tbox[t_idx], pbox[p_idx])  # (G, Q, P)
        iou[~t_ok] = -1.0
        iou[np.broadcast_to(~p_ok[:, None, :], iou.shape)] = -1.0
        (g, q), p = solve(iou, iou_threshold)  # (group, truth rank) -> prediction rank
        t_matched_s[t_idx[g, q]] = True
        p_matched_s[p_idx[g, p]] = True
        ious.append(iou[g, q, p])
        pair_labels.append(groups[g] % n_labels)
    pred_matched = np.zeros(len(pkey), dtype=bool)
    true_matched = np.zeros(len(tkey), dtype=bool)
    pred_matched[p_order] = p_matched_s
    true_matched[t_order] = t_matched_s
    crowd = ~target
    on_crowd = _on_crowd(pkey, pred.xyxy, (true.image * n_labels + t_lab)[crowd], true.xyxy[crowd], iou_threshold)
    return MatchResult(names, p_lab, t_lab[target], pred_matched, true_matched,
                       np.concatenate(ious) if ious else np.zeros(0),
                       np.concatenate(pair_labels) if pair_labels else np.zeros(0, dtype=np.int64),
                       on_crowd & ~pred_matched)


def _on_crowd(pkey: np.ndarray, pbox: np.ndarray, ckey: np.ndarray, cbox: np.ndarray, threshold: float) -> np.ndarray:
    """Per prediction: does a crowd region of its group cover at least ``threshold`` of its own area (COCOeval's rule)."""
    out = np.zeros(len(pkey), dtype=bool)
    if not len(ckey) or not len(pkey):
        return out
    p_order, c_order = np.argsort(pkey, kind="stable"), np.argsort(ckey, kind="stable")
    pbox, cbox = pbox[p_order], cbox[c_order]
    hit_s = np.zeros(len(pkey), dtype=bool)
    for _, c_idx, c_ok, p_idx, p_ok in _group_pairs(ckey[c_order], pkey[p_order]):
        cover = B.visible_fraction(pbox[p_idx], cbox[c_idx])  # (G, P, C): area(pred ∩ crowd) / area(pred)
        cover[np.broadcast_to(~c_ok[:, None, :], cover.shape)] = 0.0
        hit = (cover >= threshold).any(axis=2) & p_ok
        hit_s[p_idx[hit]] = True
    out[p_order] = hit_s
    return out


def _group_pairs(tkey_s: np.ndarray, pkey_s: np.ndarray) -> Iterator[tuple]:
    """For groups on both sides of two sorted key arrays: per bucket, padded (G, width) indices and validity masks."""
    groups = np.intersect1d(pkey_s, tkey_s)
    p_lo, p_hi = np.searchsorted(pkey_s, groups), np.searchsorted(pkey_s, groups, side="right")
    t_lo, t_hi = np.searchsorted(tkey_s, groups), np.searchsorted(tkey_s, groups, side="right")
    n_p, n_t = p_hi - p_lo, t_hi - t_lo
    for members in _buckets(n_t, n_p):
        t_idx, t_ok = _padded_index(t_lo[members], n_t[members], int(n_t[members].max()))
        p_idx, p_ok = _padded_index(p_lo[members], n_p[members], int(n_p[members].max()))
        yield groups[members], t_idx, t_ok, p_idx, p_ok


def _buckets(n_t: np.ndarray, n_p: np.ndarray, budget: int = 4_000_000):
    """Group indices bucketed by size so that padding stays small and each tensor fits the budget."""
    size = np.maximum(n_t, n_p)
    order = np.argsort(size, kind="stable")
    i = 0
    while i < len(order):
        # grow the bucket while sizes stay within 2x of its first member and the tensor fits
        limit = max(int(size[order[i]]) * 2, 4)
        j = int(np.searchsorted(size[order], limit, side="right"))
        members = order[i:j]
        Q, P = int(n_t[members].max()), int(n_p[members].max())
        per = max(Q * P, 1)
        take = max(1, min(len(members), budget // per))
        end = i + take
        yield order[i:end]
        i = end


def _padded_index(lo: np.ndarray, n: np.ndarray, width: int):
    offsets = np.arange(width)[None, :]
    ok = offsets < n[:, None]
    return np.where(ok, lo[:, None] + offsets, 0), ok


def _greedy(iou: np.ndarray, threshold: float):
    """Truth rank by rank: each truth takes the best free prediction of its group."""
    G, Q, P = iou.shape
    used = np.zeros((G, P), dtype=bool)
    gs, qs, ps = [], [], []
    rows = np.arange(G)
    for q in range(Q):
        cand = np.where(used, -1.0, iou[:, q, :])
        best = cand.argmax(axis=1)
        value = cand[rows, best]
        hit = value >= threshold  # padding (-1) never hits
        used[rows[hit], best[hit]] = True
        gs.append(rows[hit])
        qs.append(np.full(int(hit.sum()), q))
        ps.append(best[hit])
    return (np.concatenate(gs), np.concatenate(qs)), np.concatenate(ps)


def _hungarian(iou: np.ndarray, threshold: float):
    """Most matches at or above the threshold per group (scipy), ties broken by total IoU."""
    from scipy.optimize import linear_sum_assignment

    G, Q, P = iou.shape
    eligible = iou >= threshold
    weight = np.where(eligible, (min(Q, P) + 1) + iou, 0.0)
    gs, qs, ps = [], [], []
    for g in np.flatnonzero(eligible.any(axis=(1, 2))):
        r, c = linear_sum_assignment(weight[g], maximize=True)
        keep = eligible[g, r, c]
        gs.append(np.full(int(keep.sum()), g))
        qs.append(r[keep])
        ps.append(c[keep])
    if not gs:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty), empty
    return (np.concatenate(gs), np.concatenate(qs)), np.concatenate(ps)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _scores(tp: int, fp: int, fn: int, iou_sum: float, ignored: int) -> dict:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "mean_iou": _ratio(iou_sum, tp),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "ignored": int(ignored),  # predictions on a crowd region of their class: neither true nor false positives
    }


def detection_scores(predictions: Sequence[Detections], references: Sequence[Detections], iou_threshold: float = 0.5,
                     matching: str = "greedy") -> dict:
    """Precision, recall, F1, mean IoU of true positives, tp/fp/fn, ``ignored`` (on crowd regions), and the same ``per_class``."""
    result = match(predictions, references, iou_threshold, matching)
    n = len(result.label_names)
    counted = ~result.pred_matched & ~result.pred_ignored
    tp_c = np.bincount(result.true_label[result.true_matched], minlength=n)
    fn_c = np.bincount(result.true_label[~result.true_matched], minlength=n)
    fp_c = np.bincount(result.pred_label[counted], minlength=n)
    ignored_c = np.bincount(result.pred_label[result.pred_ignored], minlength=n)
    iou_c = np.bincount(result.match_label, weights=result.match_iou, minlength=n) if n else np.zeros(0)
    seen = np.bincount(result.true_label, minlength=n) + np.bincount(result.pred_label, minlength=n) > 0
    out = _scores(int(tp_c.sum()), int(fp_c.sum()), int(fn_c.sum()), float(result.match_iou.sum()), int(ignored_c.sum()))
    classes = sorted((i for i in range(n) if seen[i]), key=lambda i: (normalize_label(result.label_names[i]), result.label_names[i]))
    out["per_class"] = {result.label_names[i]: _scores(int(tp_c[i]), int(fp_c[i]), int(fn_c[i]), float(iou_c[i]), int(ignored_c[i]))
                        for i in classes}
    return out
