"""det_iou50: detection precision, recall, F1 and mean IoU at an IoU threshold, with class match.

A thin ``evaluate.Metric`` over ``qwen_instruct_det.eval.matching.detection_scores``: the
matching and the input checks are implemented once, in the library, and used by this module
and by the library's own evaluation alike. Inputs are checked before they are stored, so a
wrong shape is an error naming the image, never a silent zero.
"""

import datasets
import evaluate

from qwen_instruct_det.eval.detections import check_detections, check_options
from qwen_instruct_det.eval.matching import detection_scores

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
Crowd references (``iscrowd``) are treated as COCOeval treats them: they are not targets,
and a prediction left unmatched whose intersection with a crowd region of its class covers
at least the threshold of the prediction's own area is ignored (neither a true nor a false
positive). Labels are compared in one canonical form (case, surrounding spaces and quotes,
repeated spaces) and ``per_class`` uses the references' spelling.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per image, ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}``
        in pixels, with optional ``"scores"`` (``qwen_instruct_det.parse_detections`` returns
        this shape; its ``unparsed``, ``dropped`` and ``unknown_labels`` counts are accepted).
    references: one dict per image in the same shape; an optional ``"iscrowd"`` list marks
        crowd regions (``"image_id"`` and ``"area"`` are accepted too).
        Any other key, ragged or non-numeric boxes, NaN or infinite coordinates, or a
        boxes/labels length mismatch is a ValueError naming the image index.
    iou_threshold (float): IoU at or above which a pair matches, in (0, 1]. Default 0.5.
    matching (str): ``"greedy"`` (default) or ``"hungarian"``.
Returns:
    precision, recall, f1, mean_iou (floats), tp, fp, fn, ignored (ints: predictions on a crowd region of their
    class, neither true nor false positives), per_class (the same per label).
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

    A prediction on a crowd region of its class is ignored; labels match whatever their case:

    >>> predictions = [{"boxes": [[0, 0, 10, 10], [30, 30, 40, 40]], "labels": ["traffic light", "person"]}]
    >>> references = [{"boxes": [[0, 0, 10, 11], [20, 20, 90, 90]], "labels": ["Traffic Light", "person"],
    ...                "iscrowd": [False, True]}]
    >>> results = det.compute(predictions=predictions, references=references)
    >>> print(results["tp"], results["fp"], results["fn"], results["ignored"], list(results["per_class"]))
    1 0 0 1 ['person', 'Traffic Light']

    Inputs of another shape are errors, not zeros:

    >>> det.compute(predictions=[{"bbox": [[0, 0, 10, 10]], "label": ["cat"]}], references=references)
    Traceback (most recent call last):
    ...
    ValueError: predictions[0] has no ['boxes', 'labels'] and unknown keys ['bbox', 'label']; ...
"""

_BOXES = {"boxes": datasets.List(datasets.List(datasets.Value("float64"))), "labels": datasets.List(datasets.Value("string"))}
_OPTIONS = ("iou_threshold", "matching")


def _stored(items, role):
    """The columns the metric stores, from checked detections: boxes, labels and, for references, iscrowd."""
    out = []
    for item in items:
        kept = {"boxes": item["boxes"], "labels": item["labels"]}
        if role == "references":
            crowd = item.get("iscrowd")
            kept["iscrowd"] = [bool(c) for c in crowd] if crowd is not None else [False] * len(kept["labels"])
        out.append(kept)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DetIou50(evaluate.Metric):
    _images_added = 0  # since the last compute, so that an error names the image across add_batch calls

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
        """Check a batch of per-image detections (errors name the image) and add it."""
        start = 0 if self.writer is None else self._images_added
        check_detections(predictions, "predictions", start)
        check_detections(references, "references", start)
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions and {len(references)} references; give one of each per image.")
        super().add_batch(predictions=_stored(predictions, "predictions"), references=_stored(references, "references"), **kwargs)
        self._images_added = start + len(predictions)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Check one image's detections (errors name the image) and add them."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Scores of everything added; the options are checked before any input is stored."""
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"det_iou50 takes the options {list(_OPTIONS)}, got {unknown}.")
        check_options(kwargs.get("iou_threshold", 0.5), kwargs.get("matching", "greedy"))
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, iou_threshold=0.5, matching="greedy"):
        return detection_scores(predictions, references, iou_threshold=iou_threshold, matching=matching)
