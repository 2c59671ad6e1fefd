"""What every box format shares: the result of a parse, the format protocol, labels, empty answers, rendering.

A format is one small object with ``render`` (objects -> text), ``render_region`` (one box
-> the text that names it inside a sentence) and ``parse`` (text -> :class:`ParseResult`),
one module per format (``qwen2``, ``qwen2_5``, ``qwen3``; the two JSON formats share
``json_boxes``), registered by name in this package's ``__init__``. ``render`` is strict (it
is fed our own data). ``parse`` never raises on model text and runs in linear time: the
scanners are regexes with no nested or adjacent quantifiers over the same characters
(nothing backtracks super-linearly, and Python 3.10 needs no possessive quantifiers) and
nothing recurses. It returns what it could read and counts what it could not.

``unparsed`` counts what looked like a box or an object but could not be read. An answer in
no readable format counts as unparsed (at least 1), unless it is a clean empty answer:
empty text, an empty list ``[]`` (code fences allowed), or the :data:`NO_OBJECTS` sentence
with any data set name (compared case-insensitively with spaces collapsed, the final period
optional, nothing else in the answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .. import boxes as B

OBJECT_REF_START, OBJECT_REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
NO_OBJECTS = "There are no objects from the {dataset} categories in the image."

QUOTES = "\"'`“”‘’"


def normalize_label(label: str) -> str:
    """Canonical form of a label: surrounding spaces and quotes removed, lower case, single spaces."""
    text = " ".join(str(label).split())
    while text and (text[0] in QUOTES or text[-1] in QUOTES):
        text = text.strip(QUOTES).strip()
    return text.lower()


@dataclass
class ParseResult:
    """Detections read from one model answer, in pixels of the original image."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: list[str] = field(default_factory=list)
    unparsed: int = 0
    """Fragments that looked like a box or an object but could not be read (truncated, malformed)."""
    dropped: int = 0
    """Boxes that were read but were empty after clamping to the image (x2 <= x1 or y2 <= y1)."""
    unknown_labels: list[str] = field(default_factory=list)
    """Labels not among the categories passed to ``parse`` (kept in ``labels`` all the same)."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Character span of each kept box in the text (inference scores boxes by their tokens)."""

    def to_dict(self) -> dict:
        """The detections shape shared with references and the metric, plus the counts (spans left out)."""
        return {
            "boxes": self.boxes.tolist(),
            "labels": list(self.labels),
            "unparsed": self.unparsed,
            "dropped": self.dropped,
            "unknown_labels": list(self.unknown_labels),
        }


class BoxFormat(Protocol):
    name: str
    needs_input_size: bool

    def box_texts(self, boxes: np.ndarray, widths, heights, input_sizes=None) -> list[str]: ...

    def assemble(self, box_texts: Sequence[str], labels: Sequence[str]) -> str: ...

    def render(
        self, boxes: np.ndarray, labels: Sequence[str], width: int, height: int, input_size=None, dataset: str = "COCO"
    ) -> str: ...

    def render_region(self, box: np.ndarray, width: int, height: int, input_size=None) -> str: ...

    def parse(self, text: str, width: int, height: int, input_size=None, categories=None) -> ParseResult: ...


# Every pattern below is linear: no quantified group can match the same text in two ways, and a failed attempt
# scans a bounded stretch (runs inside a corner or an object are bounded, and no run before a required character
# crosses the character that starts the next attempt), so nothing backtracks super-linearly. Python 3.10 has no
# possessive quantifiers to lean on.
RUN = 32  # the most spaces or digits in a row inside a corner: "(1,   2)" yes, a 40-digit coordinate no


def up_to(chars: str, most: int, least: int = 0) -> str:
    """A run of ``least`` to ``most`` of ``chars`` (a regex class)."""
    return chars + "{" + f"{least},{most}" + "}"


