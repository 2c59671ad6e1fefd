"""Image files as the model sees them: stored sizes, EXIF orientation, decoding checks.

``datasets`` applies a photo's EXIF orientation tag when it decodes an ``Image`` feature
(``PIL.ImageOps.exif_transpose``), so a JPEG stored 640x427 with orientation 6 reaches the
model as a 427x640 picture. :func:`read_headers` reads every file's stored size and
orientation from its header alone (no pixels decoded), :func:`orient_index` uses them to put
a :class:`~qwen_instruct_det.data.coco.CocoIndex` into that displayed frame (sizes and boxes),
:func:`verify_images` decodes every file and names the broken ones, and :func:`open_image`
opens one picture the way training and inference must see it. Box math lives in ``boxes.py``;
this module knows nothing about tasks or text.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, NamedTuple

import numpy as np

from .. import boxes as B
from .coco import CocoFormatError, CocoIndex

logger = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
EXIF_FRAMES = ("stored", "displayed")
ON_MISMATCH = ("error", "rescale")
_CHUNK = 512  # files per task handed to a worker thread
_SHOWN_IN_ERRORS = 5


class BadImageError(ValueError):
    """Image files that cannot be read or decoded; ``paths`` lists them all."""

    def __init__(self, message: str, paths: Sequence[str]):
        super().__init__(message)
        self.paths = list(paths)


class ImageHeaders(NamedTuple):
    """Stored size and effective EXIF orientation (1-8; 1 when the tag is missing or invalid) per file."""

    widths: np.ndarray  # int64
    heights: np.ndarray  # int64
    orientations: np.ndarray  # int64


def read_headers(paths: Sequence[str | os.PathLike], workers: int | None = None, progress: bool = True) -> ImageHeaders:
    """Stored width, height and EXIF orientation of every file, read from headers only (no decoding)."""
    paths = [os.fspath(p) for p in paths]
    results = _map_chunks(_read_chunk, paths, workers, progress, "image headers")
    widths = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int64)
    heights = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
    orientations = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
    _raise_bad([bad for r in results for bad in r[3]], len(paths), "cannot be opened as images")
    return ImageHeaders(widths, heights, orientations)


def orient_index(
    index: CocoIndex,
    exif_frame: str = "stored",
    on_mismatch: str = "error",
    workers: int | None = None,
    progress: bool = True,
) -> tuple[CocoIndex, dict[str, int]]:
    """Put an index into the frame ``datasets`` decodes: sizes are the displayed sizes, boxes are on the displayed pixels.

    The JSON's width/height tell which frame an image was annotated in when its EXIF
    orientation turns it by 90 degrees; where they cannot tell (mirrors, 180 degrees, square
    images) ``exif_frame`` decides: "stored" (COCO's convention) or "displayed" (what
    browser-based annotation tools export). An image whose JSON size matches neither frame is
    an error, or with ``on_mismatch="rescale"`` has its boxes scaled to the displayed size.
    Returns the new index and how many images took each path.
    """
    if exif_frame not in EXIF_FRAMES:
        raise ValueError(f"exif_frame={exif_frame!r} is not one of {EXIF_FRAMES}.")
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch={on_mismatch!r} is not one of {ON_MISMATCH}.")
    stored_w, stored_h, orientation = read_headers(index.image_paths(), workers=workers, progress=progress)
    shown_w, shown_h = B.oriented_size(stored_w, stored_h, orientation)
    json_w, json_h = index.widths.astype(np.int64), index.heights.astype(np.int64)
    is_stored = (json_w == stored_w) & (json_h == stored_h)
    is_shown = (json_w == shown_w) & (json_h == shown_h)
    mismatch = ~(is_stored | is_shown)
    undecided = is_stored & is_shown & (orientation != 1)
    from_stored = is_stored & ~is_shown
    transform = from_stored | (undecided & (exif_frame == "stored"))
    counts = {
        "exif_rotated_from_stored": int(np.count_nonzero(from_stored)),
        "exif_already_displayed": int(np.count_nonzero(is_shown & ~is_stored)),
        "exif_by_option_stored": int(np.count_nonzero(undecided)) if exif_frame == "stored" else 0,
        "exif_by_option_displayed": int(np.count_nonzero(undecided)) if exif_frame == "displayed" else 0,
        "size_rescaled": 0,
    }
    if mismatch.any() and on_mismatch == "error":
        raise CocoFormatError(_mismatch_message(index, mismatch, (stored_w, stored_h, shown_w, shown_h, orientation)))
    if mismatch.any():
        counts["size_rescaled"] = int(np.count_nonzero(mismatch))

    img = index.ann_image
    xyxy = index.ann_xyxy.copy()
    turn = transform[img]
    xyxy[turn] = B.orient_boxes(xyxy[turn], orientation[img[turn]], stored_w[img[turn]], stored_h[img[turn]])
    scale = mismatch[img]
    if scale.any():
        factors = np.stack([shown_w / json_w, shown_h / json_h, shown_w / json_w, shown_h / json_h], axis=-1)
        xyxy[scale] *= factors[img[scale]]
    xyxy = B.clip(xyxy, shown_w[img], shown_h[img])
    if any(counts.values()):
        logger.info("%s: EXIF orientation and sizes: %s", index.annotation_file, counts)
    oriented = dataclasses.replace(
        index, widths=shown_w.astype(np.int32), heights=shown_h.astype(np.int32), ann_xyxy=xyxy, skipped=dict(index.skipped),
        memo={},
    )
    return oriented, counts


def verify_images(paths: Sequence[str | os.PathLike], workers: int | None = None, progress: bool = True) -> None:
    """Decode every image as ``datasets`` would; one error names every file that fails."""
    paths = [os.fspath(p) for p in paths]
    results = _map_chunks(_decode_chunk, paths, workers, progress, "decode images")
    _raise_bad([bad for r in results for bad in r], len(paths), "cannot be decoded")


def open_image(path: str | os.PathLike | BinaryIO, name: str | None = None):
    """Open an image as the model sees it: decoded, EXIF orientation applied, RGB; errors name the file (``name`` for a buffer)."""
    from PIL import Image, ImageOps

    name = name or (os.fspath(path) if isinstance(path, (str, os.PathLike)) else "an image buffer")
    try:
        with Image.open(path) as im:
            im.load()
            shown = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: image file not found. Check the image folder or remove the record.") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadImageError(
            f"{name}: cannot decode the image ({type(e).__name__}: {e}). Re-download or replace the file, or remove its record.", [name],
        ) from e
    shown = as_rgb(shown, name)
    if isinstance(path, (str, os.PathLike)):
        shown.filename = os.fspath(path)  # as an image PIL opened itself remembers its file
    return shown


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale as Pillow opens it (PNG, TIFF, PGM)


def as_rgb(image, name: str = "an image"):
    """An opened picture as 8-bit RGB, as it looks: 16-bit greyscale scaled to 8 bits (PIL's own conversion clips it, so a
    16-bit PNG turned white), float pictures in 0..1 scaled; alpha dropped, as the Qwen-VL processors drop it."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY or image.mode == "F":
        values = np.asarray(image)
        top = 1.0 if image.mode == "F" else 65535.0
        if values.size and (values.min() < 0 or values.max() > top or not np.isfinite(values).all()):
            raise BadImageError(f"{name}: a {image.mode} image with values from {values.min()} to {values.max()}, outside 0..{top:g}; "
                                "convert it to an 8-bit RGB or greyscale image first.", [name])
        grey = np.floor(values.astype(np.float64) * (255.0 / top) + 0.5).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def open_feature_image(value):
    """One value of a ``datasets`` Image column as the model sees it: a picture ``datasets`` decoded, made RGB, or
    ``{"path", "bytes"}`` opened with :func:`open_image` (EXIF orientation applied, RGB); errors name the file."""
    from io import BytesIO

    if not isinstance(value, dict):
        return as_rgb(value, getattr(value, "filename", None) or "an image")
    path = value.get("path")
    if path and (value.get("bytes") is None or os.path.isfile(path)):
        return open_image(path)
    return open_image(BytesIO(value["bytes"]), name=path or "an image embedded in the data set")


