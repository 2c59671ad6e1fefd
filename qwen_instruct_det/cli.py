"""The ``qid`` command: parses arguments into the modules' config dataclasses and calls them.

Every subcommand's flags are generated from a dataclass (field name -> ``--flag``, the
``help`` metadata -> help text), so Python, flags and YAML recipes agree. The CLI prints;
the library logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import data_cli, model_cli
from .demo import DemoArguments

Command = tuple[type, Callable[[Any], Any], str]


def _commands() -> dict[str, Command]:
    commands: dict[str, Command] = {
        "synth": (data_cli.SynthArguments, _run_synth, "Write the synthetic COCO-format shapes data set."),
        "build": (data_cli.BuildArguments, _run_build, "Build instruction configurations to Arrow/Parquet, with a summary."),
        "export-swift": (data_cli.ExportSwiftArguments, _run_export_swift, "Write rows as ms-swift JSONL."),
        "evaluate": (data_cli.EvaluateArguments, _run_evaluate, "Score a predictions JSONL: det_iou50 per class and COCO mAP."),
        "visualize": (data_cli.VisualizeArguments, _run_visualize, "Draw truth and predicted boxes to PNGs and a grid."),
        "predict": (model_cli.PredictArguments, _run_predict, "Batched generation on a split or an image folder, to JSONL."),
        "merge": (model_cli.MergeArguments, _run_merge, "Fold a LoRA adapter into its base model."),
        "push": (model_cli.PushArguments, _run_push, "Publish a dataset, adapter or merged model to the Hub (with cards)."),
        "demo": (DemoArguments, _run_demo, "The whole path on synthetic data with the tiny model (CPU, offline)."),
    }
    return commands


def _field_type(tp) -> tuple[type, bool]:
    """(element type, is_list) of a dataclass field annotation such as ``int | None`` or ``list[str]``."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing) | {"list": list, "dict": dict})  # annotations are strings under __future__
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _field_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _str_to_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per dataclass field: positional where metadata says so, else ``--name``."""
    for f in dataclasses.fields(cls):
        tp, is_list = _field_type(f.type)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
        if tp is bool:
            kwargs.update(type=_str_to_bool, nargs="?", const=True)
        else:
            kwargs["type"] = tp
        if is_list:
            kwargs["nargs"] = "+"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, **kwargs)
            continue
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        parser.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qid", description="COCO-format detection data for Qwen-VL: build, train, predict, score.")
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="Fine-tune with TRL SFTTrainer + PEFT LoRA (flags or --config recipe.yaml; see qid train --help).",
                   add_help=False)
    for name, (cls, _, help_text) in _commands().items():
        add_dataclass_arguments(sub.add_parser(name, help=help_text, description=help_text), cls)
    return parser


def _run_synth(args: data_cli.SynthArguments) -> None:
    out = data_cli.synth(args)
    print(f"wrote {args.train} train and {args.val} val images with COCO annotations to {out}")


def _run_build(args: data_cli.BuildArguments) -> None:
    summary = data_cli.build(args)
    print(f"{'config':<16}{'rows per split':<30}{'seconds':>9}{'rows/s':>10}  skipped")
    for name, info in summary["configs"].items():
        rows = ", ".join(f"{split} {n}" for split, n in info["rows"].items())
        skipped = "; ".join(f"{split}: " + ", ".join(f"{k}={v}" for k, v in counts.items() if v)
                            for split, counts in info["skipped"].items() if any(counts.values()))
        print(f"{name:<16}{rows:<30}{info['seconds']:>9.2f}{info['rows_per_second']:>10.0f}  {skipped or '-'}")
    if args.out:
        print(f"summary: {args.out}/summary.json")


def _run_export_swift(args: data_cli.ExportSwiftArguments) -> None:
    n = data_cli.export_swift(args)
    print(f"wrote {n} records to {args.out}")


def _print_scores(report: dict) -> None:
    from .evaluation import markdown_table

    m = report["coco_map"]
    print(markdown_table(report["det_iou50"]))
    print(f"COCO mAP: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}   ({report['images']} images)")


def _run_evaluate(args: data_cli.EvaluateArguments) -> None:
    report = data_cli.evaluate(args)
    _print_scores(report)
    print(f"parsing: {report['parsing']}")
    print(f"report: {args.out or Path(args.predictions).parent}/report.json and report.md")


def _run_visualize(args: data_cli.VisualizeArguments) -> None:
    paths = data_cli.visualize(args)
    print(f"wrote {len(paths) - 1} pictures and {paths[-1]}")


def _run_predict(args: model_cli.PredictArguments) -> None:
    result = model_cli.predict(args)
    print(f"wrote {result['written']} predictions to {result['out']} ({result['skipped_done']} already there, "
          f"{result['truncated']} cut off at max_new_tokens={result['max_new_tokens']})")


def _run_merge(args: model_cli.MergeArguments) -> None:
    print(f"merged model written to {model_cli.merge(args)}")


def _run_push(args: model_cli.PushArguments) -> None:
    result = model_cli.push(args)
    print(f"folder {result['folder']} ({len(result['files'])} files)")
    print(result.get("url", "dry run: nothing uploaded"))


def _run_demo(args: DemoArguments) -> None:
    from .demo import run_demo

    report = run_demo(args)
    _print_scores(report)
    print(f"F1@50 on {report['images']} held-out images: {report['det_iou50']['f1']:.3f}; took {report['demo']['seconds']['total']:.0f} s")
    print(f"report: {args.out}/report.json, {args.out}/report.md; pictures: {report['demo']['grid']}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .training import main as train_main

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        out = train_main(argv[1:])
        print(f"trained model saved to {out}")
        return 0
    parser = make_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, ns.log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    cls, run, _ = _commands()[ns.command]
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    try:
        run(cls(**values))
    except (ValueError, FileNotFoundError) as e:
        print(f"qid {ns.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
