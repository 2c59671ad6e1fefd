"""det_iou50: detection precision, recall, F1 and mean IoU at an IoU threshold, with class match.

A thin ``evaluate.Metric`` over ``qwen_instruct_det.matching.detection_scores``: the
matching is implemented once, in the library, and used by this module and by the
library's own evaluation alike.
"""

import datasets
import evaluate

from qwen_instruct_det.matching import detection_scores

_CITATION = """\
@software{qwen_instruct_det,
  title = {qwen_instruct_det: COCO-format detection data for Qwen-VL},
  year = {2026}
}
"""

_DESCRIPTION = """\
Detection precision, recall, F1 and mean IoU at an IoU threshold (0.5 by default), with
class match. Matching is per image and per class. ``greedy`` takes each reference box in
order and gives it the best still-unmatched prediction of its class; the pair is a true
positive if their IoU is at least the threshold, otherwise the reference box is a false
negative and the prediction stays free. Unmatched predictions are false positives.
``hungarian`` maximises the number of matches at or above the threshold. ``mean_iou`` is
the mean IoU of the true-positive pairs. A ratio whose denominator is zero is 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per image, ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}``
        in pixels (``qwen_instruct_det.parse_detections`` returns this shape; extra keys are ignored).
    references: one dict per image in the same shape; an optional ``"iscrowd"`` list marks
        crowd boxes, which are not targets.
    iou_threshold (float): IoU at or above which a pair matches. Default 0.5.
    matching (str): ``"greedy"`` (default) or ``"hungarian"``.
Returns:
    precision, recall, f1, mean_iou (floats), tp, fp, fn (ints), per_class (the same per label).
Examples:
    >>> import evaluate
    >>> det = evaluate.load("./metrics/det_iou50")
    >>> predictions = [{"boxes": [[10, 10, 50, 50], [60, 60, 90, 90]], "labels": ["cat", "dog"]}]
    >>> references = [{"boxes": [[12, 10, 50, 52], [0, 0, 5, 5]], "labels": ["cat", "dog"]}]
    >>> results = det.compute(predictions=predictions, references=references)
    >>> print(results["tp"], results["fp"], results["fn"], results["precision"], results["recall"])
    1 1 1 0.5 0.5
    >>> round(results["mean_iou"], 3)
    0.907
"""

_BOXES = {"boxes": datasets.List(datasets.List(datasets.Value("float64"))), "labels": datasets.List(datasets.Value("string"))}


def _only_boxes(items, is_reference):
    if items is None:
        return None
    out = []
    for item in items:
        if not isinstance(item, dict):
            out.append(item)  # evaluate's own checks name the problem
            continue
        clean = {"boxes": item.get("boxes", []), "labels": item.get("labels", [])}
        if is_reference:
            clean["iscrowd"] = item.get("iscrowd") or [False] * len(clean["labels"])
        out.append(clean)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DetIou50(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": _BOXES, "references": dict(_BOXES, iscrowd=datasets.List(datasets.Value("bool")))}
            ),
            reference_urls=["https://cocodataset.org/#detection-eval"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of per-image detections; only the keys the metric reads are kept.
"""
        return super().add_batch(predictions=_only_boxes(predictions, False), references=_only_boxes(references, True), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one image's detections; only the keys the metric reads are kept.
"""
        return super().add(prediction=_only_boxes([prediction], False)[0], reference=_only_boxes([reference], True)[0], **kwargs)

    def _compute(self, predictions, references, iou_threshold=0.5, matching="greedy"):
        return detection_scores(predictions, references, iou_threshold=iou_threshold, matching=matching)