def undecoded(dataset, column: str = "images"):
    """``dataset`` with ``column`` (a list of ``datasets`` Images) read as ``{"path", "bytes"}``, not decoded.

    A cast rewrites the table: cheap on a split as built (1.2 s for 120k rows here), ten times
    slower after a shuffle or an interleave, so cast first. Returns ``dataset`` as it is when the
    column already does not decode.
    """
    import datasets

    if not dataset.features[column].feature.decode:
        return dataset
    return dataset.cast_column(column, datasets.List(datasets.Image(decode=False)))


def decode_named(dataset, column: str = "images"):
    """``dataset`` with its images decoded by :func:`open_feature_image` as rows are read (in training, by the data loader).

    ``datasets`` decodes with PIL's own errors, which name no file: a JPEG cut off after its
    header passes the build's header check and then stops training with "image file is
    truncated". Read this way, it raises :class:`BadImageError` naming the file. Rows read
    without ``column`` (``select_columns`` of the text) pass through.
    """
    def decode(batch: dict) -> dict:
        if column in batch:
            batch[column] = [[open_feature_image(value) for value in row] for row in batch[column]]
        return batch

    return undecoded(dataset, column).with_transform(decode)


# --- workers -----------------------------------------------------------------------------------


def _map_chunks(fn: Callable[[list[str]], object], paths: list[str], workers: int | None, progress: bool, desc: str) -> list:
    """``fn`` over chunks of ``paths`` in a thread pool (file reads overlap), in order, with a progress bar."""
    from tqdm.auto import tqdm

    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    results = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                results.append(fn(chunk))
                bar.update(len(chunk))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for chunk, result in zip(chunks, pool.map(fn, chunks)):
                    results.append(result)
                    bar.update(len(chunk))
    return results


