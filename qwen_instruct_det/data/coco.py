"""Reading and validating COCO-format annotation files into a columnar index.

:func:`load_coco` turns an ``instances_*.json`` (COCO, LVIS-style, Roboflow exports, your
own) into a :class:`CocoIndex`: numpy columns for images and annotations, boxes as pixel
``xyxy``, grouped by image. It validates every record and stops with an error that names
the file, the record and the fix; it never decodes an image (sizes come from the file)
but checks that every referenced image file exists. It knows nothing about tasks or text.

The index is built with a few vectorised passes instead of pycocotools' per-record
``createIndex``: at COCO-train scale (860k boxes) that is what keeps building fast.
pycocotools itself is used where its semantics matter (COCO mAP, see ``eval/coco_map.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
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


@dataclass
class CocoIndex:
    """Images, categories and annotations of one COCO-format file as numpy columns.

    Annotations are sorted by image (stable, so file order is kept within an image);
    ``ann_start[i]:ann_start[i + 1]`` are the annotations of image ``i``.
    """

    annotation_file: str
    image_dir: str
    image_ids: np.ndarray  # int64 (n_images,)
    file_names: list[str]
    widths: np.ndarray  # int32
    heights: np.ndarray  # int32
    category_ids: np.ndarray  # int64, sorted ascending
    category_names: list[str]  # aligned with category_ids
    ann_image: np.ndarray  # int64 index into images (n_anns,)
    ann_category: np.ndarray  # int64 index into categories
    ann_xyxy: np.ndarray  # float64 (n_anns, 4)
    ann_crowd: np.ndarray  # bool
    ann_start: np.ndarray  # int64 (n_images + 1,)
    skipped: dict[str, int] = field(default_factory=dict)
    # boxes of the categories a filter left out (crowd or not): not targets, but still objects in the picture
    other_image: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    other_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float64))
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    """What later stages derive from this index and reuse across configurations (it never changes once built)."""

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_image)

    def image_path(self, i: int) -> str:
        return os.path.join(self.image_dir, self.file_names[i])

    def image_paths(self) -> list[str]:
        if "image_paths" not in self.memo:
            self.memo["image_paths"] = [os.path.join(self.image_dir, name) for name in self.file_names]
        return self.memo["image_paths"]

    def select_images(self, keep: np.ndarray) -> CocoIndex:
        """A new index with only the images where ``keep`` (bool mask or sorted indices) holds."""
        keep_idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        remap = np.full(self.num_images, -1, dtype=np.int64)
        remap[keep_idx] = np.arange(len(keep_idx))
        ann_keep = remap[self.ann_image] >= 0
        return self._replace(keep_idx, remap, ann_keep)

    def select_categories(self, names: list[str]) -> CocoIndex:
        """A new index keeping only annotations of the named categories (all images stay).

        The others' boxes move to ``other_image``/``other_xyxy``: a region said to hold no object
        (none_region) must keep off them too.
        """
        known = {n: i for i, n in enumerate(self.category_names)}
        missing = [n for n in names if n not in known]
        if missing:
            raise CocoFormatError(
                f"{self.annotation_file}: category filter {missing} matches no category; "
                f"the file's categories are {self.category_names}."
            )
        wanted = np.zeros(len(self.category_names), dtype=bool)
        wanted[[known[n] for n in names]] = True
        ann_keep = wanted[self.ann_category]
        all_images = np.arange(self.num_images)
        kept = self._replace(all_images, all_images, ann_keep)
        other_image = np.concatenate([self.other_image, self.ann_image[~ann_keep]])
        order = np.argsort(other_image, kind="stable")
        kept.other_image = other_image[order]
        kept.other_xyxy = np.concatenate([self.other_xyxy, self.ann_xyxy[~ann_keep]])[order]
        return kept

    def _replace(self, keep_idx: np.ndarray, remap: np.ndarray, ann_keep: np.ndarray) -> CocoIndex:
        ann_image = remap[self.ann_image[ann_keep]]
        counts = np.bincount(ann_image, minlength=len(keep_idx))
        other_keep = remap[self.other_image] >= 0
        return CocoIndex(
            annotation_file=self.annotation_file,
            image_dir=self.image_dir,
            image_ids=self.image_ids[keep_idx],
            file_names=[self.file_names[i] for i in keep_idx],
            widths=self.widths[keep_idx],
            heights=self.heights[keep_idx],
            category_ids=self.category_ids,
            category_names=self.category_names,
            ann_image=ann_image,
            ann_category=self.ann_category[ann_keep],
            ann_xyxy=self.ann_xyxy[ann_keep],
            ann_crowd=self.ann_crowd[ann_keep],
            ann_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            skipped=dict(self.skipped),
            other_image=remap[self.other_image[other_keep]],
            other_xyxy=self.other_xyxy[other_keep],
        )


def _fail(path, what: str, fix: str) -> CocoFormatError:
    return CocoFormatError(f"{path}: {what}. {fix}")


def _records(data: dict, key: str, path) -> list:
    if key not in data:
        raise _fail(path, f"no top-level {key!r} list", f"A COCO-format file needs 'images', 'annotations' and 'categories'; add {key!r}.")
    records = data[key]
    if not isinstance(records, list):
        raise _fail(path, f"top-level {key!r} is a {type(records).__name__}, not a list", "Fix the export.")
    return records


def _column(records: list, key: str, kind: str, path, label: str):
    """Extract one key from every record; on a missing key name the first bad record."""
    try:
        return [r[key] for r in records]
    except (KeyError, TypeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict) or key not in r:
                ident = r.get("id", "?") if isinstance(r, dict) else "?"
                raise _fail(path, f"{label} record #{i} (id {ident}) has no {key!r}", f"Every {label} record needs {key!r} ({kind}).") from None
        raise


def _numeric(values: list, dtype, path, label: str, key: str, records: list) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        for i, v in enumerate(values):
            try:
                np.asarray(v, dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                ident = records[i].get("id", "?")
                whole = ", a whole one that fits in 64 bits" if np.dtype(dtype).kind in "iu" else ""
                raise _fail(path, f"{label} record #{i} (id {ident}) has {key}={v!r}", f"{key!r} must be a number{whole}.") from None
        raise
    if out.dtype.kind in "iu":  # numpy truncates 1.5 to 1 without a word: an id must be a whole number
        raw = np.asarray(values)
        if raw.dtype.kind == "f" and (fractional := raw != np.floor(raw)).any():
            i = int(np.flatnonzero(fractional)[0])
            raise _fail(path, f"{label} record #{i} (id {records[i].get('id', '?')}) has {key}={values[i]!r}",
                        f"{key!r} must be a whole number (an id, not a measure).")
    return out


def load_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, check_files: bool = True) -> CocoIndex:
    """Read and validate a COCO-format annotation file; ``image_dir`` holds the images it names."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: annotation file not found. Pass the path of a COCO-format instances_*.json "
            "(for COCO 2017: data_dir/annotations/instances_train2017.json; dataset_scripts/download_coco.py fetches it)."
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise _fail(path, "the top level is not a JSON object", "A COCO-format file is an object with 'images', 'annotations' and 'categories'.")
    images = _records(data, "images", path)
    anns = _records(data, "annotations", path)
    cats = _records(data, "categories", path)
    del data
    if not images:
        raise _fail(path, "'images' is empty", "There is nothing to build; check that this is the right file.")
    if not cats:
        raise _fail(path, "'categories' is empty", "Add the category list ({'id', 'name'} records).")

    image_ids = _numeric(_column(images, "id", "an int", path, "image"), np.int64, path, "image", "id", images)
    file_names = _column(images, "file_name", "the image's path relative to the image folder", path, "image")
    widths = _numeric(_column(images, "width", "pixels", path, "image"), np.float64, path, "image", "width", images)
    heights = _numeric(_column(images, "height", "pixels", path, "image"), np.float64, path, "image", "height", images)
    bad = np.flatnonzero((widths <= 0) | (heights <= 0))
    if len(bad):
        i = int(bad[0])
        raise _fail(path, f"image id {image_ids[i]} ({file_names[i]}) has size {widths[i]}x{heights[i]}", "Widths and heights must be positive.")
    order = np.argsort(image_ids, kind="stable")
    dup = np.flatnonzero(np.diff(image_ids[order]) == 0)
    if len(dup):
        raise _fail(path, f"image id {image_ids[order[dup[0]]]} appears twice", "Image ids must be unique.")
    seen: dict[str, int] = {}
    for i, name in enumerate(file_names):
        first = seen.setdefault(os.path.normpath(str(name)), i)
        if first != i:
            raise _fail(path, f"image ids {image_ids[first]} and {image_ids[i]} are both the file {name!r}",
                        "Each would become a row with only its own annotations, the other's objects unmarked on it: "
                        "merge the two image records (and their annotations) into one.")

    cat_ids = _numeric(_column(cats, "id", "an int", path, "category"), np.int64, path, "category", "id", cats)
    cat_names = [str(n) for n in _column(cats, "name", "a string", path, "category")]
    cat_order = np.argsort(cat_ids, kind="stable")
    cat_ids = cat_ids[cat_order]
    cat_names = [cat_names[i] for i in cat_order]
    cat_parents = [str(cats[i].get("supercategory")) for i in cat_order]
    if len(np.unique(cat_ids)) != len(cat_ids):
        raise _fail(path, "a category id appears twice", "Category ids must be unique.")
    _check_category_names(cat_names, path)

    ann_img_ids = _numeric(_column(anns, "image_id", "the image's id", path, "annotation"), np.int64, path, "annotation", "image_id", anns)
    ann_cat_ids = _numeric(_column(anns, "category_id", "the category's id", path, "annotation"), np.int64, path, "annotation", "category_id", anns)
    bbox = _column(anns, "bbox", "[x, y, width, height] in pixels", path, "annotation")
    try:
        xywh = np.asarray(bbox, dtype=np.float64).reshape(len(anns), 4)
    except (TypeError, ValueError):
        for i, b in enumerate(bbox):
            if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
                raise _fail(path, f"annotation record #{i} (id {anns[i].get('id', '?')}) has bbox={b!r}", "A bbox is [x, y, width, height], four numbers.") from None
        raise
    crowd = _crowd_flags(anns, path)
    ann_ident = [r.get("id", "?") for r in anns] if len(anns) else []
    del anns, images, cats

    sorted_ids = image_ids[order]
    pos = np.searchsorted(sorted_ids, ann_img_ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    unknown = np.flatnonzero(sorted_ids[pos_c] != ann_img_ids)
    if len(unknown):
        i = int(unknown[0])
        raise _fail(path, f"annotation record #{i} (id {ann_ident[i]}) points to image_id {ann_img_ids[i]}, which is not in 'images' ({len(unknown)} such annotations)", "Add the image record or remove the annotation.")
    ann_image = order[pos_c]
    cpos = np.minimum(np.searchsorted(cat_ids, ann_cat_ids), len(cat_ids) - 1)
    unknown = np.flatnonzero(cat_ids[cpos] != ann_cat_ids)
    if len(unknown):
        i = int(unknown[0])
        raise _fail(path, f"annotation record #{i} (id {ann_ident[i]}) has category_id {ann_cat_ids[i]}, which is not in 'categories' ({len(unknown)} such annotations)", "Add the category or remove the annotation.")
    if not np.all(np.isfinite(xywh)):
        i = int(np.flatnonzero(~np.all(np.isfinite(xywh), axis=1))[0])
        raise _fail(path, f"annotation record #{i} (id {ann_ident[i]}) has a non-finite bbox", "Fix or remove it.")

    cat_ids, cat_names, cpos, placeholders = _drop_placeholder(cat_ids, cat_names, cat_parents, cpos)
    if placeholders:
        logger.info("%s: category %s left out: no annotation uses it and it is the supercategory of every other category "
                    "(an export's name for the data set, as Roboflow writes it)", path, placeholders)

    xyxy, keep, skipped = _clip_boxes(xywh, widths[ann_image], heights[ann_image], crowd, path)
    if placeholders:
        skipped["placeholder_categories"] = len(placeholders)
    ann_image, cpos, xyxy, crowd = ann_image[keep], cpos[keep], xyxy[keep], crowd[keep]

    by_image = np.argsort(ann_image, kind="stable")
    ann_image = ann_image[by_image]
    counts = np.bincount(ann_image, minlength=len(image_ids))
    index = CocoIndex(
        annotation_file=str(path),
        image_dir=str(image_dir),
        image_ids=image_ids,
        file_names=[str(n) for n in file_names],
        widths=widths.astype(np.int32),
        heights=heights.astype(np.int32),
        category_ids=cat_ids,
        category_names=cat_names,
        ann_image=ann_image,
        ann_category=cpos[by_image].astype(np.int64),
        ann_xyxy=xyxy[by_image],
        ann_crowd=crowd[by_image],
        ann_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        skipped=skipped,
    )
    if check_files:
        check_image_files(index)
    return index


def _drop_placeholder(cat_ids: np.ndarray, cat_names: list[str], parents: list[str], cpos: np.ndarray):
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
        raise _fail(path, f"not valid JSON ({msg}{where})", "Re-export or re-download the file.") from None


def _crowd_flags(anns: list, path) -> np.ndarray:
    """``iscrowd`` as COCO tools read it: missing or null is 0; 0/1 and booleans are taken; anything else is named."""
    values = [r.get("iscrowd") for r in anns]
    try:
        known = set(values) <= {0, 1, None}  # True == 1 and False == 0
    except TypeError:  # an unhashable value such as a list
        known = False
    if not known:
        for i, v in enumerate(values):
            if not (v is None or (isinstance(v, (bool, int)) and v in (0, 1))):
                raise _fail(path, f"annotation record #{i} (id {anns[i].get('id', '?')}) has iscrowd={v!r}",
                            "iscrowd must be 0 or 1 (true/false; null or missing reads as 0); fix the export.")
    return np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))


