"""The folders that would be uploaded, built locally first, whole or not at all.

``dataset_folder`` writes every configuration as sharded Parquet with the image bytes embedded and
a card; ``model_folder`` links the files a model repo holds into a staging folder beside the
library's card. Both build in a hidden sibling and take the target's place only when complete
(:func:`~qwen_instruct_det.data.disk.atomic_folder`), so an interrupted run never leaves a folder
that reads as complete and a rerun leaves no stale file.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from ..data.disk import FOLDER_MARKER, atomic_folder
from ..models.card import model_card
from .cards import dataset_card
from .parquet import BATCH_ROWS, DEFAULT_SHARD_BYTES, write_split

MODEL_KINDS = ("adapter", "model")
# what a model repo holds, top level only: weights, configs, tokenizer and processor files, qid_config.json, the run's record
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.bin", "*.json", "*.jinja", "merges.txt",
               "vocab.txt", "*.model", "detection_curve.png")
NEVER = ("training_args.bin", "README.md", FOLDER_MARKER)  # a pickle of the run's arguments; the source's own card (replaced)
CHECKPOINT_FILES = ("checkpoint-*/*",)


def dataset_folder(out_dir: str | os.PathLike, configs: list[str] | None = None, pretty_name: str = "Qwen-VL detection instructions",
                   cache_dir: str | None = None, repo_id: str | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                   batch_rows: int = BATCH_ROWS, **builder_kwargs) -> Path:
    """Write the configurations as Parquet shards (images embedded) plus a README card into ``out_dir``; return it.

    Memory holds one batch of rows at a time. ``folder_summary(out_dir)`` gives the rows and bytes of each configuration.
    """
    from ..data.builder import option_fields
    from ..data.splits import config_names, prepared, split_of

    with atomic_folder(out_dir, "qid push dataset") as (folder, info):
        summary: dict[str, dict] = {}
        first = None
        for name in config_names(configs or "all"):
            builder = prepared(name, cache_dir, **builder_kwargs)
            first = first or builder
            files = builder.split_files()
            summary[name] = {"rows": {}, "bytes": {}, "shards": {}, "skipped": builder.skipped}
            for split in builder.info.splits:
                shards = write_split(split_of(builder, split), folder / name, split, files[split][1],
                                     builder.config.allow_outside_image_dir, max_shard_bytes, batch_rows)
                summary[name]["rows"][split] = builder.info.splits[split].num_examples
                summary[name]["bytes"][split] = sum(shard.stat().st_size for shard in shards)
                summary[name]["shards"][split] = len(shards)
        cfg = first.config
        options = {f.name: getattr(cfg, f.name) for f in option_fields()
                   if f.name not in ("annotation_files", "image_dirs") and getattr(cfg, f.name) is not None}
        source = Path(cfg.data_dir).name if cfg.data_dir else ", ".join(Path(a).name for a in (cfg.annotation_files or {}).values())
        categories = next(iter(first.categories.values()), [])
        (folder / "README.md").write_text(dataset_card(summary, pretty_name, options, repo_id, categories, source))
        info.update(configs=summary, categories=categories)
    return Path(out_dir)


def folder_summary(folder: str | os.PathLike) -> dict:
    """Rows, bytes and shards of each configuration of a folder ``dataset_folder`` wrote, and the total bytes."""
    info = json.loads((Path(folder) / FOLDER_MARKER).read_text())
    configs = info.get("configs", {})
    return {"configs": configs, "total_bytes": sum(sum(c["bytes"].values()) for c in configs.values())}


def check_model_folder(folder: str | os.PathLike, kind: str) -> Path:
    """The folder, if it holds what ``kind`` needs (adapter: adapter_config.json + weights; model: config.json + weights)."""
    path = Path(folder)
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}.")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass the folder written by qid train (adapter) or qid merge (model).")
    config = "adapter_config.json" if kind == "adapter" else "config.json"
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.name != "training_args.bin"]
    missing = [name for name, ok in ((config, (path / config).is_file()), ("weights (*.safetensors or *.bin)", bool(weights))) if not ok]
    if missing:
        hint = " It looks like an adapter: use 'qid push adapter'." if kind == "model" and (path / "adapter_config.json").is_file() else ""
        raise ValueError(f"{path}: not a {kind} folder, it has no {' and no '.join(missing)}.{hint} Pass the folder written by "
                         f"{'qid train (with LoRA)' if kind == 'adapter' else 'qid merge or qid train --use_peft false'}.")
    return path


def model_files(folder: str | os.PathLike, include_checkpoints: bool = False) -> list[str]:
    """The files of a training output a model repo holds (relative paths): weights, configs, processor, ``qid_config.json``,
    ``training_args.json``; never ``training_args.bin`` (a pickle of the run's arguments), optimizer or scheduler state, or
    ``checkpoint-*`` folders, unless ``include_checkpoints`` (then their files, but still no pickled arguments)."""
    root = Path(folder)
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in NEVER:
            continue
        rel = path.relative_to(root).as_posix()
        if "/" not in rel and any(fnmatch.fnmatch(rel, pattern) for pattern in MODEL_FILES):
            out.append(rel)
        elif include_checkpoints and any(fnmatch.fnmatch(rel, pattern) for pattern in CHECKPOINT_FILES):
            out.append(rel)
    return out


def model_folder(source: str | os.PathLike, kind: str, staging: str | os.PathLike, recipe: dict | None = None, report: dict | None = None,
                 include_checkpoints: bool = False) -> Path:
    """Stage what an adapter or model repo receives: the source's files (:func:`model_files`, linked, not copied) and the
    library's card. The source folder is not changed."""
    source = check_model_folder(source, kind).resolve()
    staging = Path(staging)
    if staging.resolve() == source or source in staging.resolve().parents:
        raise ValueError(f"--folder {staging} is the source folder or inside it; the upload is staged elsewhere so the source stays as it is.")
    if recipe is None and (source / "training_args.json").is_file():
        recipe = json.loads((source / "training_args.json").read_text())
    with atomic_folder(staging, f"qid push {kind}") as (folder, info):
        files = model_files(source, include_checkpoints)
        for rel in files:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).symlink_to(source / rel)
        model_card(source, kind, recipe=recipe, report=report, out_dir=folder)
        info.update(source=str(source), files=files + ["README.md"])
    return staging
