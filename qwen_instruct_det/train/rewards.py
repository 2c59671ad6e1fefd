"""Verifiable rewards for reinforcement fine-tuning (TRL's ``GRPOTrainer``) on detection rows.

Each reward is a TRL reward function ``f(prompts, completions, **columns) -> list[float]``:
TRL calls it with the generated ``completions`` (conversational: one assistant message per
completion), their ``completion_ids``, and every other dataset column as a list, so the
builder's ``objects`` (pixel ``bbox`` + ``category``), ``width`` and ``height`` arrive as
keywords. Answers are read with the library's one parser (``formats``) and scored with its
one matching (``eval.matching.match``, per image and class); nothing here re-implements either.

- :func:`detection_reward` with ``kind="f1"`` (F1 at the IoU threshold), ``"iou"`` (Visual-RFT:
  sum of matched IoUs / max(n_truth, n_pred)) or ``"map_length"`` (VLM-R1: AP at the threshold,
  boxes ranked in answer order, times min(1, n_truth / n_pred)). All three lower the reward for
  a duplicated or extra box: an AP-style reward alone is gamed by redundant boxes.
- :func:`format_reward`: 1.0 when the answer parses completely and was not cut off.

Both are factories; the function they return carries a ``__name__`` (``detection_f1``,
``format``, ...), which TRL uses to log ``rewards/<name>/mean`` and ``/std``. This module is
not a trainer: ``grpo.py`` assembles one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ..budget import ImageBudget
from ..eval.detections import objects_as_detections
from ..eval.matching import match
from ..formats import END_OF_TURN_RE, NO_OBJECTS, ParseResult, get_box_format, says_no_objects

KINDS = ("f1", "iou", "map_length")

RewardFunction = Callable[..., list[float]]


def completion_text(completion) -> str:
    """The answer text of one TRL completion: a string, or the last assistant message's text."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content or "")


class _Reader:
    """Parses a batch of completions against their rows: the one parser, with each row's image size."""

    def __init__(self, box_format: str, categories: Sequence[str] | None, budget: ImageBudget | None):
        self.fmt = get_box_format(box_format)
        self.categories = list(categories or [])
        self.budget = budget

    def input_size(self, width: int, height: int, given) -> tuple[int, int] | None:
        if not self.fmt.needs_input_size:
            return None
        if given is not None:
            return int(given[0]), int(given[1])
        if self.budget is None:
            raise ValueError(f"box format {self.fmt.name!r} reads pixels of the processor-resized image: give the rows an input_size "
                             "column (width, height) or pass the processor's budget (budget=ImageBudget.of(processor)) to the reward factory.")
        return self.budget.resized_size(int(width), int(height))

    def parse(self, completions, width, height, objects=None, input_size=None) -> list[ParseResult]:
        sizes = input_size if input_size is not None else [None] * len(completions)
        results = []
        for k, completion in enumerate(completions):
            truth_names = [o["category"] for o in objects[k]] if objects is not None else []
            categories = self.categories + [c for c in dict.fromkeys(truth_names) if c not in self.categories]
            size = self.input_size(width[k], height[k], sizes[k])
            results.append(self.fmt.parse(completion_text(completion), int(width[k]), int(height[k]), size, categories or None))
        return results


_END_TOKENS = END_OF_TURN_RE.pattern  # the parser's own end-of-turn tokens
# What a complete answer may hold outside its boxes (and, in qwen2 text, their labels): separators, the format's own marks.
_FILLER = {
    "qwen2": re.compile(rf"(?:\s|,|<\|box_start\|>|<\|box_end\|>|{_END_TOKENS})*"),
    "json": re.compile(rf"(?:\s|,|\[|\]|```(?:json)?|{_END_TOKENS})*"),
}
_QWEN2_REF = re.compile(r"<\|object_ref_start\|>.*?<\|object_ref_end\|>", re.S)
_QWEN2_MARK = re.compile(r"<\|object_ref_start\|>|<\|box_start\|>")


def _has_prose(text: str, spans: list[tuple[int, int]], box_format: str) -> bool:
    """Whether text outside the parsed boxes is more than the format's own marks: prose the parser read through.

    JSON: everything outside the objects. qwen2: what follows the last box and, when the
    grounding tokens are in the text, what precedes the first one or sits between boxes
    outside a ref; without the tokens (TRL decodes with skip_special_tokens) a box's label is
    plain text before it, so only what follows the last box can be judged.
    """
    if not spans:
        return False
    gaps = [text[a:b] for a, b in zip([0] + [end for _, end in spans], [start for start, _ in spans] + [len(text)])]
    if box_format != "qwen2":
        return not all(_FILLER["json"].fullmatch(gap) for gap in gaps)
    if not _FILLER["qwen2"].fullmatch(gaps[-1]):
        return True
    first = _QWEN2_MARK.search(text)
    if first is None:
        return False
    if text[: first.start()].strip():
        return True
    gaps[0] = gaps[0][first.start():]
    return not all(_FILLER["qwen2"].fullmatch(_QWEN2_REF.sub("", gap)) for gap in gaps[:-1])


