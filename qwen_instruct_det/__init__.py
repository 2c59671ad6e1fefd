"""qwen_instruct_det: COCO-format detection data as Qwen-VL instruction data, LoRA fine-tuning, scoring.

Importing the package registers its ``datasets`` builder, so that
``datasets.load_dataset("qwen_instruct_det", "count", data_dir=...)`` works. Heavy
libraries (torch, transformers, trl) are imported only by the functions that need them.
"""

from __future__ import annotations

from ._registry import register_builder
from .builder import QwenInstructDet, QwenInstructDetConfig
from .coco import CocoFormatError, load_coco
from .evaluation import coco_map
from .formats import BOX_FORMATS, get_box_format, normalize_label, parse_detections
from .matching import Detections
from .synthetic import make_synthetic_coco
from .tasks import TASKS

__version__ = "0.1.0"

__all__ = [
    "BOX_FORMATS",
    "CocoFormatError",
    "Detections",
    "QwenInstructDet",
    "QwenInstructDetConfig",
    "TASKS",
    "coco_map",
    "get_box_format",
    "load_coco",
    "make_synthetic_coco",
    "normalize_label",
    "parse_detections",
    "register_builder",
]

register_builder()
