"""The image budget: how a Qwen-VL processor resizes an image, the one home of that fact.

A Qwen-VL processor resizes every image to multiples of its resize factor (patch size x
merge size: 28 for Qwen2-VL and Qwen2.5-VL, 32 for Qwen3-VL) within ``min_pixels`` and
``max_pixels``. That resize decides how many image tokens a row costs and what
``qwen2_5`` coordinates (pixels of the resized image) mean, so building the targets,
training, the rewards, GRPO and prediction must all use the same budget: they all ask an
:class:`ImageBudget`. It is pure numpy (no transformers import); :meth:`ImageBudget.of`
and :meth:`ImageBudget.apply` read and set a processor's budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MIN_PIXELS = 56 * 56
"""Qwen2-VL's default ``min_pixels``, the one spelling of it in the project."""
MAX_PIXELS = 28 * 28 * 1280
"""Qwen2-VL's default ``max_pixels`` (1,003,520 pixels: 1280 image tokens of 28x28 pixels)."""
RESIZE_FACTOR = 28
"""Qwen2-VL's and Qwen2.5-VL's resize factor (14-px patches x 2x2 merge); Qwen3-VL's is 32."""
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int, width: int, factor: int = RESIZE_FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """The Qwen2-VL processor's resize: ``(height, width)`` as multiples of ``factor`` within the pixel budget.

    Mirrors ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`` (tested against it),
    so that the data path can compute the resized size without importing transformers.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"Image of {width}x{height} has an aspect ratio over {MAX_ASPECT_RATIO}, which Qwen2-VL's processor refuses; "
            "crop or pad it first."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageBudget:
    """A processor's image budget: ``min_pixels``, ``max_pixels`` and ``resize_factor`` (patch size x merge size)."""

    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    resize_factor: int = RESIZE_FACTOR

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels", "resize_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}; lower min_pixels or raise max_pixels.")

    @classmethod
    def of(cls, processor) -> ImageBudget:
        """The budget a Qwen-VL processor (or its image processor) resizes with."""
        ip = getattr(processor, "image_processor", processor)
        return cls(int(ip.size["shortest_edge"]), int(ip.size["longest_edge"]), int(ip.patch_size * ip.merge_size))

    @classmethod
    def from_options(cls, options) -> ImageBudget | None:
        """The budget named by an object's ``min_pixels``, ``max_pixels`` and ``resize_factor`` (builder options, a
        ``qid_config.json``); None when any of them is unset."""
        values = [getattr(options, name, None) for name in ("min_pixels", "max_pixels", "resize_factor")]
        return None if any(v is None for v in values) else cls(*(int(v) for v in values))

    def override(self, min_pixels: int | None = None, max_pixels: int | None = None) -> ImageBudget:
        """This budget with ``min_pixels``/``max_pixels`` replaced where given.

        When only one is given and it clashes with the other (a ``max_pixels`` below the checkpoint's ``min_pixels``),
        both take the given value, with a warning; two given values that clash are an error.
        """
        low = self.min_pixels if min_pixels is None else min_pixels
        high = self.max_pixels if max_pixels is None else max_pixels
        if low > high:
            if min_pixels is not None and max_pixels is not None:
                raise ValueError(f"min_pixels {min_pixels} is above max_pixels {max_pixels}; lower --min_pixels or raise --max_pixels.")
            given = min_pixels if min_pixels is not None else max_pixels
            kept, asked = ("min_pixels", "max_pixels") if max_pixels is not None else ("max_pixels", "min_pixels")
            logger.warning("the checkpoint's %s clashes with the %s asked for; using %d for both", kept, asked, given)
            low = high = given
        return ImageBudget(int(low), int(high), self.resize_factor)

    @classmethod
    def set_on(cls, processor, min_pixels: int | None = None, max_pixels: int | None = None) -> ImageBudget:
        """Give ``processor`` its own budget with ``min_pixels``/``max_pixels`` overridden where given; return that budget."""
        budget = cls.of(processor).override(min_pixels, max_pixels)
        budget.apply(processor)
        return budget

    def apply(self, processor) -> None:
        """Make ``processor`` resize with this budget (its resize factor is the processor's own and must agree)."""
        ip = getattr(processor, "image_processor", processor)
        own = int(ip.patch_size * ip.merge_size)
        if own != self.resize_factor:
            raise ValueError(f"the processor's resize factor is {own} (patch size x merge size), the budget's {self.resize_factor}; "
                             "a budget belongs to one model family.")
        ip.size = {**dict(ip.size), "shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    def as_options(self) -> dict[str, int]:
        """The budget as the builder's options and ``qid_config.json``'s fields: ``min_pixels``, ``max_pixels``, ``resize_factor``."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "resize_factor": self.resize_factor}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` one image is resized to: what ``qwen2_5`` coordinates refer to."""
        h, w = smart_resize(int(height), int(width), self.resize_factor, self.min_pixels, self.max_pixels)
        return w, h

    def resized_sizes(self, widths, heights) -> np.ndarray:
        """``(n, 2)`` resized ``(width, height)`` of many images at once (the same numbers as :func:`smart_resize`)."""
        w = np.asarray(widths, dtype=np.float64).reshape(-1)
        h = np.asarray(heights, dtype=np.float64).reshape(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            bad = (np.minimum(w, h) <= 0) | (np.maximum(w, h) / np.minimum(w, h) > MAX_ASPECT_RATIO)
        if bad.any():
            k = int(np.argmax(bad))
            if min(w[k], h[k]) <= 0:
                raise ValueError(f"Image of {w[k]:g}x{h[k]:g} has no pixels; give images of positive width and height.")
            smart_resize(int(h[k]), int(w[k]), self.resize_factor, self.min_pixels, self.max_pixels)  # raises, naming the size
        f = float(self.resize_factor)
        h_bar, w_bar = np.round(h / f) * f, np.round(w / f) * f
        big = h_bar * w_bar > self.max_pixels
        small = ~big & (h_bar * w_bar < self.min_pixels)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.sqrt((h * w) / self.max_pixels)
            grow = np.sqrt(self.min_pixels / (h * w))
            h_out = np.where(big, np.maximum(f, np.floor(h / shrink / f) * f), np.where(small, np.ceil(h * grow / f) * f, h_bar))
            w_out = np.where(big, np.maximum(f, np.floor(w / shrink / f) * f), np.where(small, np.ceil(w * grow / f) * f, w_bar))
        return np.stack([w_out, h_out], axis=-1).astype(np.int64)

    def image_tokens(self, widths, heights) -> np.ndarray:
        """How many ``<|image_pad|>`` tokens the processor expands each image to (one per merged patch group)."""
        sizes = self.resized_sizes(widths, heights)
        return (sizes[:, 0] // self.resize_factor) * (sizes[:, 1] // self.resize_factor)
