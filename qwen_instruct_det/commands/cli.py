"""The ``qid`` command: parses flags into the library's argument dataclasses, calls the library, prints.

Each subcommand is a dataclass (flags generated from its fields: name -> ``--flag``, the
``help`` metadata -> help text) and one library function; ``train`` and ``grpo`` parse with
TRL's ``TrlParser`` (flags = YAML recipe = Python). Every error is one line naming the problem
and the fix (``--debug`` shows the traceback). The library logs; only this module prints.
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


@dataclasses.dataclass
class Command:
    arguments: Callable[[], type]
    run: Callable[[Any], Any]
    show: Callable[[Any, Any], None]
    help: str


def _commands() -> dict[str, Command]:
    from . import data, evaluate, models
    from .demo import DemoArguments, run_demo

    return {
        "synth": Command(lambda: data.SynthArguments, data.synth, _show_synth, "Write the synthetic COCO-format shapes data set."),
        "build": Command(lambda: data.BuildArguments, data.build, _show_build, "Build instruction configurations to Arrow/Parquet, with a summary."),
        "export-swift": Command(lambda: data.ExportSwiftArguments, data.export_swift, lambda a, n: print(f"wrote {n} records to {a.out}"),
                                "Write rows as ms-swift JSONL."),
        "evaluate": Command(lambda: evaluate.EvaluateArguments, evaluate.evaluate, _show_evaluate,
                            "Score a predictions JSONL: det_iou50 per class and COCO mAP."),
        "visualize": Command(lambda: evaluate.VisualizeArguments, evaluate.visualize,
                             lambda a, paths: print(f"wrote {len(paths) - 1} pictures and {paths[-1]}"), "Draw truth and predicted boxes to PNGs and a grid."),
        "predict": Command(lambda: models.PredictArguments, models.predict, _show_predict, "Batched generation on a split or an image folder, to JSONL."),
        "merge": Command(lambda: models.MergeArguments, models.merge, lambda a, out: print(f"merged model written to {out}"),
                         "Fold a LoRA adapter into its base model."),
        "push": Command(lambda: models.PushArguments, models.push, _show_push, "Publish a dataset, adapter or merged model to the Hub (with cards)."),
        "demo": Command(lambda: DemoArguments, run_demo, _show_demo, "The whole path on synthetic data with the tiny model (CPU, offline)."),
    }


_TRL_COMMANDS = {
    "train": ("qwen_instruct_det.commands.train", "Fine-tune with TRL SFTTrainer + PEFT LoRA (flags or --config recipe.yaml; see qid train --help)."),
    "grpo": ("qwen_instruct_det.commands.grpo", "Reinforcement fine-tuning with TRL GRPOTrainer and detection rewards (see qid grpo --help)."),
}


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


class _Pairs(argparse.Action):
    """``SPLIT=PATH`` pairs to a dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        out = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{option_string} takes SPLIT=PATH pairs, got {item!r}")
            out[key] = value
        setattr(namespace, self.dest, out)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per dataclass field: positional where metadata says so, else ``--name``."""
    for f in dataclasses.fields(cls):
        tp, is_list = _field_type(f.type)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
        if tp is bool:
            kwargs.update(type=_str_to_bool, nargs="?", const=True)
        elif tp is dict:
            kwargs.update(nargs="+", action=_Pairs, metavar="SPLIT=PATH")
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


def make_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qid", description="COCO-format detection data for Qwen-VL: build, train, predict, score.")
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING).")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _TRL_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, command in (commands or _commands()).items():
        add_dataclass_arguments(sub.add_parser(name, help=command.help, description=command.help), command.arguments())
    return parser


def _show_synth(args, out) -> None:
    print(f"wrote {args.train} train and {args.val} val images with COCO annotations to {out}")


def _show_build(args, summary: dict) -> None:
    print(f"{'config':<16}{'rows per split':<30}{'seconds':>9}{'rows/s':>10}  skipped")
    for name, info in summary["configs"].items():
        rows = ", ".join(f"{split} {n}" for split, n in info["rows"].items())
        skipped = "; ".join(f"{split}: " + ", ".join(f"{k}={v}" for k, v in counts.items() if v)
                            for split, counts in info["skipped"].items() if any(counts.values()))
        print(f"{name:<16}{rows:<30}{info['seconds']:>9.2f}{info['rows_per_second']:>10.0f}  {skipped or '-'}")
    if args.out:
        print(f"summary: {args.out}/summary.json")


def _print_scores(report: dict) -> None:
    from ..eval.report import markdown_table

    m = report["coco_map"]
    print(markdown_table(report["det_iou50"]))
    print(f"COCO mAP: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}   ({report['images']} images)")


def _show_evaluate(args, report: dict) -> None:
    _print_scores(report)
    print(f"parsing: {report['parsing']}")
    print(f"report: {args.out or Path(args.predictions).parent}/report.json and report.md")


def _show_predict(args, result: dict) -> None:
    print(f"wrote {result['written']} predictions to {result['out']} ({result['skipped_done']} already there, "
          f"{result['truncated']} cut off at max_new_tokens={result['max_new_tokens']})")


def _show_push(args, result: dict) -> None:
    print(f"folder {result['folder']} ({len(result['files'])} files)")
    print(result.get("url", "dry run: nothing uploaded"))


def _show_demo(args, report: dict) -> None:
    _print_scores(report)
    print(f"F1@50 on {report['images']} held-out images: {report['det_iou50']['f1']:.3f}; took {report['demo']['seconds']['total']:.0f} s")
    print(f"report: {args.out}/report.json, {args.out}/report.md; pictures: {report['demo']['grid']}")


def _run(argv: list[str]) -> None:
    if argv[:1] and argv[0] in _TRL_COMMANDS:
        import importlib

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        out = importlib.import_module(_TRL_COMMANDS[argv[0]][0]).main(argv[1:])
        print(f"trained model saved to {out}")
        return
    commands = _commands()
    ns = make_parser(commands).parse_args(argv)
    logging.basicConfig(level=getattr(logging, ns.log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    command = commands[ns.command]
    cls = command.arguments()
    args = cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
    command.show(args, command.run(args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    name = argv[0] if argv else "qid"
    try:
        _run(argv)
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        print(f"qid {name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Exception as e:  # a defect, not bad input: still one line, with the way to the traceback
        if debug:
            raise
        print(f"qid {name}: unexpected {type(e).__name__}: {' '.join(str(e).split())} (run again with --debug for the traceback "
              "and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
