"""Drawing truth and predicted boxes on images, and grids of several images in one picture.

Pillow only. Truth is drawn as thick white-edged green boxes labelled with their class (crowd
regions grey), predictions in their class's colour from a fixed palette of distinct colours, with
label and score; a legend under each picture says which is which. Line width and font scale with
the image so the drawing stays legible at COCO sizes. Nothing here reads model output; it takes
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


# distinct colours, none of them the truth's green or the crowd's grey (after Kelly's and Trubetskoy's lists)
PALETTE = [(230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (240, 50, 230), (70, 240, 240), (255, 225, 25), (128, 0, 0),
           (0, 0, 128), (170, 110, 40), (250, 190, 212), (128, 128, 0), (220, 190, 255), (255, 215, 180), (0, 128, 128)]


def class_colours(labels) -> dict[str, tuple[int, int, int]]:
    """A colour per class from the fixed palette, in the classes' sorted order (the same class, the same colour in every
    picture of a set); past the palette, further hues."""
    from .formats import normalize_label

    out = {}
    for k, label in enumerate(sorted(dict.fromkeys(labels), key=lambda name: (normalize_label(name), name))):
        if k < len(PALETTE):
            out[label] = PALETTE[k]
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0 * 0.75 + 0.45, 0.85, 0.95)  # clear of the green
            out[label] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _label(draw, xy, text: str, colour, font, above: bool) -> None:
    """A filled tag with ``text`` at the box's top-left corner (above it when there is room) or, for truth, its bottom-left."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = xy[0]
    y = (xy[1] - h if xy[1] - h >= 0 else xy[1]) if above else max(xy[3] - h, xy[1])
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    draw.text((x + 2, y - top + 2), text, fill=(0, 0, 0), font=font)


def legend(entries: list[tuple[str, tuple[int, int, int]]], width: int, font_size: int = 14) -> Image.Image:
    """A strip ``width`` pixels wide with a coloured swatch and a name per entry, wrapped over lines."""
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [probe.textbbox((0, 0), name, font=font) for name, _ in entries]
    line_h, pad = font_size + 10, 8
    lines, x = 1, pad
    for (left, _, right, _) in sizes:
        step = font_size + 6 + (right - left) + 16
        if x + step > width and x > pad:
            lines, x = lines + 1, pad
        x += step
    strip = Image.new("RGB", (width, lines * line_h + pad), (245, 245, 245))
    draw = ImageDraw.Draw(strip)
    x, y = pad, pad // 2
    for (name, colour), (left, top, right, _) in zip(entries, sizes):
        step = font_size + 6 + (right - left) + 16
        if x + step > width and x > pad:
            x, y = pad, y + line_h
        draw.rectangle([x, y + 3, x + font_size, y + 3 + font_size], fill=colour, outline=(0, 0, 0))
        draw.text((x + font_size + 6, y + 3 - top), name, fill=(0, 0, 0), font=font)
        x += step
    return strip


def draw_detections(image: Image.Image | str | os.PathLike, truth: dict | None = None, prediction: dict | None = None,
                    min_side: int = 384, colours: dict | None = None, with_legend: bool = False) -> Image.Image:
    """The image (upscaled so its short side is at least ``min_side``) with truth and predicted boxes, and a legend under it
    when asked (``colours``: class -> colour, shared by a set of pictures; default: this picture's classes)."""
    from .data.images import open_image

    img = open_image(image) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    scale = max(1.0, min_side / min(img.size))
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 150))
    font = _font(max(12, round(min(img.size) / 28)))
    colours = colours or class_colours((prediction or {}).get("labels", []))
    if truth:
        crowd = truth.get("iscrowd")
        crowd = [False] * len(truth.get("boxes", [])) if crowd is None else [bool(c) for c in crowd]
        for box, label, is_crowd in zip(truth.get("boxes", []), truth.get("labels", [None] * len(crowd)), crowd):
            xy = [v * scale for v in box]
            draw.rectangle(xy, outline=(255, 255, 255), width=width + 2)
            draw.rectangle(xy, outline=CROWD_COLOUR if is_crowd else TRUTH_COLOUR, width=width)
            if label is not None:
                _label(draw, xy, f"{label} (crowd)" if is_crowd else str(label), CROWD_COLOUR if is_crowd else TRUTH_COLOUR, font, above=False)
    if prediction:
        scores = prediction.get("scores") or [None] * len(prediction.get("boxes", []))
        for box, label, score in zip(prediction.get("boxes", []), prediction.get("labels", []), scores):
            xy = [v * scale for v in box]
            colour = colours.get(label) or class_colours([label])[label]
            draw.rectangle(xy, outline=colour, width=width)
            _label(draw, xy, f"{label}" if score is None else f"{label} {score:.2f}", colour, font, above=True)
    if not with_legend:
        return img
    entries = [("truth", TRUTH_COLOUR)] + ([("crowd (ignored)", CROWD_COLOUR)] if truth and any(truth.get("iscrowd") or []) else [])
    entries += [(f"predicted {name}", colour) for name, colour in colours.items()]
    strip = legend(entries, img.width, max(12, round(min(img.size) / 30)))
    canvas = Image.new("RGB", (img.width, img.height + strip.height), (255, 255, 255))
    canvas.paste(img, (0, 0))
    canvas.paste(strip, (0, img.height))
    return canvas


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
    """Draw the first ``limit`` prediction records (with an ``image`` path; truth where they have it) to PNGs plus ``grid.png``,
    each with a legend; a class has one colour in every picture."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn, paths = [], []
    shown = records[:limit]
    colours = class_colours([label for r in shown for label in (r.get("detections") or {}).get("labels", [])])
    for record in shown:
        if "image" not in record:
            raise ValueError(f"record for image_id {record.get('image_id')} has no 'image' path; qid predict writes it.")
        picture = draw_detections(record["image"], record.get("truth"), record.get("detections"), colours=colours, with_legend=True)
        path = out / f"{record.get('image_id', len(paths))}.png"
        picture.save(path)
        drawn.append(picture)
        paths.append(path)
    grid_path = out / "grid.png"
    grid(drawn, columns).save(grid_path)
    return paths + [grid_path]