def _check_category_names(names: list[str], path) -> None:
    """Names appear in the model's text and are compared in canonical form, so two may not share one."""
    from ..formats import normalize_label

    seen: dict[str, str] = {}
    for name in names:
        key = normalize_label(name)
        if key in seen:
            raise _fail(path, f"categories {seen[key]!r} and {name!r} have the same name once case, spaces and quotes are "
                        "ignored (answers are compared that way)", "Rename or merge one of them.")
        seen[key] = name


def _clip_boxes(xywh: np.ndarray, widths: np.ndarray, heights: np.ndarray, crowd: np.ndarray, path):
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


def check_image_files(index: CocoIndex) -> None:
    """Raise if any image file named by the index is missing (one ``scandir`` per folder, no decoding)."""
    image_dir = Path(index.image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image folder not found (named for {index.annotation_file}). Pass the folder that holds the images.")
    present: dict[str, set[str]] = {}
    missing = []
    for i, name in enumerate(index.file_names):
        folder, _, base = name.rpartition("/")
        if folder not in present:
            target = image_dir / folder if folder else image_dir
            present[folder] = {e.name for e in os.scandir(target)} if target.is_dir() else set()
        if base not in present[folder]:
            missing.append(i)
    if missing:
        i = missing[0]
        raise FileNotFoundError(
            f"{index.image_path(i)}: image file not found for image id {index.image_ids[i]} in {index.annotation_file} "
            f"({len(missing)} of {index.num_images} images are missing). Download the images, fix image_dir, or remove those records."
        )


def subset(index: CocoIndex, n: int, seed: int) -> CocoIndex:
    """A seeded random subset of ``n`` images, kept in file order."""
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}.")
    if n >= index.num_images:
        return index
    rng = np.random.default_rng(seed)
    return index.select_images(np.sort(rng.choice(index.num_images, size=n, replace=False)))
