"""Predictions: batched generation over rows, parsed into pixel boxes with a confidence each, written as JSONL.

``predict`` batches rows of similar image size together (so a batch pads little), decodes images
in a ``DataLoader`` with workers, generates (``generate.py``: the chosen tokens' probabilities,
never every step's logits), parses each answer with the model's box format into pixel boxes of
the original image, and yields JSONL-ready records. ``predict_to_file`` writes them after a
header line that says which model, data, box format, budget and options made them (a file made
otherwise is never resumed into), resumes where a previous run stopped, and under ``torchrun`` /
``accelerate launch`` shares the rows out over the processes, each writing its own resumable
shard, merged into the file at the end. ``predict_and_score`` predicts into a fresh file and
scores it. A model asked zero-shot is asked in its family's own words (``config.zero_shot_prompt``),
and ``with_prompt`` puts that prompt into a split's rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..budget import ImageBudget
from ..data.disk import full_disk_named
from ..eval.detections import objects_as_detections
from ..eval.report import HEADER_KEY, PredictionRecord
from ..formats import get_box_format
from .generate import Generation, box_confidences, generate  # noqa: F401  (Generation: the API; generate: patched in tests)

logger = logging.getLogger(__name__)


def with_prompt(dataset, template: str, categories: list[str]):
    """The rows with their prompt text replaced by ``template`` (``{categories}`` filled with the names)."""
    if "{categories}" in template and not categories:
        raise ValueError("the detection prompt names the categories, but none are known: pass --categories (or predict on a split).")
    text = template.format(categories=", ".join(categories))

    def _replace(prompt):
        return {"prompt": [{**turn, "content": [{**item, "text": text} if item["type"] == "text" else item for item in turn["content"]]}
                           for turn in prompt]}

    return dataset.map(_replace, input_columns=["prompt"], desc="prompt")


def predict(model, processor, rows, box_format: str = "qwen2", batch_size: int = 8, max_new_tokens: int = 512,
            categories: list[str] | None = None, crowd: Mapping[int, dict] | None = None, workers: int = 0,
            group_by_size: bool = True, confidence: str = "decisive") -> Iterator[PredictionRecord]:
    """Records for rows that carry ``images``, ``prompt``, ``width``, ``height`` (and ``objects``, ``image_id`` when known).

    With ``group_by_size`` rows of similar image size are batched together (a batch pads to its largest image) and the
    records come in that order; ``workers`` processes decode the images ahead of the model. ``crowd`` (image id ->
    ``{"boxes", "labels"}``, :func:`~qwen_instruct_det.data.splits.crowd_regions`) adds each image's crowd regions to its
    truth, flagged in ``iscrowd``: rows never hold them (they are no targets), and scoring without them counts a
    prediction on a crowd region as a false positive. ``confidence``: how a box is scored (:func:`box_confidences`).
    """
    from torch.utils.data import DataLoader

    fmt = get_box_format(box_format)
    order = list(range(len(rows)))
    if group_by_size and order:
        sizes = (rows[name] if hasattr(rows, "column_names") else [row[name] for row in rows] for name in ("width", "height"))
        tokens = ImageBudget.of(processor).image_tokens(*sizes)
        order = sorted(order, key=lambda i: int(tokens[i]))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    loader = DataLoader(_OpenedRows(rows), batch_sampler=batches, num_workers=workers, collate_fn=list)
    for batch in loader:
        yield from _predict_batch(model, processor, batch, fmt, max_new_tokens, categories, crowd, confidence)


class _OpenedRows:
    """Rows with their images opened (EXIF orientation applied, RGB): what a DataLoader worker hands the model."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict, list]:
        row = dict(self.rows[int(i)])
        return row, [_open(image) for image in row["images"]]


def _open(image):
    """A row's image as the model sees it (EXIF orientation applied) and its path; decode errors name the file."""
    from ..data.images import open_feature_image

    path = image.get("path") if isinstance(image, dict) else getattr(image, "filename", None)
    return open_feature_image(image), path or None


def _truth(row: dict, crowd: Mapping[int, dict] | None) -> dict:
    truth = objects_as_detections(row["objects"])
    regions = (crowd or {}).get(row.get("image_id"))
    if regions and regions["boxes"]:
        truth["iscrowd"] = [False] * len(truth["boxes"]) + [True] * len(regions["boxes"])
        truth["boxes"] += [list(b) for b in regions["boxes"]]
        truth["labels"] += list(regions["labels"])
    return truth


