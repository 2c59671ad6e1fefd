"""Box formats: how objects become target text, and how model text becomes objects again.

A format is one small object with ``render`` (objects -> text), ``render_region`` (one box
-> the text that names it inside a sentence) and ``parse`` (text -> :class:`ParseResult`),
registered by name. ``render`` is strict (it is fed our own data). ``parse`` never raises on
model text and runs in linear time: its scanners are regexes with no nested or adjacent
quantifiers over the same characters (nothing backtracks super-linearly, and Python 3.10
needs no possessive quantifiers) and nothing recurses. It returns what it could read and
counts what it could not.

- ``qwen2``: Qwen2-VL grounding tokens on the 0-1000 grid. When the answer carries them, a
  label is exactly the text between ``<|object_ref_start|>`` and ``<|object_ref_end|>``;
  the ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` boxes after it, up to the next ref, take
  it (a box before any ref has the label ""), and prose around them is ignored. A ref with
  no box and a box token that does not hold one box are unparsed. Without tokens (what
  decoding with ``skip_special_tokens=True`` leaves: ``person(531,61),(771,896)``), a run of
  boxes takes the text before it as its label (or keeps the previous one when there is no
  text); with ``categories``, the longest known name ending there is read whole, even one
  that ends in coordinates such as ``box (1,2)``, so that no box is made of a label's
  digits. Broken box material (``(3,``, a lone corner, a box cut off at the end) is unparsed.
- ``qwen2_5``: Qwen2.5-VL JSON ``[{"bbox_2d": [...], "label": ...}]`` in pixels of the
  image as the processor resized it (``input_size``).
- ``qwen3``: Qwen3-VL, the same JSON on the 0-1000 grid.
  JSON answers are read object by object, so code fences, prose around them, Python-style
  quotes and a last object cut off by ``max_new_tokens`` do not hide the complete objects;
  ``bbox`` is read for ``bbox_2d``. An object needs both a box of four numbers and a label.

``unparsed`` counts what looked like a box or an object but could not be read. An answer in
no readable format counts as unparsed (at least 1), unless it is a clean empty answer:
empty text, an empty list ``[]`` (code fences allowed), or the :data:`NO_OBJECTS` sentence
with any data set name (compared case-insensitively with spaces collapsed, the final period
optional, nothing else in the answer).
"""

from __future__ import annotations

import json
import math
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


# Every pattern below is linear: no quantified group can match the same text in two ways, and a failed attempt
# scans a bounded stretch (runs inside a corner or an object are bounded, and no run before a required character
# crosses the character that starts the next attempt), so nothing backtracks super-linearly. Python 3.10 has no
# possessive quantifiers to lean on.
_RUN = 32  # the most spaces or digits in a row inside a corner: "(1,   2)" yes, a 40-digit coordinate no


def _up_to(chars: str, most: int, least: int = 0) -> str:
    """A run of ``least`` to ``most`` of ``chars`` (a regex class)."""
    return chars + "{" + f"{least},{most}" + "}"


_SPACE = _up_to(r"\s", _RUN)
_NUM = "-?" + _up_to(r"\d", _RUN, 1) + r"(?:\." + _up_to(r"\d", _RUN, 1) + ")?"
_PAIR = rf"\({_SPACE}{_NUM}{_SPACE},{_SPACE}{_NUM}{_SPACE}\)"  # one corner "(x,y)"
_SEP = rf"{_SPACE}(?:,{_SPACE})?"  # between the two corners of a box, and between boxes
_NUMBERS_RE = re.compile(r"[-\d][\d.]*", re.ASCII)  # the numbers of text already matched as corners or objects (fast)
_BOX_RE = re.compile(rf"{_SPACE}({_PAIR}{_SEP}{_PAIR}){_SPACE}", re.ASCII)  # all of a box token's content
_BOX_TOKEN = rf"box_start\|>{_SPACE}{_PAIR}{_SEP}{_PAIR}{_SPACE}<\|box_end\|>"
_CHAIN_RE = re.compile(rf"{_PAIR}(?:{_SEP}{_PAIR})+", re.ASCII)  # a run of two or more corners
_SEP_RE = re.compile(_SEP, re.ASCII)
# Broken box material: "(" and a number, then coordinate characters with at least one comma ("(3,", "(1,2),(3,4,5)").
# "(2)" in "item (2)" has no comma and stays label text.
_FRAGMENT = r"\(\s*-?\d[\d\s.)\-]*,[\d\s.,()\-]*"
_FRAGMENT_RE = re.compile(_FRAGMENT, re.ASCII)
_UP_TO_LAST_FRAGMENT_RE = re.compile(".*" + _FRAGMENT, re.ASCII | re.DOTALL)
_PARTIAL_RE = re.compile(r"\([\d\s.\-]*(?:,[\d\s.\-]*)?", re.ASCII)  # a corner cut off by the end of the text
_GROUNDING_RE = re.compile(r"<\|(object_ref_start|object_ref_end|box_start|box_end)\|>")
# A ref and the well-formed box tokens after it, or well-formed box tokens, or else one grounding token (read by
# the slower path). Runs of boxes are matched whole, so that a long answer costs few matches.
_UNIT_RE = re.compile(
    rf"<\|(?:object_ref_start\|>(?P<label>[^<]*)<\|object_ref_end\|>(?P<boxes>(?:<\|{_BOX_TOKEN})*)"
    rf"|(?P<run>{_BOX_TOKEN}(?:<\|{_BOX_TOKEN})*)|(?P<mark>object_ref_start|object_ref_end|box_start|box_end)\|>)",
    re.ASCII,
)
_OTHER_SPECIAL_RE = re.compile(r"<\|(?!(?:object_ref_start|object_ref_end|box_start|box_end)\|>)[a-z_]+\|>")
_END_OF_TURN_RE = re.compile(r"<\|(?:im_end|endoftext)\|>")
_LEAD_TRIM = " \t\r\n,;:.-" + _QUOTES  # before a label: the end of the previous box, list bullets
_TRAIL_SEPARATORS = " \t\r\n,;:"  # between a label and its boxes; '.' and '-' may end a class name ("No.")
_TRAIL_TRIM = _TRAIL_SEPARATORS + _QUOTES

