"""``qid synth``, ``qid build`` and ``qid export-swift``: their arguments and the library calls behind them.

The build flags are generated from the builder's own options (:func:`~qwen_instruct_det.data.builder.with_options`),
so ``qid build --help`` lists every option ``load_dataset`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.builder import builder_kwargs, with_options
from ..data.export import write_swift_jsonl
from ..data.objects import TASKS
from ..data.splits import build_configs, build_summary, config_names, load_split
from ..data.synthetic import SynthOptions, make_synthetic_coco


@dataclass
class SynthArguments:
    """``qid synth``: where to write the data set and how large it is."""

    out: str = field(metadata={"help": "Folder to write the COCO-2017-layout data set to.", "positional": True})
    train: int = field(default=400, metadata={"help": "Number of training images."})
    val: int = field(default=100, metadata={"help": "Number of validation images."})
    seed: int = field(default=0, metadata={"help": "Seed of the drawing and the annotations."})
    min_objects: int = field(default=1, metadata={"help": "Fewest objects per (non-empty) image."})
    max_objects: int = field(default=4, metadata={"help": "Most objects per image."})


def synth(args: SynthArguments) -> Path:
    """``qid synth``: write the synthetic data set; return its folder."""
    options = SynthOptions(min_objects=args.min_objects, max_objects=args.max_objects)
    return make_synthetic_coco(args.out, train=args.train, val=args.val, seed=args.seed, options=options)


@dataclass
class _BuildCommand:
    data_dir: str = field(metadata={"help": "COCO-2017-layout folder (annotations/instances_*2017.json, train2017/, val2017/).", "positional": True})
    config: str = field(default="all", metadata={"help": f"Configuration(s): one of {list(TASKS)}, a comma list, or 'all'."})
    out: str | None = field(default=None, metadata={"help": "Write each configuration to OUT/CONFIG (Arrow or Parquet) and OUT/summary.json."})
    format: str = field(default="arrow", metadata={"help": "'arrow' (images as paths) or 'parquet'."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder (default: HF_DATASETS_CACHE)."})


@dataclass
class _ExportSwiftCommand:
    data_dir: str = field(metadata={"help": "COCO-2017-layout folder.", "positional": True})
    out: str = field(metadata={"help": "JSONL file to write."})
    config: str = field(default="detection", metadata={"help": "Configuration(s) to export: a name, a comma list or 'all'."})
    split: str = field(default="train", metadata={"help": "Split to export."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder (default: HF_DATASETS_CACHE)."})


def build(args) -> dict:
    """``qid build``: build the asked configurations; return (and with ``out``, write) the summary."""
    builders = build_configs(args.config, cache_dir=args.cache_dir, output_dir=args.out, file_format=args.format, **builder_kwargs(args))
    return {"data_dir": args.data_dir, "configs": build_summary(builders)}


def export_swift(args) -> int:
    """``qid export-swift``: write one split of the asked configurations as ms-swift JSONL; return the count."""
    parts = [load_split(name, args.split, cache_dir=args.cache_dir, **builder_kwargs(args)) for name in config_names(args.config)]
    return write_swift_jsonl(parts, args.out)


BuildArguments = with_options("BuildArguments", _BuildCommand)
ExportSwiftArguments = with_options("ExportSwiftArguments", _ExportSwiftCommand)
