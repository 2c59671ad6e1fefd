"""Matching and scores against hand-computed cases and a plain reference implementation."""

from __future__ import annotations

import typing
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_instruct_det import boxes as B
from qwen_instruct_det.eval.matching import detection_scores
from qwen_instruct_det.formats import parse_detections


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


# --- inputs of the wrong shape are errors that name the image -------------------------------------------------

_GOOD = {"boxes": [[0, 0, 10, 10]], "labels": ["a"]}

_BAD_PREDICTIONS = [
    ({"bbox": [[0, 0, 10, 10]], "label": ["a"]}, r"predictions\[1\] has no \['boxes', 'labels'\].*'boxes'.*'labels'.*'scores'"),
    ([{"bbox": [0, 0, 10, 10], "category": "a"}], r"predictions\[1\] is a list.*objects"),
    (det([[0, 0, 10, 10]], ["a"], label=["a"]), r"predictions\[1\] has unknown keys \['label'\]"),
    (det([[0, 0, 10, 10]], ["a"], iscrowd=[False]), r"predictions\[1\] has unknown keys \['iscrowd'\]"),
    (det(None, []), r"predictions\[1\] has boxes None"),
    (det([[0, 0, 10, 10], [0, 0, 5]], ["a", "a"]), r"predictions\[1\] has boxes .*\[x1, y1, x2, y2\]"),
    (det([[0, 0, 10]], ["a"]), r"predictions\[1\] has boxes .*\[x1, y1, x2, y2\]"),
    (det([["0", "0", "10", "10"]], ["a"]), r"predictions\[1\] has boxes .*numbers"),
    (det([[0, 0, None, 10]], ["a"]), r"predictions\[1\] has boxes .*numbers"),
    (det([[0, 0, float("nan"), 10]], ["a"]), r"predictions\[1\] has a box that is not finite"),
    (det([[0, 0, float("inf"), 10]], ["a"]), r"predictions\[1\] has a box that is not finite"),
    (det([[0, 10, 10, 5]], ["a"]), r"predictions\[1\] has a box with x2 < x1 or y2 < y1"),
    (det([[0, 0, 10, 10]], ["a", "b"]), r"predictions\[1\] has 1 boxes and 2 labels"),
    (det([[0, 0, 10, 10]], "a"), r"predictions\[1\] has labels 'a'"),
    (det([[0, 0, 10, 10]], [None]), r"predictions\[1\] has label None"),
    (det([[0, 0, 10, 10]], ["a"], scores=[0.5, 0.2]), r"predictions\[1\] has scores \[0.5, 0.2\] for 1 boxes"),
    (det([[0, 0, 10, 10]], ["a"], scores=[float("nan")]), r"predictions\[1\] has scores .*finite"),
]

_BAD_REFERENCES = [
    ({"objects": [{"bbox": [0, 0, 10, 10], "category": "a"}]}, r"references\[1\] has no \['boxes', 'labels'\].*objects"),
    (det([[0, 0, 10, 10]], ["a"], iscrowd=[True, False]), r"references\[1\] has iscrowd .*one flag per box"),
    (det([[0, 0, 10, 10]], ["a"], iscrowd=["no"]), r"references\[1\] has iscrowd"),
    (det([[0, 0, 10, 10]], ["a"], category=["a"]), r"references\[1\] has unknown keys \['category'\].*'iscrowd'"),
    (det([[0, 0, 10, 10]], ["a"], area=[1, 2]), r"references\[1\] has area"),
    # COCO's [x, y, width, height] given as corners: most boxes come out inverted, and every one scored as missed
    (det([[0, 0, 10, 10], [100, 100, 20, 30]], ["a", "a"]), r"references\[1\] has a box with x2 < x1 or y2 < y1, \[100.0, 100.0, 20.0, 30.0\].*\[x, y, x \+ width"),
]


@pytest.mark.parametrize(("bad", "message"), _BAD_PREDICTIONS)
def test_a_wrong_prediction_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        detection_scores([_GOOD, bad], [_GOOD, _GOOD])


@pytest.mark.parametrize(("bad", "message"), _BAD_REFERENCES)
def test_a_wrong_reference_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        detection_scores([_GOOD, _GOOD], [_GOOD, bad])


def test_one_image_not_in_a_list_is_named():
    with pytest.raises(ValueError, match="predictions must be a list with one detections dict per image"):
        detection_scores(_GOOD, [_GOOD])


