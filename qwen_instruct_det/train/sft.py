"""Fine-tuning with TRL's SFTTrainer and PEFT LoRA on the builder's prompt-completion rows.

``make_trainer`` turns three config dataclasses (ours for data and model parts, TRL's
``ModelConfig`` for the checkpoint and LoRA, TRL's ``SFTConfig`` for the recipe) into an
``SFTTrainer``: configurations mixed with ``interleave_datasets``, over-long samples dropped
and counted (never truncated: truncation can cut image tokens or answers), loss on the
completion only (TRL's default for prompt-completion data), LoRA on the linear layers of
the unfrozen parts. The model decides the box format of the targets (its family's, unless
``box_format`` asks otherwise), and the processor's image budget is the one the targets are
built with; both travel with the output in ``qid_config.json``, with the data set's category
names. ``qid train`` (``commands/train.py``) parses flags and YAML recipes into the configs
of ``config.py``; scaling out is accelerate's job (``accelerate launch -m qwen_instruct_det
train --config ...`` runs the same command on many devices).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..budget import ImageBudget
from ..data.builder import builder_kwargs as builder_kwargs_of
from ..data.images import decode_named, undecoded
from ..data.splits import split_files
from ..models.card import model_card
from ..models.config import OWN_FIELDS, QidModelConfig, box_format_for, model_type
from ..models.parts import format_summary, set_lora_targets, set_trainable_parts, trainable_summary
from .config import DataArguments, PartsArguments
from .mixture import builder_options, load_mixture, parse_mix

logger = logging.getLogger(__name__)


def target_options(processor, box_format: str) -> dict:
    """Builder options that make the targets in ``box_format`` on the processor's own resize (its budget and factor)."""
    return {"box_format": box_format, **ImageBudget.of(processor).as_options()}


def make_trainer(data: DataArguments, parts: PartsArguments, model_args, sft_config, model=None, processor=None, cache_dir=None):
    """An ``SFTTrainer`` ready to train, the :class:`QidModelConfig` that travels with its output, and the run's statistics.

    The configurations of ``data.mix`` are drawn by the epoch rule of :mod:`~qwen_instruct_det.train.mixture`; rows longer
    than ``max_length`` are left out and counted (their lengths measured once per built split and kept with it); the
    schedule (rows per epoch, samples, optimizer steps) is logged before the first step and saved with the run.
    """
    from trl import get_peft_config

    from ..models.loading import checkpoint_family, load_model, load_processor
    from .callbacks import CheckpointFiles, sft_trainer

    if data.eval_detection_images and not data.eval_split:
        raise ValueError(f"eval_detection_images={data.eval_detection_images} scores held-out images of eval_split, which is not set; "
                         "pass --eval_split validation (or set eval_detection_images 0).")
    if sft_config.train_sampling_strategy not in ("random", "group_by_length"):
        raise ValueError(f"train_sampling_strategy={sft_config.train_sampling_strategy!r}: the mixture draws each epoch itself; use "
                         "random (the default) or group_by_length (batches of rows of similar length, which pad less).")
    for split in filter(None, (data.train_split, data.eval_split)):  # the layout first, before any model file is read
        split_files(split, **builder_kwargs_of(data))
    if processor is None:
        processor = load_processor(model_args.model_name_or_path, parts.min_pixels, parts.max_pixels,
                                   trust_remote_code=getattr(model_args, "trust_remote_code", False))
    else:
        ImageBudget.set_on(processor, parts.min_pixels, parts.max_pixels)
    family = model_type(model) if model is not None else checkpoint_family(model_args.model_name_or_path,
                                                                           getattr(model_args, "trust_remote_code", False))
    box_format = box_format_for(family, data.box_format)
    targets = target_options(processor, box_format)  # the budget the processor trains with builds the targets
    with sft_config.main_process_first(desc="instruction data and token lengths"):  # rank 0 builds and measures; the others read
        train = _measured(data, data.train_split, processor, sft_config.max_length, cache_dir, targets)  # the data, checked
        evaluation = _measured(data, data.eval_split, processor, sft_config.max_length, cache_dir, targets) if data.eval_split else None
        longest = train.longest_answer()
        categories = train.categories
        scoring = _detection_scores(data, processor, box_format, categories, longest, sft_config, cache_dir, targets)
    if model is None:  # after the data: a mistake there stops before gigabytes of weights load
        model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation,
                           trust_remote_code=getattr(model_args, "trust_remote_code", False))
    arguments = {"data": asdict(data), "parts": asdict(parts), "model": asdict(model_args), "max_length": sft_config.max_length}
    packer = _packer(train, sft_config) if sft_config.packing else None
    sft_config.packing = False  # TRL refuses to pack image rows; the packer does it (train/packing.py)
    sft_config.max_length = None  # over-long rows were left out above; never let the collator truncate image tokens
    trainable = parts.trainable_parts()
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        set_lora_targets(peft_config, model, trainable, model_args)
    else:
        set_trainable_parts(model, trainable)
    qid_config = QidModelConfig(
        box_format=box_format, model_type=family, **ImageBudget.of(processor).as_options(), max_answer_tokens=longest,
        base_model=model_args.model_name_or_path, data=data.data_dir, display_name=data.display_name,
        categories=categories, train_configs=parse_mix(data.mix),
        builder_options={k: v for k, v in builder_options(data).items() if k not in OWN_FIELDS},
    )
    schedule = {"batch_size": sft_config.per_device_train_batch_size, "accumulation": sft_config.gradient_accumulation_steps,
                "processes": sft_config.world_size, "epochs": sft_config.num_train_epochs, "max_steps": sft_config.max_steps}
    if packer is not None:
        packer.plan_schedule(**schedule)
        schedule["packing"] = packer.summary()
    stats = {"dropped_long_samples": sum(p.dropped for p in train.parts), "train_rows": train.samples_per_epoch,
             "mixture": train.summary(**schedule), "arguments": arguments}
    if evaluation is not None:
        stats["eval_mixture"] = evaluation.summary()
    hub_token_out_of_args(sft_config)
    trainer = None
    files = CheckpointFiles(processor, qid_config, lambda: run_record(trainer, stats))
    trainer = sft_trainer()(model=model, args=sft_config, train_dataset=decode_named(train.dataset),
                            eval_dataset=evaluation.drawn(0) if evaluation is not None else None, processing_class=processor,
                            peft_config=peft_config, mixture=train, packer=packer, detection_scores=scoring, checkpoint_files=files)
    stats["trainable"] = trainable_summary(trainer.model)
    logger.info("trainable parameters per part:\n%s", format_summary(stats["trainable"]))
    logger.info("training data, %s split:\n%s", data.train_split, train.table(**schedule))
    return trainer, qid_config, stats