def _mismatch_message(index: CocoIndex, mismatch: np.ndarray, sizes: tuple[np.ndarray, ...]) -> str:
    stored_w, stored_h, shown_w, shown_h, orientation = sizes
    bad = np.flatnonzero(mismatch)
    shown = "; ".join(
        f"{index.image_path(i)} (image id {index.image_ids[i]}): JSON {index.widths[i]}x{index.heights[i]}, "
        f"file {stored_w[i]}x{stored_h[i]} stored, {shown_w[i]}x{shown_h[i]} displayed (EXIF orientation {orientation[i]})"
        for i in bad[:_SHOWN_IN_ERRORS]
    )
    more = f"; and {len(bad) - _SHOWN_IN_ERRORS} more" if len(bad) > _SHOWN_IN_ERRORS else ""
    return (
        f"{index.annotation_file}: {len(bad)} of {index.num_images} images have a width x height that matches neither "
        f"their file's stored size nor its displayed (EXIF-oriented) size: {shown}{more}. Fix those records' width and "
        "height, use the image files that were annotated, or pass on_mismatch='rescale' to scale their boxes from the "
        "JSON size to the displayed size."
    )


def _raise_bad(bad: list[tuple[str, str]], total: int, what: str) -> None:
    if not bad:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:_SHOWN_IN_ERRORS])
    more = f"; and {len(bad) - _SHOWN_IN_ERRORS} more" if len(bad) > _SHOWN_IN_ERRORS else ""
    raise BadImageError(
        f"{len(bad)} of {total} image files {what}: {shown}{more}. Re-download or replace them, or remove their records from the annotation file.",
        [path for path, _ in bad],
    )


