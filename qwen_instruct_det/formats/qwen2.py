"""``qwen2``: Qwen2-VL grounding tokens on the 0-1000 grid, rendered and read back.

When the answer carries the tokens, a label is exactly the text between
``<|object_ref_start|>`` and ``<|object_ref_end|>``; the ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``
boxes after it, up to the next ref, take it (a box before any ref has the label ""), and prose
around them is ignored. A ref with no box and a box token that does not hold one box are
unparsed. Without tokens (what decoding with ``skip_special_tokens=True`` leaves:
``person(531,61),(771,896)``), a run of boxes takes the text before it as its label (or keeps
the previous one when there is no text); with ``categories``, the longest known name ending
there is read whole, even one that ends in coordinates such as ``box (1,2)``, so that no box is
made of a label's digits. Broken box material (``(3,``, a lone corner, a box cut off at the end)
is unparsed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .. import boxes as B
from .base import (
    BOX_END,
    BOX_START,
    NUM,
    OBJECT_REF_END,
    OBJECT_REF_START,
    QUOTES,
    SEP,
    SPACE,
    Format,
    ParseResult,
    finish,
    normalize_label,
)

_PAIR = rf"\({SPACE}{NUM}{SPACE},{SPACE}{NUM}{SPACE}\)"  # one corner "(x,y)"
_NUMBERS_RE = re.compile(r"[-\d][\d.]*", re.ASCII)  # the numbers of text already matched as corners or objects (fast)
_BOX_RE = re.compile(rf"{SPACE}({_PAIR}{SEP}{_PAIR}){SPACE}", re.ASCII)  # all of a box token's content
_BOX_TOKEN = rf"box_start\|>{SPACE}{_PAIR}{SEP}{_PAIR}{SPACE}<\|box_end\|>"
_CHAIN_RE = re.compile(rf"{_PAIR}(?:{SEP}{_PAIR})+", re.ASCII)  # a run of two or more corners
_SEP_RE = re.compile(SEP, re.ASCII)
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
_LEAD_TRIM = " \t\r\n,;:.-" + QUOTES  # before a label: the end of the previous box, list bullets
_TRAIL_SEPARATORS = " \t\r\n,;:"  # between a label and its boxes; '.' and '-' may end a class name ("No.")
_TRAIL_TRIM = _TRAIL_SEPARATORS + QUOTES

class _KnownNames:
    """The categories' canonical names, to find the one that ends right before a run of boxes in stripped qwen2 text."""

    def __init__(self, categories: Sequence[str]):
        self.names = {normalize_label(c) for c in categories} - {""}
        longest = max(map(len, self.names))
        self.window = 2 * longest + 16  # raw text may hold extra spaces and quotes
        self.first = {n[0] for n in self.names} | set(QUOTES)
        self.last = {n[-1] for n in self.names} | set(QUOTES)
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


class Qwen2Format(Format):
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
        return finish(*_boxes_in_runs(plain, runs), unparsed, scale, width, height, categories, text)