def _predict_batch(model, processor, batch, fmt, max_new_tokens, categories, crowd=None, confidence="decisive"):
    images = [[im for im, _ in opened] for _, opened in batch]
    prompts = [row["prompt"] for row, _ in batch]
    # an engine that answers itself (vllm_engine.VllmEngine) stands where the transformers model stands
    gens = model.answers(images, prompts, max_new_tokens) if hasattr(model, "answers") else generate(model, processor, images, prompts, max_new_tokens)
    budget = ImageBudget.of(processor)
    for (row, ((_, path), *_)), gen in zip(batch, gens):
        w, h = int(row["width"]), int(row["height"])
        size = budget.resized_size(w, h) if fmt.needs_input_size else None
        parsed = fmt.parse(gen.text, w, h, input_size=size, categories=categories)
        record = {
            "image_id": row.get("image_id"),
            "image": path,
            "width": w,
            "height": h,
            "text": gen.text,
            "detections": {"boxes": parsed.boxes.tolist(), "labels": parsed.labels,
                           "scores": box_confidences(gen, parsed.spans, confidence)},
            "unparsed": parsed.unparsed,
            "dropped": parsed.dropped,
            "unknown_labels": parsed.unknown_labels,
            "truncated": not gen.ended,
        }
        if row.get("objects") is not None:
            record["truth"] = _truth(row, crowd)
        yield record


def done_ids(path: str | os.PathLike, header: dict | None = None) -> set:
    """Image ids already in a predictions file, made ready to append to; with ``header``, the file must have been made the
    same way (same model, data, box format, budget and options) or it is refused, naming both.

    Every record that parses is kept. Lines that do not (a line cut off by an interrupted run,
    a corrupt line in the middle) are moved to ``PATH.rejected`` with their line numbers and
    reported; a file with content but no prediction record at all is refused, never overwritten.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return set()
    ids, good, bad, found = set(), [], [], None
    with open(p, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and HEADER_KEY in record and n == 1:
                found = record[HEADER_KEY]
                good.append(line if line.endswith("\n") else line + "\n")
            elif isinstance(record, dict) and "image_id" in record and "detections" in record:
                ids.add(record["image_id"])
                good.append(line if line.endswith("\n") else line + "\n")
            else:
                bad.append((n, line.rstrip("\n")))
    if not ids and not found:
        raise ValueError(f"{p}: exists and holds no prediction record (first line: {bad[0][1][:60]!r}); choose another --out, "
                         "or delete the file if it is a stale predictions file.")
    if header is not None:
        header = json.loads(json.dumps(header))  # as the file would hold it (tuples as lists)
    if header is not None and found != header:
        if found is None:
            raise ValueError(f"{p}: holds {len(ids)} predictions that do not say what made them (no header line); they are not "
                             f"resumed into. Choose another --out, or delete the file.")
        differ = "; ".join(f"{k}: {found.get(k)!r} there, {header.get(k)!r} now" for k in sorted(set(found) | set(header))
                           if found.get(k) != header.get(k))
        raise ValueError(f"{p}: was made by {found.get('model')} with other settings than this run ({differ}); its predictions are "
                         "not mixed with these. Choose another --out, or delete the file.")
    if bad:
        side = p.with_name(p.name + ".rejected")
        with open(side, "a") as f:
            for n, line in bad:
                f.write(json.dumps({"line": n, "text": line}) + "\n")
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(good))
        os.replace(tmp, p)
        logger.warning("%s: %d line(s) that are not prediction records (line %s) moved to %s; %d records kept",
                       p, len(bad), ", ".join(str(n) for n, _ in bad[:10]), side, len(good))
    return ids


def predict_to_file(model, processor, dataset, path: str | os.PathLike, box_format: str = "qwen2", batch_size: int = 8,
                    max_new_tokens: int = 512, categories=None, progress: bool = True, crowd: Mapping[int, dict] | None = None,
                    header: dict | None = None, workers: int = 0, group_by_size: bool = True, confidence: str = "decisive") -> dict:
    """Append predictions for the rows not yet in ``path``; returns counts (done before, written, truncated).

    ``header`` (what made the file) is its first line; a file made otherwise is refused. Under ``torchrun`` or
    ``accelerate launch`` each process predicts every N-th remaining row into ``PATH.part-R-of-N`` (resumable on its
    own) and the first merges the parts into ``path`` once all are done. ``crowd``: the split's crowd regions for the
    records' truth (see :func:`predict`).
    """
    import datasets

    from ..data.images import undecoded

    state = process_state()
    with state.main_process_first():  # one process moves a cut-off line aside, the others read the file after
        before = done_ids(path, header)
    image_ids = dataset["image_id"]
    todo = [i for i, image_id in enumerate(image_ids) if image_id not in before]
    target = Path(path)
    if state.num_processes > 1:
        target = target.with_name(f"{target.name}.part-{state.process_index:05d}-of-{state.num_processes:05d}")
        shard_done = done_ids(target, header)
        todo = [i for i in todo[state.process_index::state.num_processes] if image_ids[i] not in shard_done]
    rows = dataset.select(todo)
    if isinstance(rows.features.get("images"), datasets.List):  # decode here, so that a bad file is named
        rows = undecoded(rows)
    written, truncated = _write(model, processor, rows, target, header, progress and state.is_main_process, box_format=box_format,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, categories=categories, crowd=crowd,
                                workers=workers, group_by_size=group_by_size, confidence=confidence)
    if state.num_processes > 1:
        state.wait_for_everyone()
        if state.is_main_process:
            _merge_parts(Path(path), state.num_processes, header)
        state.wait_for_everyone()
    if truncated:
        logger.warning("%d answers hit max_new_tokens=%d without closing the turn; raise it", truncated, max_new_tokens)
    return {"skipped_done": len(before), "written": written, "truncated": truncated}


def process_state():
    """This process's place among those ``torchrun`` / ``accelerate launch`` started (accelerate's ``PartialState``; on a
    machine without a GPU, processes on the CPU: accelerate sees them only when told so)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _write(model, processor, rows, path: Path, header: dict | None, progress: bool, **kwargs) -> tuple[int, int]:
    from tqdm.auto import tqdm

    written = truncated = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with full_disk_named(path, "the predictions written so far are kept; a rerun resumes after them"):
        with open(path, "a") as f, tqdm(total=len(rows), desc="predict", unit="img", disable=not progress) as bar:
            if header is not None and f.tell() == 0:
                f.write(json.dumps({HEADER_KEY: header}) + "\n")
            for record in predict(model, processor, rows, **kwargs):
                f.write(json.dumps(record) + "\n")
                f.flush()
                written += 1
                truncated += record["truncated"]
                bar.update(1)
    return written, truncated


