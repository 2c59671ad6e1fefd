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

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .records import (
    CocoFormatError,
    check_category_names,
    clip_boxes,
    column,
    crowd_flags,
    drop_placeholder,
    fail,
    numeric,
    read_json,
    records,
)

__all__ = ["CocoFormatError", "CocoIndex", "check_image_files", "load_coco", "read_json", "subset"]

logger = logging.getLogger(__name__)


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


def load_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, check_files: bool = True,
              allow_outside_image_dir: bool = False) -> CocoIndex:
    """Read and validate a COCO-format annotation file; ``image_dir`` holds the images it names.

    Every ``file_name`` must stay inside ``image_dir`` (no absolute path, no ``..`` that climbs out, and with
    ``check_files`` no symlink to elsewhere): a build reads those files and a Hub push embeds their bytes, so a
    downloaded annotation file could otherwise publish any file of the machine. ``allow_outside_image_dir`` lifts this.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: annotation file not found. Pass the path of a COCO-format instances_*.json "
            "(for COCO 2017: data_dir/annotations/instances_train2017.json; dataset_scripts/download_coco.py fetches it)."
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise fail(path, "the top level is not a JSON object", "A COCO-format file is an object with 'images', 'annotations' and 'categories'.")
    images = records(data, "images", path)
    anns = records(data, "annotations", path)
    cats = records(data, "categories", path)
    del data
    if not images:
        raise fail(path, "'images' is empty", "There is nothing to build; check that this is the right file.")
    if not cats:
        raise fail(path, "'categories' is empty", "Add the category list ({'id', 'name'} records).")

    image_ids = numeric(column(images, "id", "an int", path, "image"), np.int64, path, "image", "id", images)
    file_names = column(images, "file_name", "the image's path relative to the image folder", path, "image")
    widths = numeric(column(images, "width", "pixels", path, "image"), np.float64, path, "image", "width", images)
    heights = numeric(column(images, "height", "pixels", path, "image"), np.float64, path, "image", "height", images)
    bad = np.flatnonzero((widths <= 0) | (heights <= 0))
    if len(bad):
        i = int(bad[0])
        raise fail(path, f"image id {image_ids[i]} ({file_names[i]}) has size {widths[i]}x{heights[i]}", "Widths and heights must be positive.")
    order = np.argsort(image_ids, kind="stable")
    dup = np.flatnonzero(np.diff(image_ids[order]) == 0)
    if len(dup):
        raise fail(path, f"image id {image_ids[order[dup[0]]]} appears twice", "Image ids must be unique.")
    if not allow_outside_image_dir:
        _check_inside(file_names, image_ids, path, image_dir)
    seen: dict[str, int] = {}
    for i, name in enumerate(file_names):
        first = seen.setdefault(os.path.normpath(str(name)), i)
        if first != i:
            raise fail(path, f"image ids {image_ids[first]} and {image_ids[i]} are both the file {name!r}",
                        "Each would become a row with only its own annotations, the other's objects unmarked on it: "
                        "merge the two image records (and their annotations) into one.")

    cat_ids = numeric(column(cats, "id", "an int", path, "category"), np.int64, path, "category", "id", cats)
    cat_names = [str(n) for n in column(cats, "name", "a string", path, "category")]
    cat_order = np.argsort(cat_ids, kind="stable")
    cat_ids = cat_ids[cat_order]
    cat_names = [cat_names[i] for i in cat_order]
    cat_parents = [str(cats[i].get("supercategory")) for i in cat_order]
    if len(np.unique(cat_ids)) != len(cat_ids):
        raise fail(path, "a category id appears twice", "Category ids must be unique.")
    check_category_names(cat_names, path)

    ann_img_ids = numeric(column(anns, "image_id", "the image's id", path, "annotation"), np.int64, path, "annotation", "image_id", anns)
    ann_cat_ids = numeric(column(anns, "category_id", "the category's id", path, "annotation"), np.int64, path, "annotation", "category_id", anns)
    bbox = column(anns, "bbox", "[x, y, width, height] in pixels", path, "annotation")
    try:
        xywh = np.asarray(bbox, dtype=np.float64).reshape(len(anns), 4)
    except (TypeError, ValueError):
        for i, b in enumerate(bbox):
            if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
                raise fail(path, f"annotation record #{i} (id {anns[i].get('id', '?')}) has bbox={b!r}", "A bbox is [x, y, width, height], four numbers.") from None
        raise
    crowd = crowd_flags(anns, path)
    ann_ident = [r.get("id", "?") for r in anns] if len(anns) else []
    del anns, images, cats

    sorted_ids = image_ids[order]
    pos = np.searchsorted(sorted_ids, ann_img_ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    unknown = np.flatnonzero(sorted_ids[pos_c] != ann_img_ids)
    if len(unknown):
        i = int(unknown[0])
        raise fail(path, f"annotation record #{i} (id {ann_ident[i]}) points to image_id {ann_img_ids[i]}, which is not in 'images' ({len(unknown)} such annotations)", "Add the image record or remove the annotation.")
    ann_image = order[pos_c]
    cpos = np.minimum(np.searchsorted(cat_ids, ann_cat_ids), len(cat_ids) - 1)
    unknown = np.flatnonzero(cat_ids[cpos] != ann_cat_ids)
    if len(unknown):
        i = int(unknown[0])
        raise fail(path, f"annotation record #{i} (id {ann_ident[i]}) has category_id {ann_cat_ids[i]}, which is not in 'categories' ({len(unknown)} such annotations)", "Add the category or remove the annotation.")
    if not np.all(np.isfinite(xywh)):
        i = int(np.flatnonzero(~np.all(np.isfinite(xywh), axis=1))[0])
        raise fail(path, f"annotation record #{i} (id {ann_ident[i]}) has a non-finite bbox", "Fix or remove it.")

    cat_ids, cat_names, cpos, placeholders = drop_placeholder(cat_ids, cat_names, cat_parents, cpos)
    if placeholders:
        logger.info("%s: category %s left out: no annotation uses it and it is the supercategory of every other category "
                    "(an export's name for the data set, as Roboflow writes it)", path, placeholders)

    xyxy, keep, skipped = clip_boxes(xywh, widths[ann_image], heights[ann_image], crowd, path)
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
        check_image_files(index, allow_outside_image_dir)
    return index


_OUTSIDE_FIX = ("file names are relative to the image folder: fix the record, or pass allow_outside_image_dir=true "
                "(--allow_outside_image_dir true) if the files are meant to come from elsewhere")


def _check_inside(file_names: list, image_ids: np.ndarray, path: Path, image_dir) -> None:
    """Raise unless every file name, read as a path, stays inside the image folder (no absolute path, no climbing '..')."""
    for i, name in enumerate(file_names):
        name = str(name)
        norm = os.path.normpath(name)
        if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or (os.altsep and norm.startswith(".." + os.altsep)):
            raise fail(path, f"image id {image_ids[i]} has file_name {name!r}, which points outside the image folder {image_dir}",
                        _OUTSIDE_FIX[0].upper() + _OUTSIDE_FIX[1:] + ".")


def check_image_files(index: CocoIndex, allow_outside_image_dir: bool = False) -> None:
    """Raise if any image file named by the index is missing, or (unless allowed) is a symlink that leads out of the image
    folder (one ``scandir`` per folder, no decoding)."""
    image_dir = Path(index.image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image folder not found (named for {index.annotation_file}). Pass the folder that holds the images.")
    root = os.path.realpath(image_dir)  # the folder itself may be a link (data/coco/train2017 -> a bigger disk)
    present: dict[str, dict[str, os.DirEntry]] = {}
    missing = []
    for i, name in enumerate(index.file_names):
        folder, _, base = name.rpartition("/")
        if folder not in present:
            target = image_dir / folder if folder else image_dir
            present[folder] = {e.name: e for e in os.scandir(target)} if target.is_dir() else {}
            if present[folder] and not allow_outside_image_dir and not _inside(os.path.realpath(target), root):
                raise fail(index.annotation_file, f"image id {index.image_ids[i]}: its folder {target} is a link to "
                            f"{os.path.realpath(target)}, outside the image folder {image_dir}", _OUTSIDE_FIX[0].upper() + _OUTSIDE_FIX[1:] + ".")
        entry = present[folder].get(base)
        if entry is None:
            missing.append(i)
        elif not allow_outside_image_dir and entry.is_symlink() and not _inside(os.path.realpath(entry.path), root):
            raise fail(index.annotation_file, f"image id {index.image_ids[i]}: {entry.path} is a link to {os.path.realpath(entry.path)}, "
                        f"outside the image folder {image_dir}", "Copy the file into the folder, or " + _OUTSIDE_FIX.split(": ", 1)[1] + ".")
    if missing:
        i = missing[0]
        raise FileNotFoundError(
            f"{index.image_path(i)}: image file not found for image id {index.image_ids[i]} in {index.annotation_file} "
            f"({len(missing)} of {index.num_images} images are missing). Download the images, fix image_dir, or remove those records."
        )


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def subset(index: CocoIndex, n: int, seed: int) -> CocoIndex:
    """A seeded random subset of ``n`` images, kept in file order."""
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}.")
    if n >= index.num_images:
        return index
    rng = np.random.default_rng(seed)
    return index.select_images(np.sort(rng.choice(index.num_images, size=n, replace=False)))