# JSON text: strings in either quote style; an object is flat (strings, scalars, lists of scalars such as the box).
_LONG = 4096  # the longest run of plain text or of string content inside one object
_PLAIN_RUN = _up_to(r"""[^{}\[\]"']""", _LONG)
_DOUBLE, _SINGLE = (_up_to(r"[^" + q + r"\\]", _LONG) for q in "\"'")
_STRING = rf""""{_DOUBLE}(?:\\.{_DOUBLE})*"|'{_SINGLE}(?:\\.{_SINGLE})*'"""
_LIST = r"\[" + _up_to(r"""[^\[\]{}"']""", _LONG) + r"\]"


def _canonical(capture: bool) -> str:
    """The object the formats render, {"bbox_2d": [x1, y1, x2, y2], "label": "name"}, after its "{"."""
    group, space = ("(" if capture else "(?:"), _SPACE
    num = group + _NUM + ")"
    label = group + _up_to(r'[^{}"\\]', _LONG) + ")"  # no escapes and no braces: the raw text is the label
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
    r"\{(?<!\{\{)(?=(?P<more>\{*))(?P=more)(?:(?P<run>" + _canonical(capture=False) + "(?:" + _SEP + r"\{" + _canonical(capture=False) + ")*)"
    + r"|(?P<body>" + _PLAIN_RUN + "(?:(?:" + _STRING + "|" + _LIST + ")" + _PLAIN_RUN + r")*\}))",
    re.ASCII | re.DOTALL,
)
_BRACE_RUN_RE = re.compile(r"\{+")
_LOOSE_TOKEN_RE = re.compile(rf"""\s*(?:({_STRING})|({_LIST})|([^\s"'\[\]{{}}:,]+)|(.))""", re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_JSON = json.JSONDecoder()

_NO_OBJECTS_HEAD, _NO_OBJECTS_TAIL = (" ".join(part.lower().split()) for part in NO_OBJECTS.rstrip(".").split("{dataset}"))
_MAX_DATASET_NAME = 100


def _empty_core(text: str) -> str:
    """The answer without end-of-turn tokens and code fences, its spaces collapsed, lower case."""
    words = " ".join(_END_OF_TURN_RE.sub(" ", text).split()).lower()
    return words.removeprefix("```json").removeprefix("```").removesuffix("```").strip()


def says_no_objects(text: str) -> bool:
    """Whether an answer says there is nothing to find (an empty list or the NO_OBJECTS sentence), as opposed to saying
    nothing at all (empty text, only end tokens or fences) or something else."""
    return bool(_empty_core(text)) and _is_clean_empty(text)


def _is_clean_empty(text: str) -> bool:
    """Empty text, an empty list (fences allowed) or the NO_OBJECTS sentence with any data set name."""
    core = _empty_core(text)
    if core.replace(" ", "") in ("", "[]"):
        return True
    core = core.rstrip(". ")
    head, tail = _NO_OBJECTS_HEAD + " ", " " + _NO_OBJECTS_TAIL
    return core.startswith(head) and core.endswith(tail) and 0 < len(core) - len(head) - len(tail) <= _MAX_DATASET_NAME


def _finish(
    numbers: list, labels: list[str], spans: list[tuple[int, int]], unparsed: int, scale: np.ndarray, width, height,
    categories, text: str,
) -> ParseResult:
    """Scale raw coordinates to original pixels, clamp, drop empty boxes, map labels to categories."""
    raw = np.array(numbers, dtype=np.float64).reshape(-1, 4)
    if len(raw) == 0 and unparsed == 0 and not _is_clean_empty(text):
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


class _KnownNames:
    """The categories' canonical names, to find the one that ends right before a run of boxes in stripped qwen2 text."""

    def __init__(self, categories: Sequence[str]):
        self.names = {normalize_label(c) for c in categories} - {""}
        longest = max(map(len, self.names))
        self.window = 2 * longest + 16  # raw text may hold extra spaces and quotes
        self.first = {n[0] for n in self.names} | set(_QUOTES)
        self.last = {n[-1] for n in self.names} | set(_QUOTES)
        self.shortest = min(map(len, self.names))
        self.max_pairs = max(n.count("(") for n in self.names)  # how many corners a name can end with
        self.tails = set()  # what names end with from one of their "(" on: "(1,2)" for "box (1,2)"
        for name in self.names:
            cut = len(name)
            for _ in range(name.count("(")):
                cut = name.rfind("(", 0, cut)
                self.tails.add(name[cut:])
        self._seen: dict[tuple[str, bool], tuple[str, int] | None] = {}

    @classmethod
    def of(cls, categories) -> _KnownNames | None:
        """The matcher for ``categories``, or None when there are none."""
        names = [c for c in categories or () if isinstance(c, str) and normalize_label(c)]
        return cls(names) if names else None

    def split(self, plain: str, prev: int, start: int, run: str) -> tuple[int, str, int] | None:
        """For a run of corners at ``start``: (its leading corners that belong to the label, the label, where it starts)."""
        w0 = max(prev, start - self.window)
        bounded = w0 == prev or not plain[w0 - 1].isalnum()
        total, hits, stop = run.count("("), [], start
        for j in range(min(self.max_pairs, total) + 1):
            if j:
                stop = plain.find(")", stop) + 1
                if normalize_label(plain[start:stop]) not in self.tails:
                    continue  # no name ends with these corners
            hit = self._suffix(plain[w0:stop], bounded)
            if hit is not None:
                hits.append((j, hit[0], w0 + hit[1]))
        # A reading that leaves whole boxes after the label comes first ("box (1,2)(10,20),(30,40)").
        hits.sort(key=lambda h: ((total - h[0]) % 2, h[0]))
        return hits[0] if hits else None

    def _suffix(self, text: str, bounded: bool) -> tuple[str, int] | None:
        """The longest known name that ends ``text`` and starts at a word boundary: (name, its start in text)."""
        key = (text, bounded)
        if key not in self._seen:
            found = None
            end = len(text.rstrip(_TRAIL_SEPARATORS))  # quotes stay: normalize_label strips them
            if end and text[end - 1].lower() in self.last:
                for i in range(end - self.shortest + 1):
                    if (i == 0 and not bounded) or (i > 0 and text[i - 1].isalnum()) or text[i].lower() not in self.first:
                        continue
                    name = normalize_label(text[i:end])
                    if name in self.names:
                        found = (name, i)
                        break
            self._seen[key] = found
        return self._seen[key]


def _last_fragment_end(plain: str, start: int, stop: int) -> int:
    """End of the last piece of broken box material in ``plain[start:stop]`` (``start`` if there is none)."""
    match = _UP_TO_LAST_FRAGMENT_RE.match(plain, start, stop)
    return match.end() if match else start


def _boxes_in_runs(plain: str, runs: list[tuple[int, int, int, str]]) -> tuple[np.ndarray | list, list[str], list]:
    """Numbers, labels and spans of the boxes in matched runs of corners ``(start, end, corners to skip, label)``.

    One vectorised pass for all runs: corner i of the text is ``plain[opens[i]:closes[i]]``, and the numbers of the
    runs, read in one go, come two per corner."""
    if not runs:
        return [], [], []
    starts, ends, skips = (np.array(column, dtype=np.int64) for column in list(zip(*runs))[:3])
    codes = np.frombuffer(plain.encode("utf-32-le"), dtype=np.uint32)
    opens, closes = np.flatnonzero(codes == ord("(")), np.flatnonzero(codes == ord(")")) + 1
    first, first_close = np.searchsorted(opens, starts), np.searchsorted(closes, starts, side="right")
    corners = np.searchsorted(opens, ends) - first  # per run
    counts = (corners - skips) // 2  # boxes per run
    run = np.repeat(np.arange(len(runs)), counts)
    step = 2 * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) + skips[run]  # corner in its run
    values = np.array(_NUMBERS_RE.findall("\0".join(plain[a:b] for a, b, *_ in runs)), dtype=np.float64).reshape(-1, 2)
    corner = (np.cumsum(corners) - corners)[run] + step  # first corner of each box among the runs' corners
    numbers = np.concatenate([values[corner], values[corner + 1]], axis=1)
    spans = list(zip(opens[first[run] + step].tolist(), closes[first_close[run] + step + 1].tolist()))
    return numbers, np.array([r[3] for r in runs], dtype=object).repeat(counts).tolist(), spans


