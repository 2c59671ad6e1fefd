"""One configuration's split, many configurations at once, and what a split's index knows beyond its rows.

:func:`load_split` builds (or reads from the cache) one configuration's split through
:class:`~qwen_instruct_det.data.builder.QwenInstructDet`; :func:`build_configs` builds several
into a folder or the cache and :func:`build_summary` reports rows, time and skip counts;
:func:`crowd_regions` and :func:`category_names` read a split's index (crowd regions are no
rows, but scoring needs them).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import datasets
import numpy as np

from . import coco
from .builder import QwenInstructDet, kept_categories, prepare_index
from .disk import atomic_folder, full_disk_named
from .objects import TASKS


def prepared(config: str, cache_dir: str | None = None, **config_kwargs) -> QwenInstructDet:
    """One configuration built (or read from the cache), its ``categories`` and ``skipped`` per split known either way."""
    builder = QwenInstructDet(config_name=config, cache_dir=cache_dir, **config_kwargs)
    _prepare(builder)
    return builder


def _prepare(builder: QwenInstructDet, where: str | os.PathLike | None = None, **kwargs) -> None:
    """``download_and_prepare`` with a write error (a full disk) named with the folder; datasets renames its temporary folder
    only when the whole build succeeded, so a failed build leaves nothing a rerun would read."""
    where = where or kwargs.get("output_dir") or builder.cache_dir
    with full_disk_named(f"{builder.config.name} into {where}", "the half-built configuration is discarded"):
        builder.download_and_prepare(**kwargs)


def split_of(builder: QwenInstructDet, split: str) -> datasets.Dataset:
    """A prepared builder's split, or an error naming the splits it has."""
    if split not in builder.info.splits:
        source = builder.config.data_dir or builder.config.annotation_files
        raise ValueError(f"{source} has no split {split!r}; it has {list(builder.info.splits)}.")
    return builder.as_dataset(split=split)


def load_split(config: str, split: str, cache_dir: str | None = None, **config_kwargs) -> datasets.Dataset:
    """One configuration's split, built (or read from the cache) by :class:`QwenInstructDet`."""
    return split_of(prepared(config, cache_dir, **config_kwargs), split)


def crowd_regions(split: str, **config_kwargs) -> dict[int, dict]:
    """A split's crowd regions per image id, ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}`` in the rows' frame
    (EXIF orientation applied, after any category filter).

    Rows never hold them (crowd regions are no targets), but scoring needs them: as in COCOeval,
    a prediction on a crowd region of its class is ignored, not a false positive.
    """
    index = _split_index(split, **config_kwargs)
    out: dict[int, dict] = {}
    for k in np.flatnonzero(index.ann_crowd).tolist():
        entry = out.setdefault(int(index.image_ids[index.ann_image[k]]), {"boxes": [], "labels": []})
        entry["boxes"].append(index.ann_xyxy[k].tolist())
        entry["labels"].append(index.category_names[index.ann_category[k]])
    return out


def category_names(split: str, **config_kwargs) -> list[str]:
    """The data set's category names as its annotation file spells them (after any category filter), in id order.

    Loading them checks the split's annotation file and images, so callers that load a model can check the data first.
    """
    builder = QwenInstructDet(config_name="detection", **config_kwargs)
    return kept_categories(_split_index(split, **config_kwargs), builder.config)


def _split_index(split: str, **config_kwargs) -> coco.CocoIndex:
    """One split's index as the builder reads it (loaded once per process and content, checked, filtered)."""
    builder = QwenInstructDet(config_name="detection", **config_kwargs)
    files = builder.split_files()
    if split not in files:
        raise ValueError(f"{config_kwargs.get('data_dir') or config_kwargs.get('annotation_files')} has no split {split!r}; it has {list(files)}.")
    return prepare_index(*files[split], builder.config)


def split_files(split: str, **config_kwargs) -> tuple[str, str]:
    """A split's annotation file and image folder, found without reading them (a quick check of a layout before anything
    expensive): an error names what is missing."""
    files = QwenInstructDet(config_name="detection", **config_kwargs).split_files()
    if split not in files:
        raise ValueError(f"{config_kwargs.get('data_dir') or config_kwargs.get('annotation_files')} has no split {split!r}; it has {list(files)}.")
    return files[split]


def config_names(config: str | list[str]) -> list[str]:
    """'all', one name, a comma list or a list of names to a checked list of configuration names."""
    if isinstance(config, str):
        config = list(TASKS) if config == "all" else [c.strip() for c in config.split(",") if c.strip()]
    unknown = [n for n in config if n not in TASKS]
    if unknown or not config:
        raise ValueError(f"Unknown configuration(s) {unknown or config}; choose from {list(TASKS)} or 'all'.")
    return list(config)


def build_configs(configs: str | list[str] = "all", cache_dir: str | None = None, output_dir: str | None = None,
                  file_format: str = "arrow", **builder_kwargs) -> dict[str, QwenInstructDet]:
    """Build each configuration (into ``output_dir/CONFIG`` when given, else the cache); the prepared builders by name.

    Each builder records ``seconds`` (its build time) and ``skipped`` (the counts of what it left out, per split). An
    ``output_dir`` is written whole or not at all (a hidden sibling takes its place when every configuration is built),
    with ``summary.json`` (:func:`build_summary`) beside the configurations.
    """
    if file_format not in ("arrow", "parquet"):
        raise ValueError(f"file_format must be 'arrow' or 'parquet', got {file_format!r}.")
    names = config_names(configs)
    if not output_dir:
        return {name: _build(name, cache_dir, None, file_format, builder_kwargs) for name in names}
    with atomic_folder(output_dir, "qid build") as (folder, info):
        builders = {name: _build(name, cache_dir, folder / name, file_format, builder_kwargs, Path(output_dir) / name) for name in names}
        for lock in folder.glob("*.lock"):
            lock.unlink()
        for name, builder in builders.items():
            builder.output_dir = str(Path(output_dir) / name)  # where it is once the folder takes its place
        summary = {"data_dir": builder_kwargs.get("data_dir"), "configs": build_summary(builders)}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        info["configs"] = list(builders)
    return builders


def _build(name: str, cache_dir, target: Path | None, file_format: str, builder_kwargs: dict, shown: Path | None = None) -> QwenInstructDet:
    start = time.perf_counter()
    builder = QwenInstructDet(config_name=name, cache_dir=cache_dir, **builder_kwargs)
    _prepare(builder, shown, output_dir=str(target) if target else None, file_format=file_format,
             download_mode="force_redownload" if target else None)
    builder.seconds = time.perf_counter() - start
    builder.output_dir = str(target) if target else None
    return builder


def build_summary(builders: dict[str, QwenInstructDet]) -> dict:
    """Rows per split, seconds, rows per second and skip counts of each built configuration (JSON-ready)."""
    out = {}
    for name, builder in builders.items():
        rows = {split: info.num_examples for split, info in builder.info.splits.items()}
        seconds = getattr(builder, "seconds", 0.0)
        out[name] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_second": round(sum(rows.values()) / seconds, 1) if seconds else None,
                     "skipped": builder.skipped, "output_dir": getattr(builder, "output_dir", None)}
    return out