def _read_chunk(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    out = np.ones((3, len(paths)), dtype=np.int64)
    bad = []
    for k, path in enumerate(paths):
        try:
            out[:, k] = _read_header(path)
        except Exception as e:  # collected and raised together, naming every file
            bad.append((path, f"{type(e).__name__}: {e}"))
    return out[0], out[1], out[2], bad


def _decode_chunk(paths: list[str]) -> list[tuple[str, str]]:
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                im.getexif().get(ORIENTATION_TAG)  # datasets reads the tag after decoding; a broken one fails there
        except Exception as e:  # collected and raised together, naming every file
            bad.append((path, f"{type(e).__name__}: {e}"))
    return bad


# --- headers -----------------------------------------------------------------------------------


def _read_header(path: str) -> tuple[int, int, int]:
    """(width, height, orientation) of one file: the JPEG fast path, else PIL's own header reading."""
    with open(path, "rb") as f:
        fast = _jpeg_header(f)
    if fast is not None:
        return fast
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(ORIENTATION_TAG)
    return width, height, _effective(orientation)


def _effective(orientation) -> int:
    """The orientation exif_transpose acts on: 2-8, else 1 (no change)."""
    return orientation if isinstance(orientation, int) and 2 <= orientation <= 8 else 1


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SKIPPED = frozenset({0xC4, 0xDB, 0xDD, 0xFE, 0xE0, *range(0xE2, 0xF0)})  # segments PIL reads by their length
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_header(f) -> tuple[int, int, int] | None:
    """(width, height, orientation) of a plain JPEG from its markers, or None where only PIL can say.

    It reads what PIL's ``JpegImageFile`` and ``getexif`` read (the frame header, the Exif
    segment's IFD0, XMP only when Exif has no orientation) and gives up on anything unusual,
    so its answers are PIL's; ``tests/test_images.py`` checks it against PIL file by file.
    """
    if f.read(3) != b"\xff\xd8\xff":
        return None
    f.seek(2)
    size = exif = None
    xmp = False
    while True:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker, length = head[1], (head[2] << 8) | head[3]
        if marker == 0xDA:  # start of scan: PIL's header reading stops here
            break
        if length < 2:
            return None
        if marker in _SKIPPED:
            f.seek(length - 2, os.SEEK_CUR)
            continue
        if marker not in _SOF and marker != 0xE1:
            return None
        data = f.read(length - 2)
        if len(data) != length - 2:
            return None
        if marker == 0xE1:
            if data.startswith(b"Exif\x00\x00"):
                if exif is not None:
                    return None  # PIL joins several Exif segments
                exif = data[6:]
            elif data.startswith(_XMP):
                xmp = True
            continue
        if size is not None or len(data) < 6 or data[0] != 8 or data[5] not in (1, 3, 4):
            return None  # a second frame header, or one PIL refuses
        size = ((data[3] << 8) | data[4], (data[1] << 8) | data[2])
    if size is None or 0 in size or _too_big(size):
        return None
    orientation = _exif_orientation(exif) if exif is not None else 0
    if orientation is None or (orientation == 0 and xmp):
        return None  # XMP may carry the orientation when Exif does not
    return size[0], size[1], _effective(orientation)


def _too_big(size: tuple[int, int]) -> bool:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and size[0] * size[1] > limit  # PIL warns above it and refuses above twice it


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation entry of an Exif block's first IFD (0 when absent), or None where only PIL can say."""
    if len(tiff) < 8:
        return None
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None:
        return None
    (offset,) = struct.unpack_from(order + "L", tiff, 4)
    if offset < 8 or offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    end = offset + 2 + 12 * count
    if end + 4 > len(tiff):
        return None  # PIL reads a truncated IFD differently; let it
    found = None
    for entry in range(offset + 2, end, 12):
        tag, kind, n = struct.unpack_from(order + "HHL", tiff, entry)
        if tag == ORIENTATION_TAG:
            if found is not None or kind != 3 or n != 1:
                return None  # repeated, or not one SHORT
            (found,) = struct.unpack_from(order + "H", tiff, entry + 8)
    return 0 if found is None else found
