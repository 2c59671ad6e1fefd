"""Reading a COCO-format file strictly: the error type and the readers of its records.

Each reader checks one kind of record or column and raises :class:`CocoFormatError` naming the
file, the record and the fix; ``coco.py`` assembles them into an index. Nothing here knows about
images on disk, tasks or text.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from .. import boxes as B

try:  # optional: parses COCO-scale files about twice as fast as json
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A COCO-format file that cannot be used as it is; the message says where and what to do."""



def fail(path, what: str, fix: str) -> CocoFormatError:
    return CocoFormatError(f"{path}: {what}. {fix}")


def records(data: dict, key: str, path) -> list:
    if key not in data:
        raise fail(path, f"no top-level {key!r} list", f"A COCO-format file needs 'images', 'annotations' and 'categories'; add {key!r}.")
    records = data[key]
    if not isinstance(records, list):
        raise fail(path, f"top-level {key!r} is a {type(records).__name__}, not a list", "Fix the export.")
    return records


def column(records: list, key: str, kind: str, path, label: str):
    """Extract one key from every record; on a missing key name the first bad record."""
    try:
        return [r[key] for r in records]
    except (KeyError, TypeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict) or key not in r:
                ident = r.get("id", "?") if isinstance(r, dict) else "?"
                raise fail(path, f"{label} record #{i} (id {ident}) has no {key!r}", f"Every {label} record needs {key!r} ({kind}).") from None
        raise


def numeric(values: list, dtype, path, label: str, key: str, records: list) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        for i, v in enumerate(values):
            try:
                np.asarray(v, dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                ident = records[i].get("id", "?")
                whole = ", a whole one that fits in 64 bits" if np.dtype(dtype).kind in "iu" else ""
                raise fail(path, f"{label} record #{i} (id {ident}) has {key}={v!r}", f"{key!r} must be a number{whole}.") from None
        raise
    if out.dtype.kind in "iu":  # numpy truncates 1.5 to 1 without a word: an id must be a whole number
        raw = np.asarray(values)
        if raw.dtype.kind == "f" and (fractional := raw != np.floor(raw)).any():
            i = int(np.flatnonzero(fractional)[0])
            raise fail(path, f"{label} record #{i} (id {records[i].get('id', '?')}) has {key}={values[i]!r}",
                        f"{key!r} must be a whole number (an id, not a measure).")
    return out


def drop_placeholder(cat_ids: np.ndarray, cat_names: list[str], parents: list[str], cpos: np.ndarray):
    """Leave out a category that no annotation uses and that is the supercategory of every other one: Roboflow's exports
    list the data set itself that way (id 0). Kept, it would be a class in prompts and models that no box ever has."""
    used = np.bincount(cpos, minlength=len(cat_ids)) > 0
    children = Counter(parents)  # category name -> how many categories name it as their supercategory
    n = len(cat_names)
    drop = [k for k, name in enumerate(cat_names) if not used[k] and n > 1 and children[name] - (parents[k] == name) == n - 1]
    if not drop:
        return cat_ids, cat_names, cpos, []
    keep = np.ones(len(cat_ids), dtype=bool)
    keep[drop] = False
    return cat_ids[keep], [name for name, k in zip(cat_names, keep) if k], (np.cumsum(keep) - 1)[cpos], [cat_names[k] for k in drop]


def read_json(path: str | os.PathLike):
    """The parsed JSON file, with orjson when it is installed (about twice as fast on COCO's 190 MB file)."""
    raw = Path(path).read_bytes()
    try:
        if orjson is not None:
            return orjson.loads(raw)
        return json.loads(raw)
    except ValueError as e:  # json.JSONDecodeError and orjson.JSONDecodeError are both ValueErrors
        where = f" at line {e.lineno}, column {e.colno}" if hasattr(e, "lineno") else ""
        msg = getattr(e, "msg", str(e))
        raise fail(path, f"not valid JSON ({msg}{where})", "Re-export or re-download the file.") from None


def crowd_flags(anns: list, path) -> np.ndarray:
    """``iscrowd`` as COCO tools read it: missing or null is 0; 0/1 and booleans are taken; anything else is named."""
    values = [r.get("iscrowd") for r in anns]
    try:
        known = set(values) <= {0, 1, None}  # True == 1 and False == 0
    except TypeError:  # an unhashable value such as a list
        known = False
    if not known:
        for i, v in enumerate(values):
            if not (v is None or (isinstance(v, (bool, int)) and v in (0, 1))):
                raise fail(path, f"annotation record #{i} (id {anns[i].get('id', '?')}) has iscrowd={v!r}",
                            "iscrowd must be 0 or 1 (true/false; null or missing reads as 0); fix the export.")
    return np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))


def check_category_names(names: list[str], path) -> None:
    """Names appear in the model's text and are compared in canonical form, so two may not share one."""
    from ..formats import normalize_label

    seen: dict[str, str] = {}
    for name in names:
        key = normalize_label(name)
        if key in seen:
            raise fail(path, f"categories {seen[key]!r} and {name!r} have the same name once case, spaces and quotes are "
                        "ignored (answers are compared that way)", "Rename or merge one of them.")
        seen[key] = name


def clip_boxes(xywh: np.ndarray, widths: np.ndarray, heights: np.ndarray, crowd: np.ndarray, path):
    """Pixel xyxy boxes clipped to their image, the mask of boxes to keep, and counts of what was clipped or skipped.

    Non-crowd boxes with a negative width or height, fully outside the image, or under one pixel once
    clipped are skipped; crowd boxes of any size are kept (they still mark occupied space).
    """
    raw = B.xywh_to_xyxy(xywh)
    xyxy = B.clip(raw, widths, heights)
    negative = (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
    outside = ~negative & ((raw[:, 2] <= 0) | (raw[:, 3] <= 0) | (raw[:, 0] >= widths) | (raw[:, 1] >= heights))
    tiny = ~negative & ~outside & (((xyxy[:, 2] - xyxy[:, 0]) < 1.0) | ((xyxy[:, 3] - xyxy[:, 1]) < 1.0))
    clipped = ~negative & ~outside & ~tiny & np.any(raw != xyxy, axis=1)
    target = ~crowd
    skipped = {
        "sub_pixel_boxes": int(np.count_nonzero(tiny & target)),
        "outside_boxes": int(np.count_nonzero(outside & target)),
        "negative_size_boxes": int(np.count_nonzero(negative & target)),
        "clipped_boxes": int(np.count_nonzero(clipped & target)),
        "crowd_annotations": int(np.count_nonzero(crowd)),
    }
    for key in ("sub_pixel_boxes", "outside_boxes", "negative_size_boxes", "clipped_boxes"):
        if skipped[key]:
            logger.info("%s: %d %s", path, skipped[key], key.replace("_", " "))
    keep = ~(tiny | outside | negative) | crowd
    return xyxy, keep, skipped
