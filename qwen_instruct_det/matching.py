"""Detection matching at an IoU threshold, with class match: the one implementation.

``metrics/det_iou50`` (the ``evaluate`` module) and the library's own evaluation both call
:func:`detection_scores`. Inputs are detection dicts ``{"boxes": [[x1, y1, x2, y2], ...],
"labels": [...]}`` in pixels, one per image; references may carry ``"iscrowd"`` (crowd
boxes are not targets here and are left out). Matching is per image and per class:

- ``greedy``: each truth box in order takes the best still-unmatched prediction of its
  class; a true positive if their IoU is at least the threshold, otherwise the truth box
  is a false negative and the prediction stays free. Unmatched predictions are false
  positives. (The seed project's published procedure.)
- ``hungarian``: scipy's assignment maximises the number of matches at or above the
  threshold (ties broken by total IoU).

All (image, class) groups are matched together: groups are bucketed by size, one padded
IoU tensor per bucket, and greedy steps through the truth rank, not through box pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import boxes as B

MATCHINGS = ("greedy", "hungarian")


@dataclass
class _Flat:
    """Boxes of many images as columns: group key = image * n_labels + label id."""

    key: np.ndarray
    xyxy: np.ndarray


def _flatten(items: list, what: str, label_ids: dict[str, int], drop_crowd: bool) -> _Flat:
    boxes, images, labels_all = [], [], []
    for i, item in enumerate(items):
        try:
            raw_boxes, labels = item["boxes"], item["labels"]
        except (KeyError, TypeError):
            raise ValueError(f"{what}[{i}] must be a dict with 'boxes' and 'labels', got {type(item).__name__} {str(item)[:80]}.") from None
        arr = np.asarray(raw_boxes, dtype=np.float64) if len(raw_boxes) else np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) != len(labels):
            raise ValueError(f"{what}[{i}] has {len(raw_boxes)} boxes and {len(labels)} labels; each box needs [x1, y1, x2, y2] and one label.")
        labels = list(labels)
        if drop_crowd and item.get("iscrowd") is not None:
            crowd = np.asarray(item["iscrowd"], dtype=bool).reshape(-1)
            if len(crowd) != len(arr):
                raise ValueError(f"{what}[{i}] has {len(crowd)} iscrowd flags for {len(arr)} boxes.")
            arr = arr[~crowd]
            labels = [lab for lab, c in zip(labels, crowd) if not c]
        boxes.append(arr)
        images.append(np.full(len(arr), i, dtype=np.int64))
        labels_all.extend(labels)
    for label in labels_all:
        if label not in label_ids:
            label_ids[label] = len(label_ids)
    keys = np.concatenate(images) if images else np.zeros(0, dtype=np.int64)
    lab = np.fromiter((label_ids[label] for label in labels_all), dtype=np.int64, count=len(labels_all))
    return _Flat(key=np.stack([keys, lab], axis=1) if len(keys) else np.zeros((0, 2), dtype=np.int64),
                 xyxy=np.concatenate(boxes) if boxes else np.zeros((0, 4)))


@dataclass
class MatchResult:
    """Per-box outcome: which predictions and truths matched, and the IoU of each match."""

    label_names: list[str]
    pred_label: np.ndarray
    true_label: np.ndarray
    pred_matched: np.ndarray  # bool per prediction
    true_matched: np.ndarray  # bool per truth box
    match_iou: np.ndarray  # IoU of every true-positive pair
    match_label: np.ndarray  # label id of every true-positive pair


def match(predictions: list, references: list, iou_threshold: float = 0.5, matching: str = "greedy") -> MatchResult:
    """Match predicted to true boxes per image and class."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}.")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references; give one of each per image.")
    label_ids: dict[str, int] = {}
    pred = _flatten(predictions, "predictions", label_ids, drop_crowd=False)
    true = _flatten(references, "references", label_ids, drop_crowd=True)
    n_labels = max(len(label_ids), 1)
    pkey = pred.key[:, 0] * n_labels + pred.key[:, 1]
    tkey = true.key[:, 0] * n_labels + true.key[:, 1]
    p_order = np.argsort(pkey, kind="stable")
    t_order = np.argsort(tkey, kind="stable")
    pkey_s, tkey_s = pkey[p_order], tkey[t_order]
    pbox, tbox = pred.xyxy[p_order], true.xyxy[t_order]

    groups = np.intersect1d(pkey_s, tkey_s)  # groups where matching can happen
    p_lo, p_hi = np.searchsorted(pkey_s, groups), np.searchsorted(pkey_s, groups, side="right")
    t_lo, t_hi = np.searchsorted(tkey_s, groups), np.searchsorted(tkey_s, groups, side="right")
    p_matched_s = np.zeros(len(pkey_s), dtype=bool)
    t_matched_s = np.zeros(len(tkey_s), dtype=bool)
    ious: list[np.ndarray] = []
    pair_labels: list[np.ndarray] = []
    n_p, n_t = p_hi - p_lo, t_hi - t_lo
    solve = _greedy if matching == "greedy" else _hungarian
    for members in _buckets(n_t, n_p):
        Q, P = int(n_t[members].max()), int(n_p[members].max())
        t_idx, t_ok = _padded_index(t_lo[members], n_t[members], Q)
        p_idx, p_ok = _padded_index(p_lo[members], n_p[members], P)
        iou = B.iou_matrix(tbox[t_idx], pbox[p_idx])  # (G, Q, P)
        iou[~t_ok] = -1.0
        iou[np.broadcast_to(~p_ok[:, None, :], iou.shape)] = -1.0
        pair_t, pair_p = solve(iou, iou_threshold)  # (g, q) -> p, as flat positions
        (g, q), p = pair_t, pair_p
        t_matched_s[t_idx[g, q]] = True
        p_matched_s[p_idx[g, p]] = True
        ious.append(iou[g, q, p])
        pair_labels.append(groups[members][g] % n_labels)
    pred_matched = np.zeros(len(pkey), dtype=bool)
    true_matched = np.zeros(len(tkey), dtype=bool)
    pred_matched[p_order] = p_matched_s
    true_matched[t_order] = t_matched_s
    names = [None] * len(label_ids)
    for name, i in label_ids.items():
        names[i] = name
    return MatchResult(names, pred.key[:, 1], true.key[:, 1], pred_matched, true_matched,
                       np.concatenate(ious) if ious else np.zeros(0),
                       np.concatenate(pair_labels) if pair_labels else np.zeros(0, dtype=np.int64))


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


def _scores(tp: int, fp: int, fn: int, iou_sum: float) -> dict:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "mean_iou": _ratio(iou_sum, tp),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
    }


def detection_scores(predictions: list, references: list, iou_threshold: float = 0.5, matching: str = "greedy") -> dict:
    """Precision, recall, F1, mean IoU of true positives, tp/fp/fn, and the same ``per_class``."""
    result = match(predictions, references, iou_threshold, matching)
    n = len(result.label_names)
    tp_c = np.bincount(result.true_label[result.true_matched], minlength=n)
    fn_c = np.bincount(result.true_label[~result.true_matched], minlength=n)
    fp_c = np.bincount(result.pred_label[~result.pred_matched], minlength=n)
    iou_c = np.bincount(result.match_label, weights=result.match_iou, minlength=n) if n else np.zeros(0)
    out = _scores(int(tp_c.sum()), int(fp_c.sum()), int(fn_c.sum()), float(result.match_iou.sum()))
    out["per_class"] = {name: _scores(int(tp_c[i]), int(fp_c[i]), int(fn_c[i]), float(iou_c[i]))
                        for i, name in sorted(enumerate(result.label_names), key=lambda x: str(x[1]))}
    return out
