"""``qid grpo``: TRL's parser over our GRPO arguments and TRL's ``ModelConfig`` and ``GRPOConfig``; train; save."""

from __future__ import annotations

import logging
from pathlib import Path

from ..train.config import GrpoArguments
from ..train.grpo import make_trainer, save

logger = logging.getLogger(__name__)


def make_parser():
    from trl import GRPOConfig, ModelConfig, TrlParser

    return TrlParser((GrpoArguments, ModelConfig, GRPOConfig))


def main(argv: list[str] | None = None) -> Path:
    """``qid grpo``: parse flags / ``--config recipe.yaml``, train with GRPO, save adapter + processor + qid_config.json."""
    args, model_args, grpo_config = make_parser().parse_args_and_config(args=argv)
    trainer, qid_config, stats = make_trainer(args, model_args, grpo_config)
    trainer.train(resume_from_checkpoint=grpo_config.resume_from_checkpoint)
    out = save(trainer, qid_config, stats)
    logger.info("saved to %s", out)
    return out
