"""The configurations of a training run that are ours (TRL's ``ModelConfig``, ``SFTConfig`` and ``GRPOConfig`` hold the rest).

``DataArguments`` (which instruction data, with every builder option generated from the
builder's own fields), ``PartsArguments`` (the freeze flags of
:class:`~qwen_instruct_det.models.parts.FreezeOptions` and the image budget) and
``GrpoArguments``: the trainers in ``sft.py`` and ``grpo.py`` take them, as TRL's trainers take
their configs, and the ``qid train`` / ``qid grpo`` parsers are generated from them, so flags, a
YAML recipe and Python agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.builder import with_options
from ..models.parts import FreezeOptions


@dataclass
class _TrainingData:
    """Which instruction data to train on; the builder's options follow (declared once, in the builder)."""

    data_dir: str | None = field(default=None, metadata={"help": "COCO-2017-layout folder (qid synth writes one)."})
    mix: str = field(default="detection=1.0", metadata={"help": "Configurations and their shares, the first the anchor, e.g. 'detection=0.5,count=0.125,"
                                                               "full_region=0.125': an epoch holds every row of the first once and the others "
                                                               "at their share relative to it (see mix_epoch)."})
    mix_epoch: str = field(default="anchor", metadata={"help": "What one epoch holds: 'anchor' (every row of mix's first configuration once, "
                                                               "the others drawn at their share of it, afresh each epoch) or 'every_row' (every "
                                                               "row of every configuration once: the seed project's protocol; shares ignored)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split for evaluation loss (None: no evaluation during training); "
                                                                    "its mixture follows mix and mix_epoch, drawn once."})
    eval_detection_images: int = field(default=0, metadata={"help": "At each evaluation, generate on this many images of eval_split (a "
                                                                    "seeded subset) and log eval_f1, eval_precision, eval_recall and eval_AP50 "
                                                                    "beside the loss; metric_for_best_model f1 then picks the best "
                                                                    "checkpoint. 0: off."})
    box_format: str | None = field(default=None, metadata={"help": "Box format of the targets: qwen2, qwen2_5 or qwen3 (default: the model "
                                                                    "family's; a different one warns and is recorded)."})
    build_seed: int = field(default=0, metadata={"help": "Seed the instruction data is built (regions, subsets) and mixed with: the builder's seed."})


# The processor's budget (PartsArguments) builds the targets, so the builder's own budget fields are left out here.
DataArguments = with_options("DataArguments", _TrainingData, exclude=("seed", "box_format", "min_pixels", "max_pixels", "resize_factor"))


@dataclass
class BudgetOptions:
    """The processor's image budget, where a run overrides the model's own (declared once for SFT and GRPO)."""

    min_pixels: int | None = field(default=None, metadata={"help": "Processor min_pixels (default: the model's own: a qid folder's saved "
                                                                    "budget, else the checkpoint's); builds the targets too, and is saved with the model."})
    max_pixels: int | None = field(default=None, metadata={"help": "Processor max_pixels (default: the model's own: a qid folder's saved "
                                                                    "budget, else the checkpoint's); builds the targets too, and is saved with the model."})


@dataclass
class PartsArguments(BudgetOptions, FreezeOptions):
    """Which parts of the model train, and the processor's image budget."""


REWARDS = ("detection", "format")


@dataclass
class GrpoArguments(BudgetOptions, FreezeOptions):
    """The detection data, the rewards and the trainable parts of a GRPO run."""

    data_dir: str | None = field(default=None, metadata={"help": "COCO-2017-layout folder (qid synth writes one)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split for evaluation rewards (None: no evaluation during training)."})
    subset: int | None = field(default=None, metadata={"help": "Seeded random subset of N training images."})
    build_seed: int = field(default=0, metadata={"help": "Seed the instruction data is built with (subsets, prompt paraphrases): the builder's seed."})
    box_format: str | None = field(default=None, metadata={"help": "Box format (default: the one in the model's qid_config.json, else the model family's)."})
    display_name: str | None = field(default=None, metadata={"help": "Data set name in the 'no objects' answer (default: the model's, else COCO)."})
    rewards: list[str] = field(default_factory=lambda: list(REWARDS),
                               metadata={"help": "Reward functions, weighted by reward_weights in this order: detection, format."})
    detection_kind: str = field(default="f1", metadata={"help": "Detection reward: f1 (F1 at the threshold), iou (Visual-RFT: matched IoU / "
                                                                "max(n_truth, n_pred)) or map_length (VLM-R1: AP x min(1, n_truth / n_pred))."})
    iou_threshold: float = field(default=0.5, metadata={"help": "IoU at which a box matches a true box of its class."})
