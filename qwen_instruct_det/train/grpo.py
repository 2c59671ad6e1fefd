"""Reinforcement fine-tuning with TRL's GRPOTrainer and the verifiable rewards of ``rewards.py``.

``make_trainer`` starts from a ``qid train`` output folder (an adapter, or a full model; both
hold ``qid_config.json``) or a plain checkpoint, builds the ``detection`` configuration with
the model's own box format and image budget, and returns a ``GRPOTrainer`` whose rewards
read each row's ``objects``. An adapter folder keeps training its own adapter (TRL copies it
as the KL reference when ``beta`` > 0); a full model gets a new LoRA (``use_peft``) on the
unfrozen parts, or full fine-tuning of them. The output is saved the way ``qid train``
saves (``sft.save_trained``), so ``qid predict``, ``qid merge`` and ``qid push`` read it
unchanged; ``qid grpo`` (``commands/grpo.py``) parses its flags and YAML recipe. On a GPU, ``use_vllm: true`` with ``vllm_mode: colocate`` generates with vLLM
inside the training process; on the CPU, TRL's own ``generate`` does (``use_cpu``, no bf16).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..budget import ImageBudget
from ..data.images import decode_named
from ..models.config import QidModelConfig, box_format_for, model_type
from ..models.parts import format_summary, set_lora_targets, set_trainable_parts, trainable_summary
from .config import REWARDS, GrpoArguments
from .rewards import KINDS, detection_reward, format_reward

logger = logging.getLogger(__name__)


def load_start(name_or_path: str, args: GrpoArguments, model_args):
    """Trainable model, processor and :class:`QidModelConfig` of the starting point (a qid folder or a checkpoint)."""
    from ..models.loading import load_trained

    model, processor, saved = load_trained(name_or_path, trainable=True, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                           dtype=model_args.dtype, attn_implementation=model_args.attn_implementation,
                                           trust_remote_code=getattr(model_args, "trust_remote_code", False))
    qc = saved or QidModelConfig(base_model=name_or_path)
    if args.box_format and saved and args.box_format != saved.box_format:
        logger.warning("box_format %r differs from %r saved with %s; the model was trained on the saved one", args.box_format,
                       saved.box_format, name_or_path)
    qc.box_format = args.box_format or qc.box_format
    qc.display_name = args.display_name or qc.display_name
    budget = ImageBudget.of(processor)
    qc.min_pixels, qc.max_pixels, qc.resize_factor = budget.min_pixels, budget.max_pixels, budget.resize_factor
    if saved is None:  # a plain checkpoint: the model's family decides, as in qid train and qid predict
        qc.model_type = model_type(model)
        qc.box_format = box_format_for(qc.model_type, args.box_format)
    return model, processor, qc


def end_token_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: the model's eos ids, the tokenizer's eos, <|im_end|> and padding (as TRL counts them)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    extra = [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return sorted({int(i) for i in ids + extra if i is not None and i != tokenizer.unk_token_id})


def make_rewards(args: GrpoArguments, qc: QidModelConfig, processor, end_ids: list[int]) -> list:
    """The reward functions named in ``args.rewards``, for this model's box format and image budget."""
    unknown = [r for r in args.rewards if r not in REWARDS]
    if unknown or not args.rewards:
        raise ValueError(f"rewards names {unknown or 'nothing'}; choose from {list(REWARDS)}.")
    if args.detection_kind not in KINDS:
        raise ValueError(f"detection_kind {args.detection_kind!r}: choose one of {KINDS}.")
    budget = ImageBudget.of(processor)
    made = {
        "detection": lambda: detection_reward(qc.box_format, args.iou_threshold, args.detection_kind, qc.categories or None, budget),
        "format": lambda: format_reward(qc.box_format, end_ids, qc.display_name, budget),
    }
    return [made[name]() for name in args.rewards]


