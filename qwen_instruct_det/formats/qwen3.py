"""``qwen3``: Qwen3-VL's JSON boxes on the 0-1000 grid."""

from __future__ import annotations

import numpy as np

from .. import boxes as B
from .json_boxes import JsonFormat


class Qwen3Format(JsonFormat):
    """Qwen3-VL: JSON boxes on the 0-1000 grid."""

    name = "qwen3"

    def _scale(self, width, height, input_size):
        return 1.0 / B.GRID * np.array([width, height, width, height], dtype=np.float64)

    def _coords(self, boxes, width, height, input_size):
        return B.to_grid(boxes, width, height)
