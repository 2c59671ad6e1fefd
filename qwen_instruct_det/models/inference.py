"""Batched generation to parsed detections, with a confidence per box.

``generate`` runs greedy (by default) batched generation with left padding and returns,
per sample, the answer text, the probability of each generated token and whether the
answer ended with the end-of-turn token. ``predict`` parses each answer with the model's
box format into pixel boxes of the original image, scores each box by the mean
probability of its tokens (so COCO AP can rank detections) and yields JSONL-ready
records; ``predict_to_file`` appends them to a file and resumes where a previous run
stopped; ``predict_and_score`` predicts into a fresh file and scores it. A model asked
zero-shot is asked in its family's own words (``config.zero_shot_prompt``), and
``with_prompt`` puts that prompt into a split's rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..budget import ImageBudget
from ..data.disk import disk_error, disk_full
from ..eval.detections import objects_as_detections
from ..eval.report import PredictionRecord
from ..formats import get_box_format

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


@dataclass
class Generation:
    text: str
    token_probs: np.ndarray
    token_ends: np.ndarray  # character offset where each generated token ends in ``text``
    ended: bool  # the model closed its turn (not cut off by max_new_tokens)


def _processor_call(processor, images, texts, device):
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = processor(images=images, text=texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()}


def generate(model, processor, images: list, prompts: list[list[dict]], max_new_tokens: int = 512, **generate_kwargs) -> list[Generation]:
    """Greedy batched generation for one batch of (images, prompt messages)."""
    import torch

    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = _processor_call(processor, images, texts, model.device)
    kwargs = {"do_sample": False, **generate_kwargs}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True, **kwargs)
    prompt_len = enc["input_ids"].shape[1]
    new = out.sequences[:, prompt_len:]
    logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    probs = torch.exp(logprobs.float()).cpu().numpy()
    tok = processor.tokenizer
    end_of_turn = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    results = []
    for row, p in zip(new.tolist(), probs):
        ids, ended = [], False
        for tid in row:
            if tid in end_of_turn or tid == tok.pad_token_id:
                ended = tid in end_of_turn
                break
            ids.append(tid)
        text, ends = _text_and_token_ends(tok, ids)
        results.append(Generation(text, p[: len(ids)], ends, ended))
    return results


def _text_and_token_ends(tok, ids: list[int]) -> tuple[str, np.ndarray]:
    """The decoded answer and the character offset where each token ends in it."""
    text = tok.decode(ids, skip_special_tokens=False)
    pieces = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(ids)]
    if "".join(pieces) != text:  # a character split over several byte-level tokens: decode prefixes instead
        return text, np.array([len(tok.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))], dtype=np.int64)
    return text, np.cumsum([len(piece) for piece in pieces]).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


def box_confidences(gen: Generation, spans: list[tuple[int, int]]) -> list[float]:
    """Mean probability of the tokens that overlap each box's character span."""
    token_starts = np.concatenate([[0], gen.token_ends[:-1]]) if len(gen.token_ends) else gen.token_ends
    scores = []
    for s, e in spans:
        mask = (token_starts < e) & (gen.token_ends > s)
        scores.append(float(gen.token_probs[mask].mean()) if mask.any() else 1.0)
    return scores


def predict(model, processor, rows: Iterable[dict], box_format: str = "qwen2", batch_size: int = 8, max_new_tokens: int = 512,
            categories: list[str] | None = None, crowd: Mapping[int, dict] | None = None) -> Iterator[PredictionRecord]:
    """Records for rows that carry ``images``, ``prompt``, ``width``, ``height`` (and ``objects``, ``image_id`` when known).

    ``crowd`` (image id -> ``{"boxes", "labels"}``, :func:`~qwen_instruct_det.data.splits.crowd_regions`) adds each image's
    crowd regions to its truth, flagged in ``iscrowd``: rows never hold them (they are no
    targets), and scoring without them counts a prediction on a crowd region as a false positive.
    """
    fmt = get_box_format(box_format)
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield from _predict_batch(model, processor, batch, fmt, max_new_tokens, categories, crowd)
            batch = []
    if batch:
        yield from _predict_batch(model, processor, batch, fmt, max_new_tokens, categories, crowd)


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


def _predict_batch(model, processor, batch, fmt, max_new_tokens, categories, crowd=None):
    opened = [[_open(im) for im in row["images"]] for row in batch]
    images = [[im for im, _ in row] for row in opened]
    gens = generate(model, processor, images, [row["prompt"] for row in batch], max_new_tokens)
    budget = ImageBudget.of(processor)
    for row, gen, ((_, path), *_) in zip(batch, gens, opened):
        w, h = int(row["width"]), int(row["height"])
        size = budget.resized_size(w, h) if fmt.needs_input_size else None
        parsed = fmt.parse(gen.text, w, h, input_size=size, categories=categories)
        record = {
            "image_id": row.get("image_id"),
            "image": path,
            "width": w,
            "height": h,
            "text": gen.text,
            "detections": {"boxes": parsed.boxes.tolist(), "labels": parsed.labels, "scores": box_confidences(gen, parsed.spans)},
            "unparsed": parsed.unparsed,
            "dropped": parsed.dropped,
            "unknown_labels": parsed.unknown_labels,
            "truncated": not gen.ended,
        }
        if row.get("objects") is not None:
            record["truth"] = _truth(row, crowd)
        yield record


def done_ids(path: str | os.PathLike) -> set:
    """Image ids already in a predictions file, made ready to append to.

    Every record that parses is kept. Lines that do not (a line cut off by an interrupted run,
    a corrupt line in the middle) are moved to ``PATH.rejected`` with their line numbers and
    reported; a file with content but no prediction record at all is refused, never overwritten.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return set()
    ids, good, bad = set(), [], []
    with open(p, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "image_id" in record and "detections" in record:
                ids.add(record["image_id"])
                good.append(line if line.endswith("\n") else line + "\n")
            else:
                bad.append((n, line.rstrip("\n")))
    if not good:
        raise ValueError(f"{p}: exists and holds no prediction record (first line: {bad[0][1][:60]!r}); choose another --out, "
                         "or delete the file if it is a stale predictions file.")
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
                    max_new_tokens: int = 512, categories=None, progress: bool = True, crowd: Mapping[int, dict] | None = None) -> dict:
    """Append predictions for the rows not yet in ``path``; returns counts (done before, written, truncated).

    ``crowd``: the split's crowd regions for the records' truth (see :func:`predict`).
    """
    import datasets
    from tqdm.auto import tqdm

    from ..data.images import undecoded

    before = done_ids(path)
    todo = [i for i, image_id in enumerate(dataset["image_id"]) if image_id not in before]
    rows = dataset.select(todo)
    if isinstance(rows.features.get("images"), datasets.List):  # decode here, so that a bad file is named
        rows = undecoded(rows)
    written = truncated = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a") as f, tqdm(total=len(todo), desc="predict", unit="img", disable=not progress) as bar:
            for record in predict(model, processor, rows, box_format, batch_size, max_new_tokens, categories, crowd):
                f.write(json.dumps(record) + "\n")
                f.flush()
                written += 1
                truncated += record["truncated"]
                bar.update(1)
    except OSError as e:
        if not disk_full(e):
            raise
        raise disk_error(e, path, "the predictions written so far are kept; a rerun resumes after them") from e
    if truncated:
        logger.warning("%d answers hit max_new_tokens=%d without closing the turn; raise it", truncated, max_new_tokens)
    return {"skipped_done": len(before), "written": written, "truncated": truncated}


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