def detection_rows(args: GrpoArguments, qc: QidModelConfig, split: str, cache_dir: str | None = None, built: bool = False):
    """The ``detection`` configuration's split, with the columns GRPO and the rewards read (``built``: the split as built)."""
    from ..data.splits import load_split

    location = qc.data_location(args.data_dir)  # the rows the model was trained on, from this data (default: its own)
    rows = load_split("detection", split, cache_dir=cache_dir, **qc.row_options(**location, subset=args.subset, seed=args.build_seed))
    if built:
        return rows
    return decode_named(rows.select_columns(["images", "prompt", "completion", "objects", "width", "height"]))  # broken files named


def _vllm_budget(grpo_config, budget: ImageBudget):
    """With ``use_vllm`` colocated, TRL's vLLM engine made to resize with ``budget`` (as the rewards and qid predict do); else nothing.

    In server mode the server resizes with what it was started with: start it on a folder whose processor has the budget.
    """
    import contextlib

    if not getattr(grpo_config, "use_vllm", False):
        return contextlib.nullcontext()
    if getattr(grpo_config, "vllm_mode", "colocate") != "colocate":
        logger.warning("vllm_mode %r: the vLLM server resizes images with the processor it loaded; start it on the trained folder "
                       "(its processor holds the budget %s) so that generation sees what the rewards score", grpo_config.vllm_mode,
                       budget.as_options())
        return contextlib.nullcontext()
    from ..models.vllm_engine import trl_vllm_budget

    return trl_vllm_budget(budget)


def make_trainer(args: GrpoArguments, model_args, grpo_config, cache_dir: str | None = None, reward_funcs: list | None = None):
    """A ``GRPOTrainer`` ready to train, and the :class:`QidModelConfig` that travels with its output.

    ``reward_funcs`` (TRL reward functions) replace the ones ``args.rewards`` names, for a reward of your own.
    """
    from peft import PeftModel
    from trl import get_peft_config

    from .callbacks import grpo_trainer
    from .lengths import token_lengths
    from .sft import hub_token_out_of_args

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is not set: give a qid train output folder or a checkpoint.")
    model, processor, qc = load_start(model_args.model_name_or_path, args, model_args)
    if not qc.max_answer_tokens:  # a plain checkpoint: the answer budget from this data
        answers = token_lengths(detection_rows(args, qc, args.train_split, cache_dir, built=True), processor)[1]
        qc.max_answer_tokens = int(answers.max()) if len(answers) else None
    train = detection_rows(args, qc, args.train_split, cache_dir).remove_columns("completion")
    evaluation = detection_rows(args, qc, args.eval_split, cache_dir).remove_columns("completion") if args.eval_split else None
    peft_config = get_peft_config(model_args)
    if isinstance(model, PeftModel):
        if peft_config is not None:
            logger.info("%s is an adapter: training it further; the lora_* settings are not used", model_args.model_name_or_path)
        peft_config = None
    elif peft_config is not None:
        set_lora_targets(peft_config, model, args.trainable_parts(), model_args)
    else:
        set_trainable_parts(model, args.trainable_parts())
    reward_funcs = reward_funcs or make_rewards(args, qc, processor, end_token_ids(model, processor.tokenizer))
    hub_token_out_of_args(grpo_config)
    with _vllm_budget(grpo_config, qc.budget or ImageBudget.of(processor)):
        trainer = grpo_trainer()(model=model, reward_funcs=reward_funcs, args=grpo_config, train_dataset=train, eval_dataset=evaluation,
                              processing_class=processor, peft_config=peft_config)
    summary = trainable_summary(trainer.model)
    logger.info("trainable parameters per part:\n%s", format_summary(summary))
    stats = {"train_rows": len(train), "trainable": summary, "grpo_start": model_args.model_name_or_path,
                         "grpo_rewards": [f.__name__ for f in reward_funcs], "grpo_iou_threshold": args.iou_threshold}
    qc.data = args.data_dir
    return trainer, qc, stats


def save(trainer, qid_config: QidModelConfig, stats: dict | None = None, output_dir: str | None = None) -> Path:
    """Save like ``qid train`` (adapter or model, processor, qid_config.json), without TRL's KL reference adapter."""
    from peft import PeftModel

    from .sft import save_trained

    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        model.delete_adapter("ref")  # the frozen copy GRPOTrainer adds when an adapter trains on with beta > 0
    return save_trained(trainer, trainer.processing_class, qid_config, stats, output_dir)
