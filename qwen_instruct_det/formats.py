"""Box formats: how objects become target text, and how model text becomes objects again.

A format is one small object with ``render`` (objects -> text), ``render_region`` (one box
-> the text that names it inside a sentence) and ``parse`` (text -> :class:`ParseResult`),
registered by name. ``render`` is strict (it is fed our own data); ``parse`` never raises
on model text: it returns what it could read and counts what it could not.

- ``qwen2``: Qwen2-VL grounding tokens on the 0-1000 grid; also reads what decoding with
  ``skip_special_tokens=True`` leaves (``person(531,61),(771,896)``).
- ``qwen2_5``: Qwen2.5-VL JSON ``[{"bbox_2d": [...], "label": ...}]`` in pixels of the
  image as the processor resized it (``input_size``).
- ``qwen3``: Qwen3-VL, the same JSON on the 0-1000 grid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import boxes as B

OBJECT_REF_START, OBJECT_REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
NO_OBJECTS = "There are no objects from the {dataset} categories in the image."

_QUOTES = "\"'`“”‘’"


def normalize_label(label: str) -> str:
    """Canonical form of a label: surrounding spaces and quotes removed, lower case, single spaces."""
    text = " ".join(str(label).split())
    while text and (text[0] in _QUOTES or text[-1] in _QUOTES):
        text = text.strip(_QUOTES).strip()
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


_NUM = r"-?\d+(?:\.\d+)?"
_QWEN2_BOX = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_QWEN2_FRAGMENT = re.compile(r"\(\s*-?\d[\d\s.,()\-]*")
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_LABEL_TRIM = " \t\r\n,;:.-" + _QUOTES


def _finish(
    grid_or_pixels: list[list[float]], labels: list[str], unparsed: int, scale: np.ndarray, width, height, categories,
    spans: list[tuple[int, int]],
) -> ParseResult:
    """Scale raw coordinates to original pixels, clamp, drop empty boxes, map labels to categories."""
    raw = np.asarray(grid_or_pixels, dtype=np.float64).reshape(-1, 4)
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


class _Format:
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


class Qwen2Format(_Format):
    """Qwen2-VL: ``<|object_ref_start|>NAME<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``."""

    name = "qwen2"
    needs_input_size = False

    def box_texts(self, boxes, widths, heights, input_sizes=None) -> list[str]:
        grid = B.to_grid(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), widths, heights).tolist()
        return [f"{BOX_START}({a},{b}),({c},{d}){BOX_END}" for a, b, c, d in grid]

    def assemble(self, box_texts: Sequence[str], labels: Sequence[str]) -> str:
        parts: list[str] = []
        previous = None
        for text, label in zip(box_texts, labels):
            if label != previous:
                parts.append(f"{OBJECT_REF_START}{label}{OBJECT_REF_END}")
                previous = label
            parts.append(text)
        return "".join(parts)

    def parse(self, text, width, height, input_size=None, categories=None) -> ParseResult:
        text = str(text)
        plain = _SPECIAL.sub(lambda m: " " * len(m.group()), text)  # same offsets as the text
        coords: list[list[float]] = []
        spans: list[tuple[int, int]] = []
        labels: list[str] = []
        label = ""
        last_end = 0
        leftovers: list[str] = []
        for match in _QWEN2_BOX.finditer(plain):
            between = plain[last_end : match.start()]
            fragment_free = _QWEN2_FRAGMENT.sub(lambda m: leftovers.append(m.group()) or " ", between)
            candidate = normalize_label(fragment_free.strip(_LABEL_TRIM))
            if candidate:
                label = candidate
            coords.append([float(v) for v in match.groups()])
            spans.append(match.span())
            labels.append(label)
            last_end = match.end()
        _QWEN2_FRAGMENT.sub(lambda m: leftovers.append(m.group()) or " ", plain[last_end:])
        scale = 1.0 / B.GRID * np.array([width, height, width, height], dtype=np.float64)
        return _finish(coords, labels, len(leftovers), scale, width, height, categories, spans)


class _JsonFormat(_Format):
    """Shared JSON rendering and lenient parsing for Qwen2.5-VL and Qwen3-VL."""

    def _scale(self, width, height, input_size) -> np.ndarray:
        raise NotImplementedError

    def _coords(self, boxes, width, height, input_size) -> np.ndarray:
        raise NotImplementedError

    def box_texts(self, boxes, widths, heights, input_sizes=None) -> list[str]:
        coords = self._coords(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), widths, heights, input_sizes)
        return [f"[{a}, {b}, {c}, {d}]" for a, b, c, d in coords.tolist()]

    def assemble(self, box_texts: Sequence[str], labels: Sequence[str]) -> str:
        items = [f'{{"bbox_2d": {text}, "label": {json.dumps(label, ensure_ascii=False)}}}' for text, label in zip(box_texts, labels)]
        return "[" + ", ".join(items) + "]"

    def parse(self, text, width, height, input_size=None, categories=None) -> ParseResult:
        text = str(text)
        decoder = json.JSONDecoder()
        coords: list[list[float]] = []
        spans: list[tuple[int, int]] = []
        labels: list[str] = []
        unparsed = 0
        pos = text.find("{")
        while pos != -1:
            try:
                item, end = decoder.raw_decode(text, pos)
            except ValueError:
                unparsed += 1  # a truncated or malformed object
                pos = text.find("{", pos + 1)
                continue
            box = item.get("bbox_2d", item.get("bbox")) if isinstance(item, dict) else None
            try:
                values = [float(v) for v in box]
                if len(values) != 4 or not np.all(np.isfinite(values)):
                    raise ValueError
            except (TypeError, ValueError):
                unparsed += 1
            else:
                coords.append(values)
                spans.append((pos, end))
                labels.append(normalize_label(item.get("label", "")))
            pos = text.find("{", end)
        return _finish(coords, labels, unparsed, self._scale(width, height, input_size), width, height, categories, spans)


class Qwen2_5Format(_JsonFormat):
    """Qwen2.5-VL: JSON boxes in absolute pixels of the processor-resized image."""

    name = "qwen2_5"
    needs_input_size = True

    @staticmethod
    def _input_sizes(input_size) -> np.ndarray:
        if input_size is None:
            raise ValueError(
                "box format 'qwen2_5' needs input_size=(width, height), the image size after the processor's "
                "resize (qwen_instruct_det.boxes.smart_resize gives it from min_pixels/max_pixels)."
            )
        return np.asarray(input_size, dtype=np.float64).reshape(-1, 2)

    def _scale(self, width, height, input_size):
        (in_w, in_h), = self._input_sizes(input_size)
        return np.array([width / in_w, height / in_h, width / in_w, height / in_h])

    def _coords(self, boxes, widths, heights, input_sizes):
        sizes = self._input_sizes(input_sizes)
        in_w, in_h = sizes[:, 0], sizes[:, 1]
        w = np.asarray(widths, dtype=np.float64)
        h = np.asarray(heights, dtype=np.float64)
        scaled = boxes * np.stack([in_w / w, in_h / h, in_w / w, in_h / h], axis=-1)
        limit = np.stack([in_w, in_h, in_w, in_h], axis=-1)
        return np.clip(np.floor(scaled + 0.5), 0, limit).astype(np.int64)


class Qwen3Format(_JsonFormat):
    """Qwen3-VL: JSON boxes on the 0-1000 grid."""

    name = "qwen3"

    def _scale(self, width, height, input_size):
        return 1.0 / B.GRID * np.array([width, height, width, height], dtype=np.float64)

    def _coords(self, boxes, width, height, input_size):
        return B.to_grid(boxes, width, height)


BOX_FORMATS: dict[str, BoxFormat] = {f.name: f for f in (Qwen2Format(), Qwen2_5Format(), Qwen3Format())}


def get_box_format(name: str) -> BoxFormat:
    """The registered box format called ``name``."""
    try:
        return BOX_FORMATS[name]
    except KeyError:
        raise ValueError(f"Unknown box format {name!r}; choose one of {sorted(BOX_FORMATS)}.") from None


def parse_detections(
    text: str, *, width: int, height: int, box_format: str = "qwen2", input_size=None, categories=None
) -> dict:
    """Model text to ``{"boxes", "labels", "unparsed", "dropped", "unknown_labels"}`` in original pixels."""
    return get_box_format(box_format).parse(text, width, height, input_size, categories).to_dict()