def test_keys_the_library_writes_are_accepted():
    # parse_detections' counts on predictions; image_id and area on references; numpy boxes on both
    p = dict(parse_detections("<|object_ref_start|>a<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|>", width=100, height=100),
             scores=[0.9])
    r = det(np.array([[0.0, 0.0, 100.0, 100.0], [50, 50, 60, 60]]), ["a", "b"], iscrowd=[0, 1], image_id=7, area=[1e4, 100])
    assert scores(p, r) == (1, 0, 0)
    assert scores(det(np.zeros((0, 4)), []), det([], [], iscrowd=None)) == (0, 0, 0)
    out = detection_scores([det(np.array([[0, 0, 10, 10]]), np.array(["A"]))], [det(np.array([[0, 0, 10, 10]]), np.array(["a"]))])
    assert out["tp"] == 1 and [type(name) for name in out["per_class"]] == [str]


@pytest.mark.parametrize("threshold", [0, 0.0, -2, 1.5, float("nan"), "0.5", None, True])
def test_threshold_outside_0_1_is_refused(threshold):
    disjoint_p, disjoint_r = det([[0, 0, 10, 10]], ["a"]), det([[50, 50, 60, 60]], ["a"])
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \(0, 1\]"):
        detection_scores([disjoint_p], [disjoint_r], iou_threshold=threshold)


def test_threshold_one_needs_identical_boxes():
    assert scores(det([[0, 0, 10, 10]], ["a"]), det([[0, 0, 10, 10]], ["a"]), iou_threshold=1.0) == (1, 0, 0)
    assert scores(det([[0, 0, 10, 10]], ["a"]), det([[0, 0, 10, 11]], ["a"]), iou_threshold=1) == (0, 1, 1)


# --- crowd references: COCOeval's ignore regions --------------------------------------------------------------


