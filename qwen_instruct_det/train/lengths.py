"""Token lengths of training rows, measured once per built split, as whole columns, and kept with the built data.

A row's length is what TRL's vision collator feeds the model: the chat-templated prompt, with
``<|image_pad|>`` expanded to the image's tokens, plus the templated answer. The template's own
text around one user turn and one assistant turn is the same for every row of our builder, and
special tokens cut the text into pieces that tokenize alone, so a row's length is a constant
plus the tokens of its prompt text and of its answer text plus its image tokens (from its width
and height, through the :class:`~qwen_instruct_det.budget.ImageBudget`). The texts are read as
Arrow columns and tokenized in large batches; the result is checked against whole-row rendering
on a sample of rows (any mismatch falls back to rendering every row), and saved beside the
split's Arrow files, keyed by the split's fingerprint, the tokenizer, the template and the
budget, so a second run (or another rank) reads it back. Texts are cut at the tokenizer's added
tokens (``<|box_start|>`` and the like, one token each) and each distinct piece is tokenized once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..budget import ImageBudget

logger = logging.getLogger(__name__)

_VERSION = "1"  # bump when the definition of a length changes
_CHUNK = 20_000
_CHECKED_ROWS = 16
_PROGRESS_FROM = 50_000  # rows: below this the measure takes well under a few seconds


def token_lengths(dataset, processor, progress: bool = True) -> np.ndarray:
    """``(2, rows)`` int64: each row's whole length in tokens (image tokens included) and its answer's length.

    ``dataset`` is a built split (the builder's rows); the result is cached beside its Arrow files.
    """
    cache = _cache_path(dataset, processor)
    if cache is not None and cache.is_file():
        lengths = np.load(cache)
        if lengths.shape == (2, len(dataset)):
            return lengths
    lengths = _measure(dataset, processor, progress)
    if cache is not None:
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, lengths)
        os.replace(tmp, cache)
    return lengths


def rendered_lengths(rows, processor) -> np.ndarray:
    """The same lengths by rendering each row whole (slow: a reference, and the fallback for rows of another shape)."""
    tok = processor.tokenizer
    budget = ImageBudget.of(processor)
    total, answer = [], []
    for row in rows:
        prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        p = len(tok(prompt, add_special_tokens=False)["input_ids"])
        a = len(tok(full[len(prompt):], add_special_tokens=False)["input_ids"])
        images = int(budget.image_tokens([row["width"]], [row["height"]])[0]) if "<|image_pad|>" in prompt else 1
        total.append(p + a + images - 1)
        answer.append(a)
    return np.array([total, answer], dtype=np.int64).reshape(2, -1)


def _measure(dataset, processor, progress: bool) -> np.ndarray:
    columns = _texts(dataset)
    template = _template_pieces(processor)
    rows = dataset.select_columns(["prompt", "completion", "width", "height"])
    if columns is None or template is None:
        logger.info("rows or chat template of an unusual shape: rendering every row to measure its length")
        return rendered_lengths(rows, processor)
    prompts, answers, widths, heights = columns
    tok = processor.tokenizer
    images = ImageBudget.of(processor).image_tokens(widths, heights) if len(widths) else np.zeros(0, dtype=np.int64)
    constant_prompt, constant_answer = (int(_count(tok, pieces, "", False).sum()) for pieces in template)
    sample = np.unique(np.linspace(0, len(prompts) - 1, min(_CHECKED_ROWS, len(prompts))).astype(np.int64))
    expected = rendered_lengths(rows.select(sample), processor)
    show = progress and len(prompts) >= _PROGRESS_FROM
    for counter in (_count_pieces, _count):  # text cut at special tokens, each piece counted once; else whole texts
        p, a = counter(tok, prompts + answers, "token lengths", show).reshape(2, -1) if len(prompts) else np.zeros((2, 0), np.int64)
        answer = a + constant_answer
        lengths = np.stack([p + constant_prompt + images - 1 + answer, answer]).astype(np.int64)
        if np.array_equal(lengths[:, sample], expected):
            return lengths
        logger.warning("token lengths by %s disagree with whole rows (rows %s: %s vs %s)", counter.__name__, sample.tolist(),
                       lengths[:, sample].tolist(), expected.tolist())
    logger.warning("rendering every row instead (slow at scale)")
    return rendered_lengths(rows, processor)


def _template_pieces(processor) -> tuple[list[str], list[str]] | None:
    """The chat template's constant text around a prompt text and around an answer text, or None if rows do not split so."""
    p, a = "\ue000", "\ue001"  # private-use characters: in no template and no row
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}]
    completion = [{"role": "assistant", "content": [{"type": "text", "text": a}]}]
    rendered = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(prompt + completion, tokenize=False)
    tail = full[len(rendered):]
    if rendered.count(p) != 1 or not full.startswith(rendered) or not tail.startswith(a) or tail.count(a) != 1:
        return None
    before, after = rendered.split(p)
    return [before, after], [tail[len(a):]]


