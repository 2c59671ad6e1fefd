"""The JSON answers of Qwen2.5-VL and Qwen3-VL, ``[{"bbox_2d": [x1, y1, x2, y2], "label": "name"}]``: rendering and lenient reading.

Answers are read object by object, so code fences, prose around them, Python-style quotes and
a last object cut off by ``max_new_tokens`` do not hide the complete objects; ``bbox`` is read
for ``bbox_2d``. An object needs both a box of four numbers and a label. What the numbers mean
is each format's own (``qwen2_5``: pixels of the resized image; ``qwen3``: the 0-1000 grid).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np

from .base import NUM, SEP, SPACE, Format, ParseResult, finish, normalize_label, up_to

# JSON text: strings in either quote style; an object is flat (strings, scalars, lists of scalars such as the box).
_LONG = 4096  # the longest run of plain text or of string content inside one object
_PLAIN_RUN = up_to(r"""[^{}\[\]"']""", _LONG)
_DOUBLE, _SINGLE = (up_to(r"[^" + q + r"\\]", _LONG) for q in "\"'")
_STRING = rf""""{_DOUBLE}(?:\\.{_DOUBLE})*"|'{_SINGLE}(?:\\.{_SINGLE})*'"""
_LIST = r"\[" + up_to(r"""[^\[\]{}"']""", _LONG) + r"\]"


def _canonical(capture: bool) -> str:
    """The object the formats render, {"bbox_2d": [x1, y1, x2, y2], "label": "name"}, after its "{"."""
    group, space = ("(" if capture else "(?:"), SPACE
    num = group + NUM + ")"
    label = group + up_to(r'[^{}"\\]', _LONG) + ")"  # no escapes and no braces: the raw text is the label
    return (
        space + '"bbox_2d"' + space + ":" + space + r"\[" + space + num + space + "," + space + num + space + "," + space + num
        + space + "," + space + num + space + r"\]" + space + "," + space + '"label"' + space + ":" + space + '"' + label + '"'
        + space + r"\}"
    )


_CANONICAL_RE = re.compile(r"\{" + _canonical(capture=True), re.ASCII | re.DOTALL)  # x1, y1, x2, y2, label
# At the first "{" of a run of braces: a run of canonical objects (the fast path), or the flat object that the last
# brace opens. The pattern starts with a literal "{" so that the search jumps from brace to brace; the lookbehind
# makes every other brace of a run fail at once, and the rest of the run is taken atomically (a lookahead captures
# it, a backreference consumes it: nothing to backtrack into), so a run is scanned once.
_OBJECT_RE = re.compile(
    r"\{(?<!\{\{)(?=(?P<more>\{*))(?P=more)(?:(?P<run>" + _canonical(capture=False) + "(?:" + SEP + r"\{" + _canonical(capture=False) + ")*)"
    + r"|(?P<body>" + _PLAIN_RUN + "(?:(?:" + _STRING + "|" + _LIST + ")" + _PLAIN_RUN + r")*\}))",
    re.ASCII | re.DOTALL,
)
_BRACE_RUN_RE = re.compile(r"\{+")
_LOOSE_TOKEN_RE = re.compile(rf"""\s*(?:({_STRING})|({_LIST})|([^\s"'\[\]{{}}:,]+)|(.))""", re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_JSON = json.JSONDecoder()

def _unquote(token: str) -> str:
    """The text of a string token in JSON or Python quotes."""
    if token[0] == '"':
        try:
            return json.loads(token)
        except ValueError:
            pass
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


def _loose_object(obj: str) -> dict:
    """Keys and values of a flat object that is not JSON (Python quotes, trailing commas, bare words)."""
    tokens = _LOOSE_TOKEN_RE.findall(obj)  # (string, list, word, other) per token
    item: dict = {}
    for (key_str, _, key_word, _), (_, _, _, colon), (string, items, word, _) in zip(tokens, tokens[1:], tokens[2:]):
        if colon != ":" or not (key_str or key_word):
            continue
        if items:
            parts = items[1:-1].split(",")
            value = [p.strip() for p in (parts[:-1] if len(parts) > 1 and not parts[-1].strip() else parts)]
        else:
            value = _unquote(string) if string else word
        item.setdefault(_unquote(key_str) if key_str else key_word, value)
    return item


def _four_numbers(box) -> list[float] | None:
    """A box as four finite floats (numbers or numeric strings, not booleans), or None."""
    if type(box) is not list or len(box) != 4:
        return None
    try:
        values = [float(v) for v in box if type(v) is not bool]
    except (TypeError, ValueError, OverflowError):
        return None
    return values if len(values) == 4 and all(map(math.isfinite, values)) else None


def _read_json(text: str) -> tuple[list, list[str], list[tuple[int, int]], int]:
    """Numbers, labels and spans of every flat object with a box and a label, and the unparsed count (objects cut off,
    nested, not JSON, or missing the box or the label)."""
    numbers: list[float] = []
    labels: list[str] = []
    spans: list[tuple[int, int]] = []
    unparsed, prev = 0, 0
    seen: dict[str, str] = {}  # raw label -> normalised
    for match in _OBJECT_RE.finditer(text):
        unparsed += len(_BRACE_RUN_RE.findall(text, prev, match.start()))  # braces before it that open no readable object
        prev = match.end()
        if match["run"] is not None:
            opening, end = match.start("run") - 1, match.end()
            for *box, raw in _CANONICAL_RE.findall(text, opening, end):
                closing = text.find("}", opening) + 1  # labels here hold no braces
                label = seen[raw] if raw in seen else seen.setdefault(raw, normalize_label(raw))
                if label:
                    numbers.extend(box)
                    labels.append(label)
                    spans.append((opening, closing))
                else:
                    unparsed += 1
                opening = text.find("{", closing)
            continue
        start, end = match.start("body") - 1, match.end()
        try:
            item = _JSON.raw_decode(text[start:end])[0]  # on the slice: an error message costs its length only
        except ValueError:
            item = _loose_object(text[start:end])
        box, label = _four_numbers(item.get("bbox_2d", item.get("bbox"))), item.get("label")
        if type(label) is str:
            label = seen[label] if label in seen else seen.setdefault(label, normalize_label(label))
        if box is None or type(label) is not str or not label:
            unparsed += 1
            continue
        numbers.extend(box)
        labels.append(label)
        spans.append((start, end))
    return numbers, labels, spans, unparsed + len(_BRACE_RUN_RE.findall(text, prev))


class JsonFormat(Format):
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
        scale = self._scale(width, height, input_size)
        return finish(*_read_json(text), scale, width, height, categories, text)
