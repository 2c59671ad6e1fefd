"""Drawing truth and predicted boxes on images, and grids of several images in one picture.

Pillow only. Truth is drawn as thick white-edged green boxes (crowd regions grey), predictions in a colour per
class with their label and score; line width and font scale with the image so the
drawing stays legible at COCO sizes. Nothing here reads model output; it takes
detection dicts in pixels.
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from .eval.report import PredictionRecord

TRUTH_COLOUR = (40, 220, 90)
CROWD_COLOUR = (150, 150, 150)  # crowd regions: in the truth, but no targets


def class_colour(label: str) -> tuple[int, int, int]:
    """A stable, saturated colour per label (golden-ratio hue steps over a hash of the name)."""
    h = (sum(ord(c) * 131 ** i for i, c in enumerate(str(label))) % 997) * 0.618033988749895 % 1.0
    h *= 0.75
    h = h + 0.25 if h >= 0.2 else h  # hues in [0, 0.2) and [0.45, 1): clear of the truth's green
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_detections(image: Image.Image | str | os.PathLike, truth: dict | None = None, prediction: dict | None = None,
                    min_side: int = 384) -> Image.Image:
    """The image (upscaled so its short side is at least ``min_side``) with truth and predicted boxes."""
    from .data.images import open_image

    img = open_image(image) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    scale = max(1.0, min_side / min(img.size))
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 150))
    font = _font(max(12, round(min(img.size) / 28)))
    if truth:
        crowd = truth.get("iscrowd")
        crowd = [False] * len(truth.get("boxes", [])) if crowd is None else [bool(c) for c in crowd]
        for box, is_crowd in zip(truth.get("boxes", []), crowd):
            xy = [v * scale for v in box]
            draw.rectangle(xy, outline=(255, 255, 255), width=width + 2)
            draw.rectangle(xy, outline=CROWD_COLOUR if is_crowd else TRUTH_COLOUR, width=width)
    if prediction:
        scores = prediction.get("scores") or [None] * len(prediction.get("boxes", []))
        for box, label, score in zip(prediction.get("boxes", []), prediction.get("labels", []), scores):
            xy = [v * scale for v in box]
            colour = class_colour(label)
            draw.rectangle(xy, outline=colour, width=width)
            text = f"{label}" if score is None else f"{label} {score:.2f}"
            left, top, right, bottom = draw.textbbox((xy[0], xy[1]), text, font=font)
            y = xy[1] - (bottom - top) - 2 if xy[1] - (bottom - top) - 2 >= 0 else xy[1]
            draw.rectangle([xy[0], y, xy[0] + (right - left) + 4, y + (bottom - top) + 4], fill=colour)
            draw.text((xy[0] + 2, y), text, fill=(0, 0, 0), font=font)
    return img


def grid(images: list[Image.Image], columns: int | None = None, pad: int = 6) -> Image.Image:
    """Several images in one picture, each cell as large as the largest image."""
    if not images:
        raise ValueError("grid() needs at least one image.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    canvas = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), (30, 30, 30))
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        canvas.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return canvas


def visualize_records(records: list[PredictionRecord], out_dir: str | os.PathLike, limit: int = 16, columns: int | None = None) -> list[Path]:
    """Draw the first ``limit`` prediction records (with an ``image`` path) to PNGs plus ``grid.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn, paths = [], []
    for record in records[:limit]:
        if "image" not in record:
            raise ValueError(f"record for image_id {record.get('image_id')} has no 'image' path; qid predict writes it.")
        picture = draw_detections(record["image"], record.get("truth"), record.get("detections"))
        path = out / f"{record.get('image_id', len(paths))}.png"
        picture.save(path)
        drawn.append(picture)
        paths.append(path)
    grid_path = out / "grid.png"
    grid(drawn, columns).save(grid_path)
    return paths + [grid_path]