def _cocoeval_counts(preds, refs, threshold):
    """tp, fp, fn read from pycocotools' evalImgs: bbox, one IoU threshold, all areas, maxDets 1000."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({lab for d in preds + refs for lab in d["labels"]})
    cat = {name: k + 1 for k, name in enumerate(names)}

    def ann(i, box, label, **extra):
        x1, y1, x2, y2 = box
        return {"image_id": i, "category_id": cat[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), **extra}

    gt = [ann(i, b, lab, iscrowd=int(c)) for i, r in enumerate(refs, 1)
          for b, lab, c in zip(r["boxes"], r["labels"], r.get("iscrowd") or [0] * len(r["boxes"]))]
    dt = [ann(i, b, lab, iscrowd=0, score=s) for i, p in enumerate(preds, 1)
          for b, lab, s in zip(p["boxes"], p["labels"], p.get("scores") or [1.0] * len(p["boxes"]))]
    cocos = []
    with contextlib.redirect_stdout(io.StringIO()):
        for anns in (gt, dt):
            coco = COCO()
            coco.dataset = {"images": [{"id": i} for i in range(1, len(refs) + 1)],
                            "annotations": [dict(a, id=k) for k, a in enumerate(anns, 1)],
                            "categories": [{"id": v, "name": k} for k, v in cat.items()]}
            coco.createIndex()
            cocos.append(coco)
        ev = COCOeval(cocos[0], cocos[1], "bbox")
        ev.params.iouThrs = np.array([threshold])
        ev.params.maxDets = [1000]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.evaluate()
    tp = fp = fn = 0
    for e in ev.evalImgs:
        if e is None:
            continue
        matched, ignored = e["dtMatches"][0] > 0, e["dtIgnore"][0].astype(bool)
        tp += int((matched & ~ignored).sum())
        fp += int((~matched & ~ignored).sum())
        fn += int(((e["gtMatches"][0] == 0) & (np.asarray(e["gtIgnore"]) == 0)).sum())
    return tp, fp, fn


_CROWD = [0, 0, 100, 100]
_CROWD_CASES = [  # (predictions, references, tp, fp, fn) for one image at IoU 0.5
    # a prediction inside a crowd region of its class is ignored, not a false positive
    (det([[10, 10, 30, 30]], ["a"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 0, 0),
    # ... and so are several: a crowd region takes any number of predictions
    (det([[10, 10, 30, 30], [50, 50, 90, 90]], ["a", "a"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 0, 0),
    # a crowd region of another class ignores nothing
    (det([[10, 10, 30, 30]], ["b"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 1, 0),
    # less than half of the prediction's own area on the crowd region: a false positive
    (det([[90, 0, 120, 10]], ["a"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 1, 0),
    # exactly half: ignored (the threshold is inclusive)
    (det([[80, 0, 120, 10]], ["a"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 0, 0),
    # a prediction much larger than the crowd region covers little of itself with it: a false positive
    (det([[0, 0, 300, 300]], ["a"]), det([_CROWD], ["a"], iscrowd=[True]), 0, 1, 0),
    # a real object inside a crowd region is matched first; its duplicate falls back on the crowd region
    (det([[10, 10, 30, 30], [11, 10, 31, 30]], ["a", "a"]), det([[10, 10, 30, 30], _CROWD], ["a", "a"], iscrowd=[False, True]),
     1, 0, 0),
    # a poor box on a real object inside a crowd region: the object is missed, the box ignored
    (det([[10, 10, 20, 20]], ["a"]), det([[10, 10, 30, 30], _CROWD], ["a", "a"], iscrowd=[False, True]), 0, 0, 1),
    # crowd references alone are never missed
    (det([], []), det([_CROWD, [200, 200, 300, 300]], ["a", "b"], iscrowd=[True, True]), 0, 0, 0),
    # iscrowd as 0/1 integers
    (det([[10, 10, 30, 30], [150, 150, 160, 160]], ["a", "a"]), det([_CROWD], ["a"], iscrowd=[1]), 0, 1, 0),
]


@pytest.mark.parametrize(("p", "r", "tp", "fp", "fn"), _CROWD_CASES)
@pytest.mark.parametrize("matching", ["greedy", "hungarian"])
def test_crowd_regions_ignore_predictions_as_cocoeval_does(p, r, tp, fp, fn, matching):
    assert _cocoeval_counts([p], [r], 0.5) == (tp, fp, fn)
    out = detection_scores([p], [r], matching=matching)
    assert (out["tp"], out["fp"], out["fn"]) == (tp, fp, fn)
    assert out["ignored"] == len(p["boxes"]) - tp - fp  # every prediction is counted once: true, false or ignored
    assert out["ignored"] == sum(c["ignored"] for c in out["per_class"].values())


def test_ignored_predictions_leave_precision_alone():
    p = det([[0, 0, 10, 10], [50, 50, 60, 60]], ["a", "a"])
    r = det([[0, 0, 10, 10], [40, 40, 80, 80]], ["a", "a"], iscrowd=[False, True])
    out = detection_scores([p], [r])
    assert (out["precision"], out["recall"]) == (1.0, 1.0)
    assert out["per_class"]["a"]["fp"] == 0


_crowd_box = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(5, 30), st.integers(5, 30)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@st.composite
def _crowd_image(draw):
    """At most one real object per class (so that score order and truth order match alike), crowd regions, predictions."""
    truth = {lab: draw(st.one_of(st.none(), _box)) for lab in "ab"}
    crowd = draw(st.lists(st.tuples(_crowd_box, st.sampled_from("ab")), max_size=2))
    preds = draw(st.lists(st.tuples(_box, st.sampled_from("ab")), max_size=6))
    boxes = [b for b in truth.values() if b] + [b for b, _ in crowd]
    labels = [lab for lab, b in truth.items() if b] + [lab for _, lab in crowd]
    ref = det(boxes, labels, iscrowd=[False] * (len(boxes) - len(crowd)) + [True] * len(crowd))
    # score = IoU with the real object of the class, so COCOeval's score order is greedy's IoU order
    score = [float(B.iou_matrix(np.array([b], float), np.array([truth[lab]], float))[0, 0]) if truth[lab] else 0.0 for b, lab in preds]
    return det([b for b, _ in preds], [lab for _, lab in preds], scores=score), ref


@settings(max_examples=150, deadline=None)
@given(st.lists(_crowd_image(), min_size=1, max_size=4), st.sampled_from([0.3, 0.5, 0.7]))
def test_crowd_handling_equals_cocoeval(images, thr):
    preds, refs = [p for p, _ in images], [r for _, r in images]
    out = detection_scores(preds, refs, iou_threshold=thr)
    assert (out["tp"], out["fp"], out["fn"]) == _cocoeval_counts(preds, refs, thr)


# --- labels: one canonical form ---------------------------------------------------------------------------------


def test_labels_are_compared_in_canonical_form():
    p = det([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], ["traffic light", ' "Car" ', "stop  sign"])
    r = det([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], ["Traffic Light", "car", "Stop Sign"])
    out = detection_scores([p], [r])
    assert (out["tp"], out["fp"], out["fn"]) == (3, 0, 0)
    assert list(out["per_class"]) == ["car", "Stop Sign", "Traffic Light"]


def test_per_class_uses_the_first_reference_spelling():
    preds = [det([[0, 0, 10, 10]], ["TRAFFIC LIGHT"]), det([[0, 0, 10, 10], [20, 20, 30, 30]], ["traffic light", "Dog"])]
    refs = [det([[0, 0, 10, 10]], ["Traffic Light"]), det([[0, 0, 10, 10]], ["traffic  light"])]
    out = detection_scores(preds, refs)
    assert set(out["per_class"]) == {"Traffic Light", "Dog"}
    assert out["per_class"]["Traffic Light"]["tp"] == 2 and out["per_class"]["Dog"]["fp"] == 1


def test_detections_is_the_typed_shape_of_the_signatures():
    from qwen_instruct_det import Detections

    assert Detections.__required_keys__ == {"boxes", "labels"}
    assert Detections.__optional_keys__ == {"scores", "iscrowd"}
    hints = typing.get_type_hints(detection_scores)
    assert hints["predictions"] == hints["references"] == Sequence[Detections]
