"""``qid evaluate`` and ``qid visualize``: score a predictions file, draw it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..eval.report import evaluate_file, read_predictions
from ..visualize import visualize_records


@dataclass
class EvaluateArguments:
    """``qid evaluate``: the predictions to score and how."""

    predictions: str = field(metadata={"help": "Predictions JSONL written by qid predict.", "positional": True})
    out: str | None = field(default=None, metadata={"help": "Folder for report.json and report.md (default: PREDICTIONS.report.json and "
                                                           ".report.md beside the predictions, so two files in one folder keep their own)."})
    iou_threshold: float = field(default=0.5, metadata={"help": "IoU at or above which a pair matches."})
    matching: str = field(default="greedy", metadata={"help": "'greedy' or 'hungarian'."})


def evaluate(args: EvaluateArguments) -> dict:
    """``qid evaluate``: score a predictions file; write the report beside it (or in ``out``)."""
    path = Path(args.predictions)
    out, name = (args.out, "report") if args.out else (path.parent, f"{path.stem}.report")
    report = evaluate_file(path, out, name=name, iou_threshold=args.iou_threshold, matching=args.matching)
    report["written"] = [str(Path(out) / f"{name}.json"), str(Path(out) / f"{name}.md")]
    return report


@dataclass
class VisualizeArguments:
    """``qid visualize``: which predictions to draw, and where."""

    predictions: str = field(metadata={"help": "Predictions JSONL written by qid predict.", "positional": True})
    out: str = field(default="pictures", metadata={"help": "Folder for the PNGs and grid.png."})
    limit: int = field(default=16, metadata={"help": "How many images to draw."})
    columns: int | None = field(default=None, metadata={"help": "Columns of the grid (default: square)."})


def visualize(args: VisualizeArguments) -> list[Path]:
    """``qid visualize``: draw truth and predictions of the first images of a predictions file."""
    return visualize_records(read_predictions(args.predictions, need_truth=False), args.out, limit=args.limit, columns=args.columns)
