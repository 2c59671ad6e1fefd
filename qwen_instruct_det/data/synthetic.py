"""The synthetic COCO-format data set: drawn shapes with a real ``instances_*.json``.

This is the data of the demo and of every test. Images are real JPEGs drawn with Pillow
(shapes of several classes and colours on plain or textured backgrounds, overlapping and
occluding each other); the annotation file has the real format's quirks: non-contiguous
category ids, float ``xywh`` boxes, polygon and RLE segmentations, ``iscrowd`` regions
and images with no objects. :func:`make_annotations` alone builds a COCO-scale file
without drawing, for benchmarks. Optionally some images are stored as cameras store photos:
pixels in the sensor's frame plus an EXIF orientation tag, with the JSON describing either
the stored pixels (COCO's convention) or the upright picture (annotation tools' exports).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 4, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "diamond", "supercategory": "shape"},
    {"id": 11, "name": "plus sign", "supercategory": "shape"},
]
EXIF_ORIENTATION = 0x0112
# PIL transposes that store an upright picture so that ImageOps.exif_transpose shows it upright again
_STORE_FOR_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30), (150, 60, 180), (20, 170, 190), (240, 120, 30)]


@dataclass
class SynthOptions:
    """How the synthetic images look; the defaults are the tests' and the demo's data."""

    min_size: int = 96
    max_size: int = 160
    min_objects: int = 1
    max_objects: int = 4
    empty_fraction: float = 0.05
    crowd_fraction: float = 0.05
    textured_fraction: float = 0.4
    min_object_fraction: float = 0.15  # object side as a fraction of the image's shorter side
    max_object_fraction: float = 0.45
    max_iou: float = 0.2  # overlapping objects are allowed, hidden ones are not
    categories: int = len(CATEGORIES)
    colour_by_class: bool = False  # one colour per class (easier), instead of any colour for any shape
    exif_fraction: float = 0.0  # store this fraction of images with an EXIF orientation tag (0: files as before)
    exif_orientations: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # drawn from uniformly for those images
    exif_json_frame: str = "stored"  # what their JSON size and boxes describe: "stored" pixels or the "displayed" picture


def make_annotations(n_images: int, seed: int = 0, options: SynthOptions | None = None, first_id: int = 1) -> dict:
    """A COCO-format annotation dict for ``n_images`` synthetic images (nothing is drawn).

    Each annotation carries ``"_shape"`` and ``"_colour"``; :func:`draw_image` uses them and
    :func:`write_split` strips them before writing. With ``exif_fraction``, images also carry
    ``"_orientation"`` (EXIF 2-8) and ``"_frame"`` (``exif_json_frame``), used by :func:`write_split`.
    """
    opt = options or SynthOptions()
    if opt.exif_json_frame not in ("stored", "displayed"):
        raise ValueError(f"exif_json_frame={opt.exif_json_frame!r}: choose 'stored' or 'displayed'.")
    if not set(opt.exif_orientations) <= set(range(2, 9)):
        raise ValueError(f"exif_orientations={opt.exif_orientations!r}: EXIF orientations that change the picture are 2-8.")
    rng = np.random.default_rng(seed)
    cats = CATEGORIES[: opt.categories]
    images, anns = [], []
    ann_id = first_id
    sizes = rng.integers(opt.min_size, opt.max_size + 1, size=(n_images, 2))
    n_objects = rng.integers(opt.min_objects, opt.max_objects + 1, size=n_images)
    n_objects[rng.random(n_images) < opt.empty_fraction] = 0
    crowd = rng.random(n_images) < opt.crowd_fraction
    for i in range(n_images):
        image_id = first_id + i
        w, h = int(sizes[i, 0]), int(sizes[i, 1])
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h,
                       "_textured": bool(rng.random() < opt.textured_fraction), "_background": int(rng.integers(len(COLOURS)))})
        placed: list[np.ndarray] = []
        short = min(w, h)
        for _ in range(int(n_objects[i])):
            for _attempt in range(20):
                side = rng.uniform(opt.min_object_fraction, opt.max_object_fraction, 2) * short
                x, y = rng.uniform(0, w - side[0]), rng.uniform(0, h - side[1])
                box = np.array([x, y, x + side[0], y + side[1]])
                if all(_iou(box, other) <= opt.max_iou for other in placed):
                    break
            else:
                continue
            placed.append(box)
            cat = cats[int(rng.integers(len(cats)))]
            anns.append(_annotation(ann_id, image_id, cat["id"], box, crowd=False))
            colour = int(rng.integers(len(COLOURS)))
            anns[-1]["_colour"] = cats.index(cat) % len(COLOURS) if opt.colour_by_class else colour
            ann_id += 1
        if crowd[i]:
            side = rng.uniform(0.25, 0.4, 2) * np.array([w, h])
            x, y = rng.uniform(0, w - side[0]), rng.uniform(0, h - side[1])
            box = np.array([x, y, x + side[0], y + side[1]])
            anns.append(_annotation(ann_id, image_id, cats[0]["id"], box, crowd=True, size=(h, w)))
            anns[-1]["_colour"] = int(rng.integers(len(COLOURS)))
            ann_id += 1
    if opt.exif_fraction > 0:
        # a generator of its own, so that the rest of the data is the same with or without EXIF tags
        exif_rng = np.random.default_rng([seed, EXIF_ORIENTATION])
        tagged = exif_rng.random(n_images) < opt.exif_fraction
        orientations = exif_rng.choice(np.asarray(opt.exif_orientations), size=n_images)
        for image, tag, orientation in zip(images, tagged, orientations):
            if tag:
                image["_orientation"], image["_frame"] = int(orientation), opt.exif_json_frame
    return {
        "info": {"description": "qwen_instruct_det synthetic shapes", "version": "1.0", "year": 2026},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _annotation(ann_id: int, image_id: int, category_id: int, box: np.ndarray, crowd: bool, size=None) -> dict:
    x1, y1, x2, y2 = (round(float(v), 2) for v in box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
           "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": int(crowd)}
    if crowd:
        ann["segmentation"] = _rle_box(box, size)
    else:
        ann["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
    return ann


def _rle_box(box: np.ndarray, size) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with zeros) of a filled box."""
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask[y1:y2, x1:x2] = 1
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [h, w]}