def _merge_parts(path: Path, processes: int, header: dict | None) -> None:
    """Append the processes' parts to ``path`` (records it does not hold yet) and remove them."""
    have = done_ids(path, header)
    parts = [path.with_name(f"{path.name}.part-{k:05d}-of-{processes:05d}") for k in range(processes)]
    with open(path, "a") as out:
        if header is not None and out.tell() == 0:
            out.write(json.dumps({HEADER_KEY: header}) + "\n")
        for part in parts:
            if not part.is_file():
                continue
            for line in part.read_text().splitlines():
                record = json.loads(line) if line.strip() else {}
                if "image_id" in record and record["image_id"] not in have:
                    out.write(line + "\n")
                    have.add(record["image_id"])
    for part in parts:
        part.unlink(missing_ok=True)


def default_max_new_tokens(max_answer_tokens: int | None, fallback: int = 512) -> int:
    """An answer budget from the longest training answer (+25% and a margin), not a fixed 128."""
    if not max_answer_tokens:
        return fallback
    return int(max_answer_tokens * 1.25) + 16


def predict_and_score(model, processor, rows, path: str | os.PathLike, box_format: str, max_new_tokens: int, categories=None,
                      out_dir: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Predict ``rows`` into a fresh ``path`` (the model in eval mode, its mode restored after) and evaluate it.

    Returns ``evaluate_file``'s report (written to ``out_dir`` when given) and the prediction counts.
    """
    from ..eval.report import evaluate_file

    path = Path(path)
    path.unlink(missing_ok=True)
    was_training = model.training
    model.eval()
    try:
        counts = predict_to_file(model, processor, rows, path, box_format=box_format, batch_size=32, max_new_tokens=max_new_tokens,
                                 categories=categories, progress=False)
    finally:
        model.train(was_training)
    return evaluate_file(path, out_dir), counts

