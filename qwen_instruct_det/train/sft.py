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
from pathlib import Path

from ..budget import ImageBudget
from ..data.builder import builder_kwargs as builder_kwargs_of
from ..data.images import decode_named, undecoded
from ..data.objects import TASKS
from ..data.splits import category_names
from ..models.config import QidModelConfig, box_format_for, model_type
from ..models.parts import format_summary, set_lora_targets, set_trainable_parts, trainable_summary
from .config import DataArguments, PartsArguments

logger = logging.getLogger(__name__)


def parse_mix(mix: str) -> dict[str, float]:
    """'detection=0.6,count=0.4' (or 'detection,count' for equal parts) to normalised ratios."""
    ratios: dict[str, float] = {}
    for item in [m.strip() for m in mix.split(",") if m.strip()]:
        name, _, value = item.partition("=")
        if name not in TASKS:
            raise ValueError(f"mix names {name!r}; choose from {list(TASKS)}.")
        try:
            ratios[name] = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"mix ratio for {name!r} must be a number, got {value!r}.") from None
        if ratios[name] <= 0:
            raise ValueError(f"mix ratio for {name!r} must be positive.")
    if not ratios:
        raise ValueError("mix is empty; give at least one configuration, e.g. 'detection=1.0'.")
    total = sum(ratios.values())
    return {k: v / total for k, v in ratios.items()}


def build_mixture(data: DataArguments, split: str, cache_dir: str | None = None, **builder_kwargs):
    """The configurations of ``data.mix`` for ``split``, interleaved with their ratios (seeded).

    Images are opened with :func:`images.open_image` as rows are read, so a file that cannot be
    decoded mid-training is named (:func:`images.decode_named`).

    ``builder_kwargs`` (e.g. ``box_format``, ``min_pixels``, ``max_pixels``) go to every configuration's builder.
    """
    import datasets

    from ..data.splits import load_split

    if not data.data_dir:
        raise ValueError("data_dir is not set: point it at a COCO-2017-layout folder (qid synth writes one).")
    ratios = parse_mix(data.mix)
    columns = ["images", "prompt", "completion", "task", "width", "height"]
    options = {**builder_kwargs_of(data), "seed": data.build_seed}
    if data.box_format is not None:
        options["box_format"] = data.box_format
    options.update(builder_kwargs)
    # images cast to undecoded before the shuffle (ten times cheaper), decoded by open_image when read (a broken file is named)
    parts = [undecoded(load_split(name, split, cache_dir=cache_dir, **options).select_columns(columns)) for name in ratios]
    if len(parts) == 1:
        return decode_named(parts[0].shuffle(seed=data.build_seed))
    mixed = datasets.interleave_datasets(parts, probabilities=list(ratios.values()), seed=data.build_seed, stopping_strategy="all_exhausted")
    return decode_named(mixed)


def target_options(processor, box_format: str) -> dict:
    """Builder options that make the targets in ``box_format`` on the processor's own resize (its budget and factor)."""
    return {"box_format": box_format, **ImageBudget.of(processor).as_options()}


def token_lengths(dataset, processor) -> tuple[list[int], list[int]]:
    """(whole-sample, answer) token counts per row, image tokens included, without decoding images."""
    tok = processor.tokenizer
    prompts, answers = [], []
    n_image = ImageBudget.of(processor).image_tokens(dataset["width"], dataset["height"]).tolist()
    for row in dataset.select_columns(["prompt", "completion"]):
        prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        prompts.append(prompt)
        answers.append(full[len(prompt):])
    p_len = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    a_len = [len(ids) for ids in tok(answers, add_special_tokens=False)["input_ids"]]
    return [p + a + n - 1 for p, a, n in zip(p_len, a_len, n_image)], a_len


def drop_long(dataset, processor, max_length: int | None):
    """Rows that fit ``max_length`` tokens; returns (dataset, number dropped, longest answer in tokens)."""
    total, answer = token_lengths(dataset, processor)
    longest = max(answer) if answer else 0
    if max_length is None:
        return dataset, 0, longest
    keep = [i for i, n in enumerate(total) if n <= max_length]
    dropped = len(total) - len(keep)
    if dropped:
        logger.warning("dropped %d of %d samples longer than max_length=%d tokens (image tokens included); "
                       "raise max_length or lower max_pixels to keep them", dropped, len(total), max_length)
    kept_answers = [answer[i] for i in keep]
    return dataset.select(keep), dropped, max(kept_answers) if kept_answers else 0


def make_trainer(data: DataArguments, parts: PartsArguments, model_args, sft_config, model=None, processor=None, cache_dir=None):
    """An ``SFTTrainer`` ready to train, the :class:`QidModelConfig` that travels with its output, and the run's statistics."""
    from trl import SFTTrainer, get_peft_config

    from ..models.loading import load_model, load_processor

    categories = category_names(data.train_split, **builder_kwargs_of(data))  # the data is checked before any model loads
    if processor is None:
        processor = load_processor(model_args.model_name_or_path, parts.min_pixels, parts.max_pixels,
                                   trust_remote_code=getattr(model_args, "trust_remote_code", False))
    else:
        ImageBudget.set_on(processor, parts.min_pixels, parts.max_pixels)
    if model is None:
        model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation,
                           trust_remote_code=getattr(model_args, "trust_remote_code", False))
    family = model_type(model)
    box_format = box_format_for(family, data.box_format)
    targets = target_options(processor, box_format)  # the budget the processor trains with builds the targets
    train = build_mixture(data, data.train_split, cache_dir=cache_dir, **targets)
    train, dropped, longest = drop_long(train, processor, sft_config.max_length)
    evaluation = None
    if data.eval_split:
        evaluation, _, _ = drop_long(build_mixture(data, data.eval_split, cache_dir=cache_dir, **targets), processor, sft_config.max_length)
    sft_config.max_length = None  # over-long rows were dropped above; never let the collator truncate image tokens
    trainable = parts.trainable_parts()
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        set_lora_targets(peft_config, model, trainable, model_args)
    else:
        set_trainable_parts(model, trainable)
    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=train, eval_dataset=evaluation, processing_class=processor,
                         peft_config=peft_config)
    summary = trainable_summary(trainer.model)
    logger.info("trainable parameters per part:\n%s", format_summary(summary))
    stats = {"dropped_long_samples": dropped, "train_rows": len(train), "trainable": summary}
    qid_config = QidModelConfig(
        box_format=box_format, model_type=family, **ImageBudget.of(processor).as_options(), max_answer_tokens=longest,
        base_model=model_args.model_name_or_path, data=data.data_dir, display_name=data.display_name,
        categories=categories,
        train_configs=parse_mix(data.mix),
    )
    return trainer, qid_config, stats


def save_trained(trainer, processor, qid_config: QidModelConfig, stats: dict | None = None, output_dir: str | None = None) -> Path:
    """Save the adapter (or model), the processor, ``qid_config.json`` and the recipe with the run's ``stats`` together."""
    import json

    out = Path(output_dir or trainer.args.output_dir)
    trainer.save_model(str(out))  # every process calls this (distributed saving needs them all)
    if not trainer.is_world_process_zero():
        return out
    processor.save_pretrained(str(out))
    qid_config.save(out)
    recipe = {k: v for k, v in trainer.args.to_dict().items() if isinstance(v, (str, int, float, bool, type(None)))}
    recipe.update(stats or {})
    recipe["world_size"] = trainer.args.world_size
    (out / "training_args.json").write_text(json.dumps(recipe, indent=2, default=str))
    return out
