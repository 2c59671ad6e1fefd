"""``qid train``: TRL's parser over our data and parts configs and TRL's ``ModelConfig`` and ``SFTConfig``; train; save.

Flags, a YAML recipe (``--config``) and Python agree because the same dataclasses back all three,
as in TRL's own scripts. ``--tiny`` trains an offline tiny model from scratch instead of loading
``model_name_or_path`` (the CPU demo's path): it is built here and handed to the trainer, which
never knows the difference.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from ..models.config import FAMILY_BOX_FORMATS
from ..train.callbacks import unsafe_checkpoint_error
from ..train.config import DataArguments, PartsArguments
from ..train.mixture import build_mixture
from ..train.sft import make_trainer, save_trained

logger = logging.getLogger(__name__)


@dataclass
class TinyArguments:
    """The offline tiny model ``qid train --tiny`` trains instead of a checkpoint."""

    tiny: bool = field(default=False, metadata={"help": "Train an offline tiny model from scratch instead of loading model_name_or_path."})
    tiny_family: str = field(default="qwen2_vl", metadata={"help": "The tiny model's family: qwen2_vl, qwen2_5_vl or qwen3_vl."})


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    from .cli import HelpFormatter

    parser = TrlParser((DataArguments, PartsArguments, TinyArguments, ModelConfig, SFTConfig), prog="qid train", allow_abbrev=False, formatter_class=HelpFormatter,
                       description="Fine-tune a Qwen-VL model with TRL's SFTTrainer and PEFT LoRA on instruction data built from a COCO-format folder. Every option below can also be set in a YAML recipe: --config FILE (flags override it).")
    parser.add_argument("--config", default=argparse.SUPPRESS, help="A YAML recipe whose keys are the options below (configs/*.yaml).")
    return parser


def tiny_model_and_processor(data: DataArguments, parts: PartsArguments, family: str):
    """A tiny model of ``family`` and its processor, the tokenizer trained on the training rows' text (random weights)."""
    from ..models.tiny import TinyModelConfig, build_model, build_processor, row_texts

    tiny = TinyModelConfig(family=family)
    tiny.min_pixels = parts.min_pixels or tiny.min_pixels
    tiny.max_pixels = parts.max_pixels or tiny.max_pixels
    box_format = data.box_format or FAMILY_BOX_FORMATS[tiny.family]  # the tokenizer learns the targets' text
    texts = row_texts(build_mixture(data, data.train_split, box_format=box_format).select_columns(["prompt", "completion"]))
    processor = build_processor(texts, tiny)
    return build_model(processor, tiny), processor


def main(argv: list[str] | None = None) -> Path:
    """``qid train``: parse flags / ``--config recipe.yaml``, train, save adapter + processor + qid_config.json."""
    try:
        data, parts, tiny, model_args, sft_config = make_parser().parse_args_and_config(args=argv)
    except ValueError as e:
        if "bf16/gpu" not in str(e):
            raise
        raise ValueError("the recipe trains in bf16 on a GPU and this machine has none: run on a GPU, or add --use_cpu true --bf16 "
                         "false (and a small model: --tiny true for qid train).") from e
    model = processor = None
    if tiny.tiny:
        model, processor = tiny_model_and_processor(data, parts, tiny.tiny_family)
        model_args.model_name_or_path = f"qwen_instruct_det tiny {tiny.tiny_family} (random init)"
    trainer, qid_config, stats = make_trainer(data, parts, model_args, sft_config, model=model, processor=processor)
    try:
        trainer.train(resume_from_checkpoint=sft_config.resume_from_checkpoint)
    except pickle.UnpicklingError as e:  # torch's own message asks to load it unsafely and names no file
        raise unsafe_checkpoint_error(sft_config.resume_from_checkpoint, sft_config.output_dir) from e
    out = save_trained(trainer, trainer.processing_class, qid_config, stats)
    logger.info("saved to %s (%d over-long samples dropped)", out, stats["dropped_long_samples"])
    return out
