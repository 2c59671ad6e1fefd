"""The data half of the ``qid`` command: ``synth``, ``build`` and ``export-swift``.

Thin functions over ``synthetic``, ``builder`` and ``tasks``; each takes a config
dataclass so that flags and Python agree. No torch or transformers here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tasks import TASKS

logger = logging.getLogger(__name__)


@dataclass
class SynthArguments:
    out: str = field(metadata={"help": "Folder to write the COCO-2017-layout data set to.", "positional": True})
    train: int = field(default=400, metadata={"help": "Number of training images."})
    val: int = field(default=100, metadata={"help": "Number of validation images."})
    seed: int = field(default=0, metadata={"help": "Seed of the drawing and the annotations."})
    min_objects: int = field(default=1, metadata={"help": "Fewest objects per (non-empty) image."})
    max_objects: int = field(default=4, metadata={"help": "Most objects per image."})


def synth(args: SynthArguments) -> Path:
    """Write the synthetic data set."""
    from .synthetic import SynthOptions, make_synthetic_coco

    options = SynthOptions(min_objects=args.min_objects, max_objects=args.max_objects)
    return make_synthetic_coco(args.out, train=args.train, val=args.val, seed=args.seed, options=options)


@dataclass
class BuildArguments:
    data_dir: str = field(metadata={"help": "COCO-2017-layout folder (annotations/instances_*2017.json, train2017/, val2017/).", "positional": True})
    config: str = field(default="all", metadata={"help": f"Configuration to build: one of {list(TASKS)}, a comma list, or 'all'."})
    out: str | None = field(default=None, metadata={"help": "Write each configuration to OUT/CONFIG (Arrow or Parquet) and a summary.json."})
    format: str = field(default="arrow", metadata={"help": "'arrow' (images as paths) or 'parquet' (image bytes embedded, for sharing)."})
    annotation_files: list[str] = field(default_factory=list, metadata={"help": "SPLIT=PATH pairs for a non-COCO layout."})
    image_dirs: list[str] = field(default_factory=list, metadata={"help": "SPLIT=FOLDER pairs for a non-COCO layout."})
    subset: int | None = field(default=None, metadata={"help": "Seeded random subset of N images per split."})
    categories: list[str] = field(default_factory=list, metadata={"help": "Keep only these category names."})
    display_name: str = field(default="COCO", metadata={"help": "The data set's name in answers (none_region)."})
    regions_per_object: int = field(default=1, metadata={"help": "Region rows drawn per object (per image for none_region)."})
    box_format: str = field(default="qwen2", metadata={"help": "Box format of the text: qwen2, qwen2_5 or qwen3."})
    keep_empty: bool = field(default=True, metadata={"help": "Keep images without objects."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice."})
    detection_prompt: str = field(default="fixed", metadata={"help": "'fixed' or 'varied' detection prompts."})
    list_categories: bool = field(default=False, metadata={"help": "Append the category list to detection prompts."})
    min_pixels: int = field(default=56 * 56, metadata={"help": "Processor min_pixels (qwen2_5 coordinates depend on it)."})
    max_pixels: int = field(default=14 * 14 * 4 * 1280, metadata={"help": "Processor max_pixels (qwen2_5 coordinates depend on it)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder (default: HF_DATASETS_CACHE)."})


def config_names(config: str) -> list[str]:
    """'all', one name or a comma list to a list of configuration names (checked)."""
    names = list(TASKS) if config == "all" else [c.strip() for c in config.split(",") if c.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"Unknown configuration(s) {unknown}; choose from {list(TASKS)} or 'all'.")
    return names


def _pairs(items: list[str], flag: str) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--{flag} takes SPLIT=PATH pairs, got {item!r}.")
        out[split] = path
    return out


def builder_kwargs(args: BuildArguments) -> dict:
    """The builder config keywords that ``args`` asks for."""
    return {
        "data_dir": args.data_dir,
        "annotation_files": _pairs(args.annotation_files, "annotation_files"),
        "image_dirs": _pairs(args.image_dirs, "image_dirs"),
        "subset": args.subset,
        "categories": args.categories or None,
        "display_name": args.display_name,
        "regions_per_object": args.regions_per_object,
        "box_format": args.box_format,
        "keep_empty": args.keep_empty,
        "seed": args.seed,
        "detection_prompt": args.detection_prompt,
        "list_categories": args.list_categories,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }


def build(args: BuildArguments) -> dict:
    """Build the asked configurations; return (and write) a summary of rows, times and skips."""
    from .builder import QwenInstructDet

    if args.format not in ("arrow", "parquet"):
        raise ValueError(f"--format must be 'arrow' or 'parquet', got {args.format!r}.")
    summary: dict = {"data_dir": args.data_dir, "configs": {}}
    for name in config_names(args.config):
        start = time.perf_counter()
        builder = QwenInstructDet(config_name=name, cache_dir=args.cache_dir, **builder_kwargs(args))
        output_dir = str(Path(args.out) / name) if args.out else None
        builder.download_and_prepare(output_dir=output_dir, file_format=args.format, download_mode="force_redownload")
        seconds = time.perf_counter() - start
        splits = {s: info.num_examples for s, info in builder.info.splits.items()}
        rows = sum(splits.values())
        summary["configs"][name] = {
            "rows": splits,
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None,
            "skipped": builder.skipped,
            "output_dir": output_dir,
        }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for lock in Path(args.out).glob("*.lock"):
            lock.unlink()
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class ExportSwiftArguments:
    data_dir: str = field(metadata={"help": "COCO-2017-layout folder.", "positional": True})
    out: str = field(metadata={"help": "JSONL file to write."})
    config: str = field(default="detection", metadata={"help": "Configuration(s) to export: a name, a comma list or 'all'."})
    split: str = field(default="train", metadata={"help": "Split to export."})
    subset: int | None = field(default=None, metadata={"help": "Seeded random subset of N images."})
    seed: int = field(default=0, metadata={"help": "Seed."})
    box_format: str = field(default="qwen2", metadata={"help": "Box format of the text."})


def export_swift(args: ExportSwiftArguments) -> int:
    """Write rows as ms-swift JSONL (``messages`` with an ``<image>`` tag, ``images`` paths); return the count."""
    from .builder import load_split

    written = 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for name in config_names(args.config):
            ds = load_split(name, args.split, data_dir=args.data_dir, subset=args.subset, seed=args.seed, box_format=args.box_format)
            ds = ds.cast_column("images", _path_only_images())
            for row in ds.select_columns(["images", "prompt", "completion"]):
                prompt = "".join("<image>" if c["type"] == "image" else c["text"] for c in row["prompt"][0]["content"])
                answer = "".join(c["text"] for c in row["completion"][0]["content"])
                record = {
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                    "images": [im["path"] for im in row["images"]],
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    return written


def _path_only_images():
    import datasets

    return datasets.List(datasets.Image(decode=False))


@dataclass
class EvaluateArguments:
    predictions: str = field(metadata={"help": "Predictions JSONL written by qid predict.", "positional": True})
    out: str | None = field(default=None, metadata={"help": "Folder for report.json and report.md (default: beside the predictions)."})
    iou_threshold: float = field(default=0.5, metadata={"help": "IoU at or above which a pair matches."})
    matching: str = field(default="greedy", metadata={"help": "'greedy' or 'hungarian'."})


def evaluate(args: EvaluateArguments) -> dict:
    """Score a predictions file; write the report as JSON and Markdown."""
    from .evaluation import evaluate_file

    out = args.out or str(Path(args.predictions).parent)
    return evaluate_file(args.predictions, out, iou_threshold=args.iou_threshold, matching=args.matching)


@dataclass
class VisualizeArguments:
    predictions: str = field(metadata={"help": "Predictions JSONL written by qid predict.", "positional": True})
    out: str = field(default="pictures", metadata={"help": "Folder for the PNGs and grid.png."})
    limit: int = field(default=16, metadata={"help": "How many images to draw."})
    columns: int | None = field(default=None, metadata={"help": "Columns of the grid (default: square)."})


def visualize(args: VisualizeArguments) -> list[Path]:
    """Draw truth and predictions of the first images of a predictions file."""
    from .evaluation import read_predictions
    from .visualize import visualize_records

    return visualize_records(read_predictions(args.predictions), args.out, limit=args.limit, columns=args.columns)