SPACE = up_to(r"\s", RUN)
NUM = "-?" + up_to(r"\d", RUN, 1) + r"(?:\." + up_to(r"\d", RUN, 1) + ")?"
SEP = rf"{SPACE}(?:,{SPACE})?"  # between the two corners of a box, and between boxes
END_OF_TURN_RE = re.compile(r"<\|(?:im_end|endoftext)\|>")

_NO_OBJECTS_HEAD, _NO_OBJECTS_TAIL = (" ".join(part.lower().split()) for part in NO_OBJECTS.rstrip(".").split("{dataset}"))
_MAX_DATASET_NAME = 100


def _empty_core(text: str) -> str:
    """The answer without end-of-turn tokens and code fences, its spaces collapsed, lower case."""
    words = " ".join(END_OF_TURN_RE.sub(" ", text).split()).lower()
    return words.removeprefix("```json").removeprefix("```").removesuffix("```").strip()


def says_no_objects(text: str) -> bool:
    """Whether an answer says there is nothing to find (an empty list or the NO_OBJECTS sentence), as opposed to saying
    nothing at all (empty text, only end tokens or fences) or something else."""
    return bool(_empty_core(text)) and is_clean_empty(text)


def is_clean_empty(text: str) -> bool:
    """Empty text, an empty list (fences allowed) or the NO_OBJECTS sentence with any data set name."""
    core = _empty_core(text)
    if core.replace(" ", "") in ("", "[]"):
        return True
    core = core.rstrip(". ")
    head, tail = _NO_OBJECTS_HEAD + " ", " " + _NO_OBJECTS_TAIL
    return core.startswith(head) and core.endswith(tail) and 0 < len(core) - len(head) - len(tail) <= _MAX_DATASET_NAME


def finish(
    numbers: list, labels: list[str], spans: list[tuple[int, int]], unparsed: int, scale: np.ndarray, width, height,
    categories, text: str,
) -> ParseResult:
    """Scale raw coordinates to original pixels, clamp, drop empty boxes, map labels to categories."""
    raw = np.array(numbers, dtype=np.float64).reshape(-1, 4)
    if len(raw) == 0 and unparsed == 0 and not is_clean_empty(text):
        unparsed = 1  # an answer in no readable format
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = B.clip(np.nan_to_num(raw * scale, nan=0.0), width, height)
    keep = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
    kept_labels = [label for label, k in zip(labels, keep) if k]
    unknown: list[str] = []
    if categories is not None:
        canonical = {normalize_label(c): c for c in categories}
        mapped = []
        for label in kept_labels:
            if label in canonical:
                mapped.append(canonical[label])
            else:
                mapped.append(label)
                if label not in unknown:
                    unknown.append(label)
        kept_labels = mapped
    kept_spans = [span for span, k in zip(spans, keep) if k]
    return ParseResult(pixels[keep], kept_labels, unparsed, int((~keep).sum()), unknown, kept_spans)


class Format:
    """Rendering shared by all formats: ``box_texts`` (vectorised) and ``assemble`` are per format."""

    name = ""
    needs_input_size = False

    def box_texts(self, boxes, widths, heights, input_sizes=None) -> list[str]:
        raise NotImplementedError

    def assemble(self, box_texts: Sequence[str], labels: Sequence[str]) -> str:
        raise NotImplementedError

    def render(self, boxes, labels, width, height, input_size=None, dataset="COCO") -> str:
        """Objects to target text: grouped by label in order of first appearance, boxes in reading order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return NO_OBJECTS.format(dataset=dataset)
        rank = {label: k for k, label in enumerate(dict.fromkeys(labels))}
        reading = np.empty(len(boxes), dtype=np.int64)
        reading[B.reading_order(boxes)] = np.arange(len(boxes))
        order = np.lexsort((reading, [rank[label] for label in labels]))
        texts = self.box_texts(boxes[order], width, height, input_size)
        return self.assemble(texts, [labels[i] for i in order])

    def render_region(self, box, width, height, input_size=None) -> str:
        """One region as it appears inside a sentence."""
        return self.box_texts(np.asarray(box, dtype=np.float64)[None], width, height, input_size)[0]
