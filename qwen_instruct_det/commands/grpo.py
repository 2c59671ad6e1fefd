"""``qid grpo``: TRL's parser over our GRPO arguments and TRL's ``ModelConfig`` and ``GRPOConfig``; train; save."""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path

from ..train.callbacks import unsafe_checkpoint_error
from ..train.config import GrpoArguments
from ..train.grpo import make_trainer, save

logger = logging.getLogger(__name__)


def make_parser():
    from trl import GRPOConfig, ModelConfig, TrlParser

    from .cli import HelpFormatter

    parser = TrlParser((GrpoArguments, ModelConfig, GRPOConfig), prog="qid grpo", allow_abbrev=False, formatter_class=HelpFormatter,
                       description="Reinforce a Qwen-VL detector with TRL's GRPOTrainer and detection rewards. Every option below can also be set in a YAML recipe: --config FILE (flags override it).")
    parser.add_argument("--config", default=argparse.SUPPRESS, help="A YAML recipe whose keys are the options below (configs/*.yaml).")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """``qid grpo``: parse flags / ``--config recipe.yaml``, train with GRPO, save adapter + processor + qid_config.json."""
    try:
        args, model_args, grpo_config = make_parser().parse_args_and_config(args=argv)
    except ValueError as e:
        if "bf16/gpu" not in str(e):
            raise
        raise ValueError("the recipe trains in bf16 on a GPU and this machine has none: run on a GPU, or add --use_cpu true --bf16 "
                         "false (and a small model: --tiny true for qid train).") from e
    trainer, qid_config, stats = make_trainer(args, model_args, grpo_config)
    try:
        trainer.train(resume_from_checkpoint=grpo_config.resume_from_checkpoint)
    except pickle.UnpicklingError as e:  # torch's own message asks to load it unsafely and names no file
        raise unsafe_checkpoint_error(grpo_config.resume_from_checkpoint, grpo_config.output_dir) from e
    out = save(trainer, qid_config, stats)
    logger.info("saved to %s", out)
    return out