def _texts(dataset):
    """(prompt texts, answer texts, widths, heights) read as Arrow columns, or None unless every row is one user turn
    ``[image, text]`` and one assistant turn ``[text]`` (the builder's rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.select_columns(["prompt", "completion", "width", "height"]).with_format("arrow")[:]
    out = []
    for name, role, types in (("prompt", "user", ["image", "text"]), ("completion", "assistant", ["text"])):
        column = table.column(name)
        messages = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if len(messages) and not pc.all(pc.equal(messages.value_lengths(), 1)).as_py():
            return None
        turn = messages.flatten()  # one message per row; struct fields read with pc.struct_field (StructArray.field ignores slicing)
        content = pc.struct_field(turn, "content")
        if len(turn) and (not pc.all(pc.equal(pc.struct_field(turn, "role"), role)).as_py()
                          or not pc.all(pc.equal(content.value_lengths(), len(types))).as_py()):
            return None
        items = content.flatten()
        if pc.struct_field(items, "type").to_pylist() != types * len(turn):
            return None
        out.append(pc.struct_field(items, "text").to_pylist()[len(types) - 1::len(types)])
    return out[0], out[1], table.column("width").to_numpy(), table.column("height").to_numpy()


def _count(tok, texts: list[str], desc: str, progress: bool) -> np.ndarray:
    """Tokens of each text (no special tokens added), each distinct text tokenized once, in large batches."""
    codes: dict[str, int] = {}
    which = np.fromiter((codes.setdefault(t, len(codes)) for t in texts), dtype=np.int64, count=len(texts))
    return _tokenized(tok, list(codes), desc, progress)[which]


def _count_pieces(tok, texts: list[str], desc: str, progress: bool) -> np.ndarray:
    """:func:`_count` for texts cut at the tokenizer's added tokens (each one token): the pieces between them tokenize
    alone, and are far fewer than the texts (a region's coordinates are in both its prompt and its answer; labels,
    prompts and sentences repeat). Cut, deduplicated and summed as Arrow columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    added = _added_tokens(tok)
    if added is None:
        return _count(tok, texts, desc, progress)
    pattern = "|".join(re.escape(token) for token in sorted(added, key=len, reverse=True))
    column = pa.array(texts, pa.string())
    pieces = pc.split_pattern_regex(column, pattern=pattern)
    specials = pc.count_substring_regex(column, pattern=pattern).to_numpy().astype(np.int64)
    encoded = pieces.flatten().dictionary_encode()
    per_piece = _tokenized(tok, encoded.dictionary.to_pylist(), desc, progress)[encoded.indices.to_numpy()]
    offsets = pieces.offsets.to_numpy()
    sums = np.add.reduceat(np.append(per_piece, 0), offsets[:-1]) * (offsets[1:] > offsets[:-1])
    return sums + specials


def _added_tokens(tok) -> list[str] | None:
    """The tokenizer's added tokens (special or not), or None when one of them strips or matches words, so that cutting
    the text at them would not cut it as the tokenizer does."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    tokens = list(backend.get_added_tokens_decoder().values())
    if any(t.lstrip or t.rstrip or t.single_word for t in tokens):
        return None
    return [t.content for t in tokens]


def _tokenized(tok, distinct: list[str], desc: str, progress: bool) -> np.ndarray:
    """Tokens of each of ``distinct`` (no special tokens added), in large batches."""
    from tqdm.auto import tqdm

    backend = getattr(tok, "backend_tokenizer", None)
    counts = np.empty(len(distinct), dtype=np.int64)
    with _unpadded(backend):
        for start in tqdm(range(0, len(distinct), _CHUNK), desc=desc, unit_scale=_CHUNK, disable=not progress):
            chunk = distinct[start:start + _CHUNK]
            if backend is not None:
                counts[start:start + len(chunk)] = [len(e) for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                counts[start:start + len(chunk)] = [len(ids) for ids in tok(chunk, add_special_tokens=False)["input_ids"]]
    return counts


@contextlib.contextmanager
def _unpadded(backend):
    """The Rust tokenizer with no padding and no truncation for a while: transformers leaves the last call's settings on it
    (a collator's ``padding=True`` pads every later batch to its longest text), and sets its own at each call."""
    if backend is None:
        yield
        return
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        yield
    finally:
        if padding is not None:
            backend.enable_padding(**padding)
        if truncation is not None:
            backend.enable_truncation(**truncation)


def _cache_path(dataset, processor) -> Path | None:
    """Where a built split's lengths are kept (beside its Arrow files), or None for a split with no files."""
    files = getattr(dataset, "cache_files", None)
    if not files or getattr(dataset, "_indices", None) is not None:
        return None
    tok = processor.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    digest = hashlib.sha256(_VERSION.encode())
    for part in (dataset._fingerprint, backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items())),
                 str(getattr(processor, "chat_template", None) or tok.chat_template), repr(ImageBudget.of(processor))):
        digest.update(part.encode() + b"\0")
    return Path(files[0]["filename"]).parent / f"qid-token-lengths-{digest.hexdigest()[:20]}.npy"
