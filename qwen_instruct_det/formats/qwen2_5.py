"""``qwen2_5``: Qwen2.5-VL's JSON boxes in absolute pixels of the image as the processor resized it (``input_size``)."""

from __future__ import annotations

import numpy as np

from .json_boxes import JsonFormat


class Qwen2_5Format(JsonFormat):
    """Qwen2.5-VL: JSON boxes in absolute pixels of the processor-resized image."""

    name = "qwen2_5"
    needs_input_size = True

    @staticmethod
    def _input_sizes(input_size) -> np.ndarray:
        if input_size is None:
            raise ValueError(
                "box format 'qwen2_5' needs input_size=(width, height), the image size after the processor's "
                "resize (qwen_instruct_det.budget.ImageBudget.resized_size gives it)."
            )
        return np.asarray(input_size, dtype=np.float64).reshape(-1, 2)

    def _scale(self, width, height, input_size):
        (in_w, in_h), = self._input_sizes(input_size)
        return np.array([width / in_w, height / in_h, width / in_w, height / in_h])

    def _coords(self, boxes, widths, heights, input_sizes):
        sizes = self._input_sizes(input_sizes)
        in_w, in_h = sizes[:, 0], sizes[:, 1]
        w = np.asarray(widths, dtype=np.float64)
        h = np.asarray(heights, dtype=np.float64)
        scaled = boxes * np.stack([in_w / w, in_h / h, in_w / w, in_h / h], axis=-1)
        limit = np.stack([in_w, in_h, in_w, in_h], axis=-1)
        return np.clip(np.floor(scaled + 0.5), 0, limit).astype(np.int64)