def _measured(data, split: str, processor, max_length: int | None, cache_dir, targets: dict):
    """The split's mixture with every row's token lengths measured and the rows longer than ``max_length`` left out."""
    mixture = load_mixture(data, split, cache_dir=cache_dir, **targets)
    mixture.measure(processor)
    mixture.keep_shorter(max_length)
    return mixture


def _packer(train, sft_config):
    """The packer of ``--packing true``: TRL's option names, whole rows of at most ``max_length`` tokens per sequence."""
    from .packing import Packer

    if sft_config.max_length is None:
        raise ValueError("--packing true packs rows into sequences of max_length tokens; set --max_length (e.g. 4096).")
    if sft_config.packing_strategy not in ("bfd", "bfd_split"):
        raise ValueError(f"packing_strategy={sft_config.packing_strategy!r} cuts rows across sequences, which would cut an image's "
                         "tokens from its pixels; qid packs whole rows: use packing_strategy bfd (the default).")
    if sft_config.padding_free:
        raise ValueError("padding_free is TRL's packing of text rows, not of image rows; drop --padding_free: --packing true "
                         "already trains without padding where flash attention is installed.")
    return Packer(train, sft_config.max_length)


def _detection_scores(data, processor, box_format: str, categories, longest: int, sft_config, cache_dir, targets: dict):
    """The held-out rows generated on at each evaluation (a seeded subset of the eval split's detection rows), or None."""
    if not data.eval_detection_images:
        return None
    import numpy as np

    from ..data.splits import crowd_regions, load_split
    from ..models.inference import default_max_new_tokens
    from .callbacks import DetectionScores

    options = builder_options(data, **targets)
    rows = load_split("detection", data.eval_split, cache_dir=cache_dir, **options)
    if data.eval_detection_images > len(rows):
        raise ValueError(f"eval_detection_images={data.eval_detection_images} is more than the {len(rows)} images of split "
                         f"{data.eval_split!r}; lower it to at most {len(rows)}.")
    pick = np.sort(np.random.default_rng(data.build_seed).choice(len(rows), data.eval_detection_images, replace=False))
    crowd = crowd_regions(data.eval_split, **builder_kwargs_of(data))
    return DetectionScores(list(undecoded(rows.select(pick))), processor, box_format, categories or None, default_max_new_tokens(longest),
                           sft_config.per_device_eval_batch_size, crowd)


def hub_token_out_of_args(args) -> None:
    """Move ``--hub_token`` from the trainer's arguments to ``HF_TOKEN`` for this process, where pushes still find it: the
    trainer pickles its arguments into ``training_args.bin`` in the output folder and in every checkpoint."""
    token = getattr(args, "hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = token
        args.hub_token = None


def run_record(trainer, stats: dict | None = None) -> dict:
    """What ``training_args.json`` holds: the trainer's arguments (plain values, ``max_length`` as given: the collator's is
    off, rows longer were left out), our arguments (``arguments``: data, parts, model and LoRA) and the run's statistics."""
    recipe = {k: v for k, v in trainer.args.to_dict().items() if isinstance(v, (str, int, float, bool, type(None)))}
    recipe.update(stats or {})
    recipe["packing"] = bool(recipe.get("mixture", {}).get("packing"))  # the trainer's own flag is off: TRL does not pack images
    if "arguments" in recipe:
        recipe["max_length"] = recipe["arguments"]["max_length"]
    recipe["world_size"] = trainer.args.world_size
    return recipe


def save_trained(trainer, processor, qid_config: QidModelConfig, stats: dict | None = None, output_dir: str | None = None) -> Path:
    """Save the adapter (or model), the processor, ``qid_config.json`` and the recipe with the run's ``stats`` together;
    with detection scores in the log, their curve too (``detection_curve.png``)."""
    import json

    out = Path(output_dir or trainer.args.output_dir)
    trainer.save_model(str(out))  # every process calls this (distributed saving needs them all)
    if not trainer.is_world_process_zero():
        return out
    processor.save_pretrained(str(out))
    qid_config.save(out)
    record = run_record(trainer, stats)
    (out / "training_args.json").write_text(json.dumps(record, indent=2, default=str))
    curve = [entry for entry in trainer.state.log_history if "eval_f1" in entry]
    if curve:
        from ..eval.curves import save_panels

        series = {name: [(entry["step"], entry[f"eval_{name}"]) for entry in curve] for name in ("f1", "precision", "recall", "AP50")}
        save_panels([("held-out detection by step", series)], out / "detection_curve.png")
    kind = "adapter" if (out / "adapter_config.json").is_file() else "model"
    model_card(out, kind, recipe=record)  # the library's card, in place of TRL's generic one
    return out
