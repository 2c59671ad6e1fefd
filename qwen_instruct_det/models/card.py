"""The card of a trained adapter or model: base, data, categories, box format, image budget, the recipe in a few lines, scores.

``qid train`` writes it into its output (in place of TRL's generic card), ``qid merge`` into the
merged model, ``qid push`` into the staged folder; all three read the same ``qid_config.json`` and
``training_args.json``, so they agree.
"""

from __future__ import annotations

import os
from pathlib import Path


def recipe_lines(recipe: dict) -> list[str]:
    """The few settings that describe a run, from its ``training_args.json`` (what is missing is left out)."""
    arguments = recipe.get("arguments", {})
    data, parts, model = arguments.get("data", {}), arguments.get("parts", {}), arguments.get("model", {})
    mixture = recipe.get("mixture", {})
    lines = []
    if data.get("mix"):
        lines.append(f"- mix `{data['mix']}`, epoch rule `{data.get('mix_epoch', 'anchor')}`: "
                     f"{mixture.get('samples_per_epoch', '?'):,} samples an epoch" if isinstance(mixture.get("samples_per_epoch"), int)
                     else f"- mix `{data['mix']}`")
    steps = mixture.get("optimizer_steps") or recipe.get("max_steps")
    lines.append(f"- {recipe.get('num_train_epochs', '?')} epochs / {steps} optimizer steps; batch {recipe.get('per_device_train_batch_size', '?')}"
                 f" x accumulation {recipe.get('gradient_accumulation_steps', '?')} x {recipe.get('world_size', 1)} processes")
    lines.append(f"- learning rate {recipe.get('learning_rate', '?')} ({recipe.get('lr_scheduler_type', '?')}), "
                 f"max_length {arguments.get('max_length', recipe.get('max_length'))} (rows longer are left out, "
                 f"{recipe.get('dropped_long_samples', 0)} were)")
    if model.get("use_peft"):
        lines.append(f"- LoRA r {model.get('lora_r')} / alpha {model.get('lora_alpha')} / dropout {model.get('lora_dropout')}")
    trained = [name for name, flag in (("vision", "freeze_vision"), ("merger", "freeze_merger"), ("language model", "freeze_llm"))
               if flag in parts and not parts[flag]]
    if parts:
        lines.append(f"- trained parts: {', '.join(trained) or 'none'}")
    return lines


def model_card(folder: str | os.PathLike, kind: str, recipe: dict | None = None, report: dict | None = None,
               out_dir: str | os.PathLike | None = None) -> Path:
    """Write README.md for an adapter or merged model folder (into ``out_dir``, default the folder) from its qid config, recipe and report."""
    from ..eval.report import markdown_table
    from .config import QidModelConfig

    out = Path(folder)
    qc = QidModelConfig.load(out) or QidModelConfig()
    base = qc.base_model or "unknown"
    yaml = ["---", "library_name: peft" if kind == "adapter" else "library_name: transformers", f"base_model: {base}",
            "pipeline_tag: image-text-to-text", "tags:", "- qwen-vl", "- object-detection", "- grounding", "- trl", "- sft", "---"]
    what = "A LoRA adapter" if kind == "adapter" else "A fine-tuned model (LoRA merged into the base)"
    body = [f"# {out.name}", "", f"{what} for detection with Qwen-VL grounding output, trained with TRL's SFTTrainer "
            "on instruction data built by qwen_instruct_det.", "",
            f"- base model: `{base}`",
            f"- data: `{qc.data or 'not recorded'}` ({qc.display_name}); configurations and ratios: {qc.train_configs or 'not recorded'}",
            f"- categories: {', '.join(f'`{c}`' for c in qc.categories) or 'not recorded'}",
            f"- box format: `{qc.box_format}`; image budget: min_pixels {qc.min_pixels}, max_pixels {qc.max_pixels} "
            "(use the same at inference: coordinates depend on the resize)",
            f"- longest training answer: {qc.max_answer_tokens} tokens", ""]
    if recipe:
        body += ["## Recipe", ""] + recipe_lines(recipe) + ["", "Every argument of the run: `training_args.json`.", ""]
    if report:
        m = report.get("coco_map", {})
        body += ["## Evaluation", "", f"On {report.get('images', '?')} held-out images:", "", markdown_table(report["det_iou50"]), "",
                 f"COCO mAP (pycocotools): AP {m.get('AP', 0):.3f}, AP50 {m.get('AP50', 0):.3f}, AP75 {m.get('AP75', 0):.3f}", ""]
    else:
        body += ["## Evaluation", "", "Not evaluated yet: run `qid predict` and `qid evaluate`.", ""]
    target = Path(out_dir) if out_dir is not None else out
    target.mkdir(parents=True, exist_ok=True)
    (target / "README.md").write_text("\n".join(yaml + [""] + body))
    return target / "README.md"