def _read_grounded(text: str, plain: str) -> tuple[list[tuple[int, int, int, str]], int]:
    """Runs of box tokens, each labelled by the last ref before it, and the unparsed count; prose is ignored."""
    runs: list[tuple[int, int, int, str]] = []
    unparsed, label, waiting = 0, "", False  # waiting: a ref that has had no box yet
    units = list(_UNIT_RE.finditer(text))
    for unit, following in zip(units, units[1:] + [None]):
        mark = unit["mark"]
        if mark is None:
            start = unit.start("run")
            if unit["label"] is not None:
                unparsed += waiting
                label, waiting, start = normalize_label(unit["label"]), True, unit.start("boxes")
            if unit.end() > start:
                waiting = False
                runs.append((start, unit.end(), 0, label))
        elif mark in ("object_ref_start", "box_start"):  # cut off, or holding something unusual: read up to the next token
            stop = following.start() if following is not None else len(text)
            if mark == "object_ref_start":
                unparsed += waiting
                label, waiting = normalize_label(plain[unit.end() : stop]), True
                continue
            waiting = False
            box = _BOX_RE.fullmatch(plain, unit.end(), stop)
            if box is None:
                unparsed += 1
            else:
                runs.append((*box.span(1), 0, label))
    return runs, unparsed + waiting