def draw_image(image: dict, anns: list[dict], seed: int):
    """Draw one synthetic image (a PIL image) from its annotation records."""
    from PIL import Image, ImageDraw

    w, h = image["width"], image["height"]
    rng = np.random.default_rng(seed)
    bg = np.array(COLOURS[image.get("_background", 0)], dtype=np.float64) * 0.25 + 150
    pixels = np.broadcast_to(bg, (h, w, 3)).copy()
    if image.get("_textured"):
        yy, xx = np.mgrid[0:h, 0:w]
        period = rng.uniform(6, 18)
        pixels += 25 * np.sin((xx + yy * rng.uniform(-1, 1)) / period)[..., None]
        pixels += rng.normal(0, 10, (h, w, 1))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for ann in anns:
        x, y, bw, bh = ann["bbox"]
        colour = COLOURS[ann.get("_colour", 0)]
        if ann.get("iscrowd"):
            for _ in range(12):
                cx, cy = x + rng.uniform(0, bw), y + rng.uniform(0, bh)
                r = max(1.5, min(bw, bh) * 0.08)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            continue
        _draw_shape(draw, names[ann["category_id"]], (x, y, x + bw, y + bh), colour)
    return img


def _draw_shape(draw, name: str, box, colour) -> None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    outline = tuple(int(c * 0.5) for c in colour)
    if name == "circle":
        draw.ellipse(box, fill=colour, outline=outline)
    elif name == "square":
        draw.rectangle(box, fill=colour, outline=outline)
    elif name == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=colour, outline=outline)
    elif name == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=colour, outline=outline)
    else:  # plus sign
        tw, th = (x2 - x1) / 3, (y2 - y1) / 3
        draw.rectangle([x1 + tw, y1, x2 - tw, y2], fill=colour)
        draw.rectangle([x1, y1 + th, x2, y2 - th], fill=colour)


def write_split(out_dir: str | os.PathLike, split: str, data: dict, seed: int = 0, draw: bool = True) -> Path:
    """Write ``data`` as ``annotations/instances_{split}2017.json`` and (when ``draw``) its JPEGs."""
    out = Path(out_dir)
    image_dir = out / f"{split}2017"
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    if draw:
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for image in data["images"]:
            img = draw_image(image, by_image.get(image["id"], []), seed=seed * 1_000_003 + image["id"])
            _save(img, image_dir / image["file_name"], image.get("_orientation", 1), image.get("_frame", "stored"))
    clean = dict(data)
    clean["images"] = [{k: v for k, v in im.items() if not k.startswith("_")} for im in data["images"]]
    clean["annotations"] = [{k: v for k, v in a.items() if not k.startswith("_")} for a in data["annotations"]]
    path = out / "annotations" / f"instances_{split}2017.json"
    with open(path, "w") as f:
        json.dump(clean, f)
    return path


def _save(img, path: Path, orientation: int, frame: str) -> None:
    """Save a JPEG; with an EXIF orientation, ``img`` is the picture in the JSON's frame (stored or displayed)."""
    if orientation == 1:
        img.save(path, quality=90)
        return
    from PIL import Image

    if frame == "displayed":
        img = img.transpose(Image.Transpose[_STORE_FOR_ORIENTATION[orientation]])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, quality=90, exif=exif)


def make_synthetic_coco(
    out_dir: str | os.PathLike, train: int = 400, val: int = 100, seed: int = 0, options: SynthOptions | None = None
) -> Path:
    """Write a COCO-2017-layout synthetic data set (train and val splits) and return its folder."""
    out = Path(out_dir)
    if train:
        write_split(out, "train", make_annotations(train, seed=seed, options=options), seed=seed)
    if val:
        # ids continue after train so the two splits never share an id, as in COCO
        data = make_annotations(val, seed=seed + 1, options=options, first_id=train + 1)
        write_split(out, "val", data, seed=seed + 1)
    logger.info("wrote synthetic COCO data (%d train, %d val images) to %s", train, val, out)
    return out
