"""qwen_instruct_det: COCO-format detection data as Qwen-VL instruction data, LoRA fine-tuning, scoring.

The package is one folder per stage, in the order data flows (``formats``, ``data``, ``eval``,
``models``, ``train``, then ``hub`` and ``visualize``; ``commands`` is the ``qid`` CLI on top):
see the README's layout section. The names below are the public API.

Importing the package registers its ``datasets`` builder (:func:`register_builder`, one entry
in a private table of ``datasets``, see ``data/registry.py``), so that
``datasets.load_dataset("qwen_instruct_det", "count", data_dir=...)`` works. Heavy libraries
(torch, transformers, trl) are imported only by the functions that need them.
"""

from __future__ import annotations

from .data.builder import QwenInstructDet, QwenInstructDetConfig
from .data.coco import CocoFormatError, load_coco
from .data.objects import TASKS
from .data.registry import register_builder
from .data.synthetic import make_synthetic_coco
from .eval.coco_map import coco_map
from .eval.detections import Detections
from .formats import BOX_FORMATS, get_box_format, normalize_label, parse_detections

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