def _read_stripped(plain: str, known: _KnownNames | None) -> tuple[list[tuple[int, int, int, str]], int]:
    """Runs of corners, each labelled by the text before it (a known name when there is one), and the unparsed count."""
    runs: list[tuple[int, int, int, str]] = []
    unparsed, label, prev, leftover = 0, "", 0, 0
    for run in _CHAIN_RE.finditer(plain):
        start, end = run.span()
        hit = known.split(plain, prev, start, run.group()) if known is not None else None
        if hit is not None:
            skip, label, label_start = hit
        else:
            skip, label_start = 0, _last_fragment_end(plain, prev, start)
            label = normalize_label(plain[label_start:start].lstrip(_LEAD_TRIM).rstrip(_TRAIL_TRIM)) or label
        unparsed += len(_FRAGMENT_RE.findall(plain, prev, min(label_start, start)))
        runs.append((start, end, skip, label))
        leftover = (plain.count("(", start, end) - skip) % 2
        unparsed += leftover  # a corner with no partner: a box cut off or malformed
        prev = end
    return runs, unparsed + _tail_unparsed(plain, prev, bool(leftover))


def _tail_unparsed(plain: str, start: int, after_leftover: bool) -> int:
    """Broken box material after the last run of boxes, a pair cut off at the very end included."""
    count = len(_FRAGMENT_RE.findall(plain, start))
    cut = plain.rfind("(", _last_fragment_end(plain, start, len(plain)))
    if cut >= start and _PARTIAL_RE.fullmatch(plain, cut):
        count += 1
    lead = _SEP_RE.match(plain, start).end()
    if after_leftover and count and (_FRAGMENT_RE.match(plain, lead) or _PARTIAL_RE.fullmatch(plain, lead)):
        count -= 1  # the rest of the box whose first corner ended the last run
    return count


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
        plain = _OTHER_SPECIAL_RE.sub(lambda m: " " * len(m.group()), text)  # <|im_end|> and such: spaces, same offsets
        grounded = _GROUNDING_RE.search(text) is not None
        runs, unparsed = _read_grounded(text, plain) if grounded else _read_stripped(plain, _KnownNames.of(categories))
        scale = 1.0 / B.GRID * np.array([width, height, width, height], dtype=np.float64)
        return _finish(*_boxes_in_runs(plain, runs), unparsed, scale, width, height, categories, text)


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
        scale = self._scale(width, height, input_size)
        return _finish(*_read_json(text), scale, width, height, categories, text)


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
