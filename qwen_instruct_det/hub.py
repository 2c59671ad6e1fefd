"""Hub folders and cards, and the one call that needs the network.

Everything that would be uploaded is first written to a local folder, so it can be read,
tested and loaded before anything leaves the machine:

- ``dataset_folder``: every configuration as Parquet with the image bytes embedded
  (``CONFIG/SPLIT-00000-of-00001.parquet``) and a dataset card whose YAML lists the
  configurations, so ``load_dataset("user/repo", "count")`` works with no library at all
  (and ``load_dataset(folder, "count")`` works locally).
- ``model_card``: the card of an adapter or merged model: base model, data, recipe, the
  box format and image budget, and the evaluation table when there is one.

``upload`` is the only function that talks to the Hub (through ``huggingface_hub``); the
token comes from the usual login (``hf auth login`` or ``HF_TOKEN``) and is never written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .data.tasks import TASK_DESCRIPTIONS

logger = logging.getLogger(__name__)

def dataset_folder(out_dir: str | os.PathLike, configs: list[str] | None = None, pretty_name: str = "Qwen-VL detection instructions",
                   cache_dir: str | None = None, **builder_kwargs) -> Path:
    """Write all configurations as Parquet (images embedded) plus a README card; return the folder."""
    from datasets.table import embed_table_storage

    from .data.splits import build_configs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for name, builder in build_configs(configs or "all", cache_dir=cache_dir, **builder_kwargs).items():
        summary[name] = {"rows": {}, "skipped": builder.skipped}
        for split in builder.info.splits:
            ds = builder.as_dataset(split=split)
            embedded = ds.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)
            (out / name).mkdir(exist_ok=True)
            embedded.to_parquet(str(out / name / f"{split}-00000-of-00001.parquet"))
            summary[name]["rows"][split] = len(ds)
    options = {k: v for k, v in builder_kwargs.items() if v is not None and k not in ("data_dir", "annotation_files", "image_dirs")}
    (out / "README.md").write_text(dataset_card(summary, pretty_name, options))
    return out


def dataset_card(summary: dict[str, dict], pretty_name: str, options: dict) -> str:
    """A dataset card whose YAML ``configs`` make every configuration loadable by name."""
    yaml = ["---", f"pretty_name: {pretty_name}", "task_categories:", "- image-text-to-text", "- object-detection",
            "tags:", "- qwen-vl", "- grounding", "- instruction-tuning", "configs:"]
    for i, (name, info) in enumerate(summary.items()):
        yaml.append(f"- config_name: {name}")
        if i == 0:
            yaml.append("  default: true")
        yaml.append("  data_files:")
        for split in info["rows"]:
            yaml += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    yaml.append("---")
    body = [
        f"# {pretty_name}", "",
        "Instruction-tuning data for Qwen-VL detection, built from a COCO-format data set with "
        "qwen_instruct_det. Load a configuration without any library:", "",
        "```python", "from datasets import load_dataset", f'ds = load_dataset("USER/REPO", "{next(iter(summary))}")', "```", "",
        "Rows are TRL prompt-completion conversations with one image (`images`, `prompt`, `completion`) plus the truth "
        "(`objects` as pixel `[x1, y1, x2, y2]` with category names, `width`, `height`, `image_id`) and, for region "
        "configurations, the probed `region` and the answer object's `visible_fraction`. Coordinates in text are on "
        "Qwen2-VL's 0-1000 grid unless the box format says otherwise.", "",
        "| configuration | what the answer states | " + " | ".join(f"{s} rows" for s in _splits(summary)) + " | skipped |",
        "| --- | --- | " + " | ".join("---:" for _ in _splits(summary)) + " | --- |",
    ]
    for name, info in summary.items():
        skipped = "; ".join(f"{split}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v) for split, counts in info["skipped"].items())
        rows = " | ".join(str(info["rows"].get(s, 0)) for s in _splits(summary))
        body.append(f"| `{name}` | {TASK_DESCRIPTIONS.get(name, '')} | {rows} | {skipped or '-'} |")
    body += ["", "## Build options", "", "```json", json.dumps(options, indent=2, default=str), "```", "",
             "Skipped records are counted above, never dropped silently. The images keep the license of the source data set.", ""]
    return "\n".join(yaml + [""] + body)


def _splits(summary: dict[str, dict]) -> list[str]:
    seen: list[str] = []
    for info in summary.values():
        for split in info["rows"]:
            if split not in seen:
                seen.append(split)
    return seen


MODEL_KINDS = ("adapter", "model")


def check_model_folder(folder: str | os.PathLike, kind: str) -> Path:
    """The folder, if it holds what ``kind`` needs (adapter: adapter_config.json + weights; model: config.json + weights)."""
    path = Path(folder)
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}.")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass the folder written by qid train (adapter) or qid merge (model).")
    config = "adapter_config.json" if kind == "adapter" else "config.json"
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    missing = [name for name, ok in ((config, (path / config).is_file()), ("weights (*.safetensors or *.bin)", bool(weights))) if not ok]
    if missing:
        hint = " It looks like an adapter: use 'qid push adapter'." if kind == "model" and (path / "adapter_config.json").is_file() else ""
        raise ValueError(f"{path}: not a {kind} folder, it has no {' and no '.join(missing)}.{hint} Pass the folder written by "
                         f"{'qid train (with LoRA)' if kind == 'adapter' else 'qid merge or qid train --use_peft false'}.")
    return path


def model_card(folder: str | os.PathLike, kind: str, recipe: dict | None = None, report: dict | None = None,
               out_dir: str | os.PathLike | None = None) -> Path:
    """Write README.md for an adapter or merged model folder (into ``out_dir``, default the folder) from its qid config, recipe and report."""
    from .eval.report import markdown_table
    from .models.config import QidModelConfig

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
            f"- box format: `{qc.box_format}`; image budget: min_pixels {qc.min_pixels}, max_pixels {qc.max_pixels} "
            "(use the same at inference: coordinates depend on the resize)",
            f"- longest training answer: {qc.max_answer_tokens} tokens", ""]
    if recipe:
        body += ["## Recipe", "", "```json", json.dumps(recipe, indent=2, default=str), "```", ""]
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


def upload(folder: str | os.PathLike, repo_id: str, repo_type: str = "model", private: bool = True, commit_message: str | None = None,
           extra_files: dict[str, str | os.PathLike] | None = None) -> str:
    """Create the repo if needed and upload the folder (plus ``extra_files``: path in repo -> local file) in one commit.

    The only network call of the library; the token comes from the usual login and is never read or written here.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}.")
    root = Path(folder)
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}
    files.update({name: Path(path) for name, path in (extra_files or {}).items()})
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.create_commit(repo_id=repo_id, repo_type=repo_type, commit_message=commit_message or "Upload with qwen_instruct_det",
                             operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()])
    return str(getattr(info, "commit_url", info))
