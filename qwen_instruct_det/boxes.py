"""Box math shared by every stage: conversions, the 0-1000 grid, IoU, visible fraction.

All functions take and return numpy arrays of shape ``(..., 4)`` and are vectorised; no
other module re-implements any of this (EXIF orientation of boxes included). Pixel boxes are ``xyxy`` floats; ``grid``
coordinates are integers on Qwen2-VL's 0-1000 grid. This module knows nothing about
text, datasets or models; how a processor resizes an image is ``budget.py``'s.
"""

from __future__ import annotations

import numpy as np

GRID = 1000


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` to ``[x1, y1, x2, y2]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    out = boxes.copy()
    out[..., 2] = boxes[..., 0] + boxes[..., 2]
    out[..., 3] = boxes[..., 1] + boxes[..., 3]
    return out


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[x1, y1, x2, y2]`` to COCO ``[x, y, w, h]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    out = boxes.copy()
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def _sizes(width, height) -> np.ndarray:
    """Broadcastable ``[w, h, w, h]`` array for per-box or scalar image sizes."""
    width = np.asarray(width, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    return np.stack([width, height, width, height], axis=-1)


# EXIF orientation 1-8 as "transpose (swap x and y), then flip x, then flip y" in the displayed
# frame; index 0 is unused. This is what PIL.ImageOps.exif_transpose (and so datasets) does.
_EXIF_SWAP = np.array([False, False, False, False, False, True, True, True, True])
_EXIF_FLIP_X = np.array([False, False, True, True, False, False, True, True, False])
_EXIF_FLIP_Y = np.array([False, False, False, True, True, False, False, True, True])


def _orientations(orientation) -> np.ndarray:
    o = np.asarray(orientation)
    if o.size and (not np.issubdtype(o.dtype, np.integer) or o.min() < 1 or o.max() > 8):
        raise ValueError(f"EXIF orientations are integers 1-8, got {np.unique(o)[:10].tolist()}; map a missing or invalid tag to 1.")
    return o.astype(np.int64)


def oriented_size(width, height, orientation) -> tuple[np.ndarray, np.ndarray]:
    """The displayed ``(width, height)`` of images stored ``width x height`` with these EXIF orientations."""
    swap = _EXIF_SWAP[_orientations(orientation)]
    width, height = np.asarray(width), np.asarray(height)
    return np.where(swap, height, width), np.where(swap, width, height)


def orient_boxes(xyxy: np.ndarray, orientation, width, height) -> np.ndarray:
    """Pixel xyxy boxes on the stored grid (``width x height``) to the EXIF-oriented, displayed grid.

    ``orientation``, ``width`` and ``height`` are scalars or one value per box.
    """
    o = _orientations(orientation)
    b = np.asarray(xyxy, dtype=np.float64)
    swap, flip_x, flip_y = _EXIF_SWAP[o], _EXIF_FLIP_X[o], _EXIF_FLIP_Y[o]
    width, height = np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)
    out_w, out_h = np.where(swap, height, width), np.where(swap, width, height)
    x1, y1 = np.where(swap, b[..., 1], b[..., 0]), np.where(swap, b[..., 0], b[..., 1])
    x2, y2 = np.where(swap, b[..., 3], b[..., 2]), np.where(swap, b[..., 2], b[..., 3])
    return np.stack(
        [
            np.where(flip_x, out_w - x2, x1),
            np.where(flip_y, out_h - y2, y1),
            np.where(flip_x, out_w - x1, x2),
            np.where(flip_y, out_h - y1, y2),
        ],
        axis=-1,
    )


def to_grid(boxes: np.ndarray, width, height) -> np.ndarray:
    """Pixel xyxy to integer grid coordinates: ``round(v / size * 1000)`` clamped to 0..1000."""
    scaled = np.asarray(boxes, dtype=np.float64) / _sizes(width, height) * GRID
    # floor(x + 0.5): rounds halves up, the same on every platform (np.round is half-to-even).
    return np.clip(np.floor(scaled + 0.5), 0, GRID).astype(np.int64)


def from_grid(grid: np.ndarray, width, height) -> np.ndarray:
    """Grid coordinates back to pixel xyxy (the centre of the grid step, clamped to the image)."""
    pixels = np.asarray(grid, dtype=np.float64) / GRID * _sizes(width, height)
    return clip(pixels, width, height)


def clip(boxes: np.ndarray, width, height) -> np.ndarray:
    """Clamp xyxy boxes to the image ``[0, width] x [0, height]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.minimum(np.maximum(boxes, 0.0), _sizes(width, height))


def area(boxes: np.ndarray) -> np.ndarray:
    """Area of xyxy boxes (zero for empty or inverted boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    w = np.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = np.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of ``a (..., N, 4)`` and ``b (..., M, 4)``: ``(..., N, M)``."""
    a = np.asarray(a, dtype=np.float64)[..., :, None, :]
    b = np.asarray(b, dtype=np.float64)[..., None, :, :]
    w = np.minimum(a[..., 2], b[..., 2])
    w -= np.maximum(a[..., 0], b[..., 0])
    np.maximum(w, 0.0, out=w)
    h = np.minimum(a[..., 3], b[..., 3])
    h -= np.maximum(a[..., 1], b[..., 1])
    np.maximum(h, 0.0, out=h)
    w *= h
    return w


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``a (..., N, 4)`` and ``b (..., M, 4)``: ``(..., N, M)``; 0 where the union is 0."""
    inter = intersection(a, b)
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def visible_fraction(objects: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """``area(object ∩ region) / area(object)`` for every pair: ``(..., N_objects, M_regions)``."""
    inter = intersection(objects, regions)
    obj_area = area(objects)[..., :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(obj_area > 0, inter / np.where(obj_area > 0, obj_area, 1.0), 0.0)


def reading_order(boxes: np.ndarray) -> np.ndarray:
    """Indices that sort boxes top to bottom, then left to right (stable)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.lexsort((boxes[:, 0], boxes[:, 1]))
