"""What travels with a model: ``qid_config.json``, the model's family and the box format and prompt it implies.

A folder written by ``qid train`` (and every ``checkpoint-N`` in it) holds ``qid_config.json``:
the box format, the image budget, the category names trained on, the other builder options the
rows were made with (``builder_options``: ``qid predict`` rebuilds a split with them, so it
predicts on the rows and truth the model was trained for) and the answer budget. Inference reads
it back: coordinates are only meaningful with the resize that made them. A plain checkpoint has
none; its ``config.model_type`` decides its box format (:data:`FAMILY_BOX_FORMATS`) and
:func:`zero_shot_prompt` the words it is asked in.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..budget import ImageBudget
from ..data.tasks import JSON_DETECTION_PROMPT
from ..formats import get_box_format

logger = logging.getLogger(__name__)

QID_CONFIG = "qid_config.json"
FAMILY_BOX_FORMATS = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5", "qwen3_vl": "qwen3", "qwen3_vl_moe": "qwen3"}
"""The box format each Qwen-VL generation answers in, by ``config.model_type``."""
OWN_FIELDS = ("data_dir", "box_format", "display_name", "min_pixels", "max_pixels", "resize_factor")
"""Builder options :class:`QidModelConfig` keeps in fields of their own (or not at all: the data folder is where it was)."""


@dataclass
class QidModelConfig:
    """What inference must know about how a model was trained (saved as ``qid_config.json``)."""

    box_format: str = "qwen2"
    model_type: str | None = None  # the model's family (config.model_type); box_format differs from its own only when asked
    min_pixels: int | None = None  # the image budget the targets were built with and the processor trained with
    max_pixels: int | None = None
    resize_factor: int | None = None  # patch size x merge size of that processor
    max_answer_tokens: int | None = None
    base_model: str | None = None
    data: str | None = None  # where the training data came from (a folder or a Hub dataset)
    display_name: str = "COCO"
    categories: list[str] = field(default_factory=list)  # the data set's own category names
    train_configs: dict[str, float] = field(default_factory=dict)
    detection_prompt: str | None = None  # a prompt to ask with instead of the data's ({categories} filled in); None: the data's
    builder_options: dict = field(default_factory=dict)  # every other builder option the rows were built with (categories, seed, ...)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / QID_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> QidModelConfig | None:
        path = Path(folder) / QID_CONFIG
        if not path.is_file():
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def row_options(self, **overrides) -> dict:
        """The builder options that remake the rows this model was trained on (``builder_options``, box format, display name
        and budget), ``overrides`` over them."""
        return {**self.builder_options, "display_name": self.display_name, "box_format": self.box_format,
                **(self.budget.as_options() if self.budget else {}), **overrides}

    def data_location(self, data_dir: str | None = None, annotation_files: dict | None = None, image_dirs: dict | None = None) -> dict:
        """Where the data is, as builder options: what is given, or (nothing given) where this model's training data was."""
        if data_dir or annotation_files or image_dirs:
            return {"data_dir": data_dir, "annotation_files": annotation_files, "image_dirs": image_dirs}
        if not (self.data or self.builder_options.get("annotation_files")):
            raise ValueError(f"the model ({self.base_model or 'a plain checkpoint'}) does not say which data it was trained on: pass "
                             "--data_dir (a COCO-layout folder, or annotation_files and image_dirs for another layout).")
        return {"data_dir": self.data, **{k: self.builder_options.get(k) for k in ("annotation_files", "image_dirs")}}

    @property
    def budget(self) -> ImageBudget | None:
        """The image budget the model was trained with (None when not recorded)."""
        return ImageBudget.from_options(self)


def model_type(model) -> str | None:
    """The ``config.model_type`` of a model (a PEFT-wrapped one too), e.g. ``qwen2_5_vl``."""
    return getattr(getattr(model, "config", None), "model_type", None)


def box_format_for(family: str | None, requested: str | None = None) -> str:
    """The box format to use with a model of ``family``: its own, or ``requested`` (warning loudly when they disagree)."""
    native = FAMILY_BOX_FORMATS.get(family or "")
    if requested is None:
        if native is None:
            raise ValueError(f"model type {family!r} is not a Qwen-VL family ({sorted(FAMILY_BOX_FORMATS)}), so it names no box format; "
                             "pass --box_format qwen2, qwen2_5 or qwen3.")
        return native
    get_box_format(requested)  # an unknown name fails here, with the valid ones
    if native is not None and requested != native:
        logger.warning("box format %r disagrees with the model: a %s model answers in %r. Targets and parsing will use %r as asked "
                       "(recorded in qid_config.json); drop --box_format to use the model's own.", requested, family, native, requested)
    return requested


def zero_shot_prompt(box_format: str) -> str | None:
    """The prompt template a base model of this box format is asked with; ``None`` keeps the data's prompt (qwen2)."""
    return JSON_DETECTION_PROMPT if box_format in ("qwen2_5", "qwen3") else None
