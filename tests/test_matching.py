"""Matching and scores against hand-computed cases and a plain reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_instruct_det import boxes as B
from qwen_instruct_det.matching import detection_scores


def det(boxes, labels, **extra):
    return {"boxes": boxes, "labels": labels, **extra}


def scores(p, r, **kw):
    out = detection_scores([p], [r], **kw)
    return out["tp"], out["fp"], out["fn"]


def test_empty_predictions_and_empty_references():
    assert scores(det([], []), det([[0, 0, 10, 10]], ["a"])) == (0, 0, 1)
    assert scores(det([[0, 0, 10, 10]], ["a"]), det([], [])) == (0, 1, 0)
    out = detection_scores([det([], [])], [det([], [])])
    assert (out["precision"], out["recall"], out["f1"], out["mean_iou"]) == (0.0, 0.0, 0.0, 0.0)


def test_duplicate_predictions_are_false_positives():
    out = detection_scores([det([[0, 0, 10, 10], [0, 0, 10, 10]], ["a", "a"])], [det([[0, 0, 10, 10]], ["a"])])
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 0)
    assert out["precision"] == 0.5 and out["recall"] == 1.0 and out["f1"] == pytest.approx(2 / 3)
    assert out["mean_iou"] == 1.0


def test_class_must_match():
    out = detection_scores([det([[0, 0, 10, 10]], ["cat"])], [det([[0, 0, 10, 10]], ["dog"])])
    assert (out["tp"], out["fp"], out["fn"], out["f1"]) == (0, 1, 1, 0.0)
    assert out["per_class"]["cat"]["fp"] == 1 and out["per_class"]["dog"]["fn"] == 1


def test_below_threshold_leaves_the_prediction_free():
    # truth 1 overlaps the prediction too little (IoU 1/3); truth 2 then takes it (IoU 1)
    p = det([[5, 0, 15, 10]], ["a"])
    r = det([[0, 0, 10, 10], [5, 0, 15, 10]], ["a", "a"])
    assert scores(p, r) == (1, 0, 1)


def test_prediction_that_best_fits_an_already_matched_truth():
    t = [[0, 0, 10, 10], [4, 0, 14, 10]]
    p = [[2, 0, 12, 10], [-3, 0, 7, 10]]
    # greedy: truth 1 takes p1 (IoU 8/12 over 7/13); truth 2's best free one is p2 at 3/17 < 0.5
    greedy = detection_scores([det(p, ["a", "a"])], [det(t, ["a", "a"])])
    assert (greedy["tp"], greedy["fp"], greedy["fn"]) == (1, 1, 1)
    assert greedy["mean_iou"] == pytest.approx(8 / 12)
    # hungarian finds both: truth 1 - p2 (7/13), truth 2 - p1 (8/12)
    hung = detection_scores([det(p, ["a", "a"])], [det(t, ["a", "a"])], matching="hungarian")
    assert (hung["tp"], hung["fp"], hung["fn"]) == (2, 0, 0)
    assert hung["mean_iou"] == pytest.approx((7 / 13 + 8 / 12) / 2)


def test_crowd_references_are_not_targets():
    r = det([[0, 0, 10, 10], [50, 50, 90, 90]], ["a", "a"], iscrowd=[False, True])
    assert scores(det([[0, 0, 10, 10]], ["a"]), r) == (1, 0, 0)


def test_threshold_is_inclusive_and_configurable():
    # IoU exactly 0.5: [0,0,10,10] vs [0,0,10,20] -> 100/200
    assert scores(det([[0, 0, 10, 20]], ["a"]), det([[0, 0, 10, 10]], ["a"])) == (1, 0, 0)
    assert scores(det([[0, 0, 10, 20]], ["a"]), det([[0, 0, 10, 10]], ["a"]), iou_threshold=0.75) == (0, 1, 1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"predictions\[0\] has 1 boxes and 2 labels"):
        detection_scores([det([[0, 0, 1, 1]], ["a", "b"])], [det([], [])])
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        detection_scores([det([], []), det([], [])], [det([], [])])
    with pytest.raises(ValueError, match="matching"):
        detection_scores([det([], [])], [det([], [])], matching="best")


def _naive_greedy(preds, refs, thr):
    tp = fp = fn = 0
    ious = []
    for p, r in zip(preds, refs):
        used = set()
        pb, rb = np.array(p["boxes"], float).reshape(-1, 4), np.array(r["boxes"], float).reshape(-1, 4)
        for tbox, tlab in zip(rb, r["labels"]):
            best, best_iou = None, -1.0
            for pi, (pbox, plab) in enumerate(zip(pb, p["labels"])):
                if pi in used or plab != tlab:
                    continue
                iou = B.iou_matrix(tbox[None], pbox[None])[0, 0]
                if iou > best_iou:
                    best, best_iou = pi, iou
            if best is not None and best_iou >= thr:
                used.add(best)
                tp += 1
                ious.append(best_iou)
            else:
                fn += 1
        fp += len(pb) - len(used)
    return tp, fp, fn, (sum(ious) / tp if tp else 0.0)


_box = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 25), st.integers(1, 25)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
_image = st.lists(st.tuples(_box, st.sampled_from("ab")), max_size=7).map(
    lambda items: det([b for b, _ in items], [lab for _, lab in items]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_image, _image), min_size=1, max_size=6), st.sampled_from([0.3, 0.5, 0.7]))
def test_vectorised_greedy_equals_the_plain_procedure(pairs, thr):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    out = detection_scores(preds, refs, iou_threshold=thr)
    tp, fp, fn, mean_iou = _naive_greedy(preds, refs, thr)
    assert (out["tp"], out["fp"], out["fn"]) == (tp, fp, fn)
    assert out["mean_iou"] == pytest.approx(mean_iou)
    hung = detection_scores(preds, refs, iou_threshold=thr, matching="hungarian")
    assert hung["tp"] >= out["tp"]
    assert hung["tp"] + hung["fn"] == tp + fn and hung["tp"] + hung["fp"] == tp + fp
