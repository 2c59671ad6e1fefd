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
import os
import sys
import types
import typing
from collections.abc import Callable
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default."""


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per dataclass field: positional where metadata says so, else ``--name`` (and ``--na-me`` for ``na_me``)."""
    for f in dataclasses.fields(cls):
        tp, is_list = _field_type(f.type)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "").replace("%", "%%")}  # argparse formats help with %
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
        names = list(dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"]))  # one spelling when there is no "_"
        parser.add_argument(*names, dest=f.name, **kwargs)


def make_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qid", description="COCO-format detection data for Qwen-VL: build, train, predict, score. "
                                     "--log-level LEVEL and --debug go anywhere on the line.", allow_abbrev=False,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log-level", "--log_level", default="INFO", help="Logging level (DEBUG, INFO, WARNING).")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in _TRL_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, command in (commands or _commands()).items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False, formatter_class=HelpFormatter)
        add_dataclass_arguments(sub_parser, command.arguments())
    return parser


def _quiet_libraries() -> None:
    """Progress bars and info logs of datasets and transformers off (a distributed run's other processes)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    transformers.logging.set_verbosity_warning()


def _global_options(argv: list[str]) -> tuple[list[str], str, bool]:
    """``argv`` without ``--log-level LEVEL`` and ``--debug``, wherever they stand, and their values."""
    rest, level, debug = [], "INFO", False
    items = iter(argv)
    for item in items:
        name, eq, value = item.partition("=")
        if item == "--debug":
            debug = True
        elif name in ("--log-level", "--log_level"):
            level = value if eq else next(items, "INFO")
        else:
            rest.append(item)
    return rest, level, debug


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
    print(f"report: {' and '.join(report['written'])}")


def _show_predict(args, result: dict) -> None:
    print(f"wrote {result['written']} predictions to {result['out']} ({result['skipped_done']} already there, "
          f"{result['truncated']} cut off at max_new_tokens={result['max_new_tokens']}; engine: {result['engine']})")


def _show_push(args, result: dict) -> None:
    print(f"folder {result['folder']}: {len(result['files'])} files would be sent" if "url" not in result else
          f"folder {result['folder']}: {len(result['files'])} files sent")
    for name in result["files"] if len(result["files"]) <= 40 else result["files"][:40] + [f"... {len(result['files']) - 40} more"]:
        print(f"  {name}")
    print(f"card: {result['card']}")
    print(result.get("url", "dry run: nothing uploaded"))


def _show_demo(args, report: dict) -> None:
    _print_scores(report)
    print(f"F1@50 on {report['images']} held-out images: {report['det_iou50']['f1']:.3f}; took {report['demo']['seconds']['total']:.0f} s")
    print(f"report: {args.out}/report.json, {args.out}/report.md; pictures: {report['demo']['grid']}")


def _run(argv: list[str], log_level: str = "INFO") -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ValueError(f"--log-level {log_level!r} is not a level; use DEBUG, INFO, WARNING or ERROR.")
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun / accelerate: the other processes speak only of problems
        level = max(level, logging.WARNING)
        _quiet_libraries()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] and argv[0] in _TRL_COMMANDS:
        import importlib

        out = importlib.import_module(_TRL_COMMANDS[argv[0]][0]).main(argv[1:])
        print(f"trained model saved to {out}")
        return
    commands = _commands()
    ns = make_parser(commands).parse_args(argv)
    command = commands[ns.command]
    cls = command.arguments()
    args = cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
    command.show(args, command.run(args))


def _user_cause(error: BaseException) -> BaseException | None:
    """The first error of bad input (ValueError, OSError, ImportError) among the causes of ``error``, or None."""
    seen = {id(error)}
    error = error.__cause__ or error.__context__
    while error is not None and id(error) not in seen:
        if isinstance(error, (ValueError, OSError, ImportError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    argv, log_level, debug = _global_options(list(sys.argv[1:] if argv is None else argv))
    name = argv[0] if argv else "qid"
    try:
        _run(argv, log_level)
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        print(f"qid {name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Exception as e:  # a defect, not bad input: still one line, with the way to the traceback
        if debug:
            raise
        cause = _user_cause(e)
        if cause is not None:  # bad input wrapped by a library (datasets wraps what a builder raises): its own message
            print(f"qid {name}: error: {' '.join(str(cause).split())}", file=sys.stderr)
            return 2
        print(f"qid {name}: unexpected {type(e).__name__}: {' '.join(str(e).split())} (run again with --debug for the traceback "
              "and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
