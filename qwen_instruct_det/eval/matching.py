"""Detection matching at an IoU threshold, with class match: the one implementation.

``metrics/det_iou50`` (the ``evaluate`` module) and the library's own evaluation both call
:func:`detection_scores`. Inputs are :class:`~qwen_instruct_det.eval.detections.Detections` dicts, one per image, checked
strictly (``detections.py``). Labels are compared in one canonical form
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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .. import boxes as B
from ..formats import normalize_label
from .detections import Detections, check_options, read_detections


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
    pred = read_detections(predictions, "predictions")
    true = read_detections(references, "references")
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