def _average_precision(hits: np.ndarray, n_truth: int) -> float:
    """All-point interpolated AP of one ranked list of hits (True = a true positive) against ``n_truth`` boxes."""
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    return float(envelope[hits].sum() / n_truth)


def _score(parsed: ParseResult, text: str, objects: list[dict], kind: str, iou_threshold: float) -> float:
    n_pred, n_truth = len(parsed.labels), len(objects)
    if n_truth == 0:
        return 1.0 if says_no_objects(text) else 0.0  # not silence, babble or a box cut off before it could be read
    if n_pred == 0:
        return 0.0
    result = match([{"boxes": parsed.boxes, "labels": parsed.labels}], [objects_as_detections(objects)], iou_threshold)
    tp = int(result.pred_matched.sum())
    if kind == "f1":
        return 2.0 * tp / (n_pred + n_truth)
    if kind == "iou":
        return float(result.match_iou.sum()) / max(n_truth, n_pred)
    return _average_precision(result.pred_matched, n_truth) * min(1.0, n_truth / n_pred)


def detection_reward(box_format: str = "qwen2", iou_threshold: float = 0.5, kind: str = "f1", categories: Sequence[str] | None = None,
                     budget: ImageBudget | None = None) -> RewardFunction:
    """A TRL reward function scoring each answer's boxes against the row's ``objects`` (0..1; named ``detection_<kind>``).

    ``categories`` (the data set's names) map answer labels to the data set's spelling; the
    row's own category names are always known. ``qwen2_5`` answers need the processor-resized
    size: an ``input_size`` column, or the processor's ``budget`` here (``ImageBudget.of(processor)``). On an image with no objects an answer that says so (the "no objects"
    sentence, or an empty JSON list) scores 1.0; anything else, boxes, babble, silence or a
    cut-off answer, 0. No boxes against some truth scores 0.
    """
    if kind not in KINDS:
        raise ValueError(f"detection reward kind must be one of {KINDS}, got {kind!r}.")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    reader = _Reader(box_format, categories, budget)

    def reward(prompts, completions, objects, width, height, input_size=None, **columns) -> list[float]:
        parsed = reader.parse(completions, width, height, objects, input_size)
        return [_score(p, completion_text(c), obj, kind, iou_threshold) for p, c, obj in zip(parsed, completions, objects)]

    reward.__name__ = reward.__qualname__ = f"detection_{kind}"
    return reward


def format_reward(box_format: str = "qwen2", end_token_ids: Sequence[int] | None = None, dataset: str = "COCO",
                  budget: ImageBudget | None = None) -> RewardFunction:
    """A TRL reward function (named ``format``): 1.0 for an answer that parses completely and was not cut off, else 0.

    Parses completely: no unparsed fragment, no box dropped as empty, at least one box unless
    the answer is the "no objects" sentence (``dataset`` fills its ``{dataset}``), and no prose
    around the boxes (the parser reads answers through prose; this reward does not pay for it).
    In ``qwen2`` text without grounding tokens (TRL decodes with ``skip_special_tokens``) a
    box's label is the plain text before it, so only prose after the last box can be seen.
    Cut off: with ``end_token_ids`` (the tokenizer's end-of-turn, eos and pad ids), an answer
    whose ``completion_ids`` do not end with one of them; TRL decodes answers without those
    tokens, so the text alone cannot show a cut at a box boundary.
    """
    reader = _Reader(box_format, None, budget)
    ends = set(int(i) for i in end_token_ids) if end_token_ids is not None else None
    empty_answer = " ".join(NO_OBJECTS.format(dataset=dataset).split())

    def reward(prompts, completions, width, height, completion_ids=None, input_size=None, **columns) -> list[float]:
        parsed = reader.parse(completions, width, height, None, input_size)
        scores = []
        for k, (p, completion) in enumerate(zip(parsed, completions)):
            cut = ends is not None and completion_ids is not None and (not completion_ids[k] or completion_ids[k][-1] not in ends)
            text = completion_text(completion)
            readable = len(p.labels) > 0 or " ".join(text.split()) == empty_answer
            prose = _has_prose(text, p.spans, "qwen2" if reader.fmt.name == "qwen2" else "json")
            scores.append(1.0 if readable and p.unparsed == 0 and p.dropped == 0 and not prose and not cut else 0.0)
        return scores

    reward.__name__ = reward.__qualname__ = "format"
    return reward
