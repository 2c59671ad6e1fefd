"""Reinforcement fine-tuning with TRL's GRPOTrainer and the verifiable rewards of ``rewards.py``.

``make_trainer`` starts from a ``qid train`` output folder (an adapter, or a full model; both
hold ``qid_config.json``) or a plain checkpoint, builds the ``detection`` configuration with
the model's own box format and image budget, and returns a ``GRPOTrainer`` whose rewards
read each row's ``objects``. An adapter folder keeps training its own adapter (TRL copies it
as the KL reference when ``beta`` > 0); a full model gets a new LoRA (``use_peft``) on the
unfrozen parts, or full fine-tuning of them. The output is saved the way ``qid train``
saves (``training.save_trained``), so ``qid predict``, ``qid merge`` and ``qid push`` read it
unchanged. ``main`` is the ``qid grpo`` entry point: flags, a YAML recipe (``--config``) and
Python agree. On a GPU, ``use_vllm: true`` with ``vllm_mode: colocate`` generates with vLLM
inside the training process; on the CPU, TRL's own ``generate`` does (``use_cpu``, no bf16).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .boxes import RESIZE_FACTOR
from .images import decode_named
from .modeling import (
    PARTS,
    QidModelConfig,
    box_format_for,
    format_summary,
    image_budget,
    model_type,
    set_lora_targets,
    set_trainable_parts,
    trainable_summary,
)
from .rewards import KINDS, detection_reward, format_reward

logger = logging.getLogger(__name__)

REWARDS = ("detection", "format")


@dataclass
class GrpoArguments:
    """The detection data, the rewards and the trainable parts of a GRPO run."""

    data_dir: str | None = field(default=None, metadata={"help": "COCO-2017-layout folder (qid synth writes one)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split for evaluation rewards (None: no evaluation during training)."})
    subset: int | None = field(default=None, metadata={"help": "Seeded random subset of N training images."})
    build_seed: int = field(default=0, metadata={"help": "Seed the instruction data is built with (subsets, prompt paraphrases): the builder's seed."})
    box_format: str | None = field(default=None, metadata={"help": "Box format (default: the one in the model's qid_config.json, else the model family's)."})
    display_name: str | None = field(default=None, metadata={"help": "Data set name in the 'no objects' answer (default: the model's, else COCO)."})
    min_pixels: int | None = field(default=None, metadata={"help": "Processor min_pixels (default: the model's own budget)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Processor max_pixels (default: the model's own budget)."})
    rewards: list[str] = field(default_factory=lambda: list(REWARDS),
                               metadata={"help": "Reward functions, weighted by reward_weights in this order: detection, format."})
    detection_kind: str = field(default="f1", metadata={"help": "Detection reward: f1 (F1 at the threshold), iou (Visual-RFT: matched IoU / "
                                                                "max(n_truth, n_pred)) or map_length (VLM-R1: AP x min(1, n_truth / n_pred))."})
    iou_threshold: float = field(default=0.5, metadata={"help": "IoU at which a box matches a true box of its class."})
    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower (no LoRA / no gradients there)."})
    freeze_merger: bool = field(default=True, metadata={"help": "Freeze the merger (the aligner between vision and language)."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model."})

    def trainable_parts(self) -> list[str]:
        frozen = {"vision": self.freeze_vision, "merger": self.freeze_merger, "language_model": self.freeze_llm}
        return [p for p in PARTS if not frozen[p]]


def load_start(name_or_path: str, args: GrpoArguments, model_args):
    """Trainable model, processor and :class:`QidModelConfig` of the starting point (a qid folder or a checkpoint)."""
    import json

    from .modeling import load_model, load_processor

    folder = Path(name_or_path)
    saved = QidModelConfig.load(folder) if folder.is_dir() else None
    qc = saved or QidModelConfig(base_model=name_or_path, min_pixels=None, max_pixels=None)
    if args.box_format and saved and args.box_format != saved.box_format:
        logger.warning("box_format %r differs from %r saved with %s; the model was trained on the saved one", args.box_format,
                       saved.box_format, folder)
    qc.box_format = args.box_format or qc.box_format
    qc.display_name = args.display_name or qc.display_name
    load = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
            "trust_remote_code": getattr(model_args, "trust_remote_code", False)}
    adapter = folder / "adapter_config.json"
    processor_from = name_or_path
    if adapter.is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter}: the adapter names no base model; set base_model_name_or_path in it.")
        model = PeftModel.from_pretrained(load_model(base, **load), str(folder), is_trainable=True)
        if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
            processor_from = base
    else:
        model = load_model(name_or_path, **load)
    processor = load_processor(processor_from, args.min_pixels or qc.min_pixels, args.max_pixels or qc.max_pixels,
                               trust_remote_code=load["trust_remote_code"])
    qc.min_pixels = processor.image_processor.size["shortest_edge"]
    qc.max_pixels = processor.image_processor.size["longest_edge"]
    qc.resize_factor = image_budget(processor)["resize_factor"]
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
    ip = processor.image_processor
    budget = {"min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"], "factor": ip.patch_size * ip.merge_size}
    made = {
        "detection": lambda: detection_reward(qc.box_format, args.iou_threshold, args.detection_kind, qc.categories or None, **budget),
        "format": lambda: format_reward(qc.box_format, end_ids, qc.display_name, **budget),
    }
    return [made[name]() for name in args.rewards]


def detection_rows(args: GrpoArguments, qc: QidModelConfig, split: str, cache_dir: str | None = None):
    """The ``detection`` configuration's split, with the columns GRPO and the rewards read."""
    from .builder import load_split

    if not args.data_dir:
        raise ValueError("data_dir is not set: point it at a COCO-2017-layout folder (qid synth writes one).")
    rows = load_split("detection", split, cache_dir=cache_dir, data_dir=args.data_dir, subset=args.subset, box_format=qc.box_format,
                      display_name=qc.display_name, min_pixels=qc.min_pixels, max_pixels=qc.max_pixels,
                      resize_factor=qc.resize_factor or RESIZE_FACTOR, seed=args.build_seed)
    return decode_named(rows.select_columns(["images", "prompt", "completion", "objects", "width", "height"]))  # broken files named


def make_trainer(args: GrpoArguments, model_args, grpo_config, cache_dir: str | None = None, reward_funcs: list | None = None):
    """A ``GRPOTrainer`` ready to train, and the :class:`QidModelConfig` that travels with its output.

    ``reward_funcs`` (TRL reward functions) replace the ones ``args.rewards`` names, for a reward of your own.
    """
    from peft import PeftModel
    from trl import GRPOTrainer, get_peft_config

    from .training import token_lengths

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is not set: give a qid train output folder or a checkpoint.")
    model, processor, qc = load_start(model_args.model_name_or_path, args, model_args)
    train = detection_rows(args, qc, args.train_split, cache_dir)
    if not qc.max_answer_tokens:  # a plain checkpoint: the answer budget from this data
        qc.max_answer_tokens = max(token_lengths(train, processor)[1], default=None)
    train = train.remove_columns("completion")
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
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=grpo_config, train_dataset=train, eval_dataset=evaluation,
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

    from .training import save_trained

    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        model.delete_adapter("ref")  # the frozen copy GRPOTrainer adds when an adapter trains on with beta > 0
    return save_trained(trainer, trainer.processing_class, qid_config, stats, output_dir)


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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
