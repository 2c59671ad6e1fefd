"""Token lengths by pieces equal what TRL's vision collator makes, on every family and configuration; they are kept and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")

from qwen_instruct_det.budget import ImageBudget  # noqa: E402
from qwen_instruct_det.data.objects import TASKS  # noqa: E402
from qwen_instruct_det.data.splits import load_split  # noqa: E402
from qwen_instruct_det.models.tiny import FAMILIES, TinyModelConfig, build_processor  # noqa: E402
from qwen_instruct_det.train import lengths  # noqa: E402

NATIVE = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5", "qwen3_vl": "qwen3"}


@pytest.fixture(scope="module", params=FAMILIES)
def family_processor(request):
    # a budget that resizes the synthetic images (96-160 px) to several sizes, so image tokens differ row to row
    return request.param, build_processor(["circle square triangle diamond plus sign"],
                                          TinyModelConfig(family=request.param, min_pixels=56 * 56, max_pixels=160 * 160))


def _collated(processor, rows) -> np.ndarray:
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    out = []
    for row in rows:
        batch = collator([{"images": row["images"], "prompt": row["prompt"], "completion": row["completion"]}])
        out.append((int(batch["attention_mask"].sum()), int((batch["labels"] != -100).sum())))
    return np.array(out).T


@pytest.mark.parametrize("config", TASKS)
def test_lengths_are_what_the_collator_makes(family_processor, config, shapes_dir, tmp_path_factory, caplog):
    family, processor = family_processor
    cache = tmp_path_factory.mktemp(f"lengths-{family}")
    rows = load_split(config, "train", cache_dir=str(cache), data_dir=str(shapes_dir), box_format=NATIVE[family],
                      **ImageBudget.of(processor).as_options())
    measured = lengths.token_lengths(rows, processor, progress=False)
    assert "disagree" not in caplog.text and "rendering" not in caplog.text  # counted by pieces, the fast way
    assert measured.shape == (2, len(rows))
    picked = np.linspace(0, len(rows) - 1, 8).astype(int)
    assert np.array_equal(measured[:, picked], _collated(processor, rows.select(picked)))
    assert len(set(measured[0].tolist())) > 1  # the images and answers differ, and so do the lengths


def test_lengths_are_kept_beside_the_split_and_keyed_by_what_decides_them(shapes_dir, tmp_path, monkeypatch):
    processor = build_processor(["circle square"], TinyModelConfig(min_pixels=56 * 56, max_pixels=160 * 160))
    rows = load_split("partial_region", "train", cache_dir=str(tmp_path), data_dir=str(shapes_dir))
    first = lengths.token_lengths(rows, processor, progress=False)
    kept = list(Path(rows.cache_files[0]["filename"]).parent.glob("qid-token-lengths-*.npy"))
    assert len(kept) == 1
    monkeypatch.setattr(lengths, "_measure", lambda *a: pytest.fail("measured again"))
    assert np.array_equal(lengths.token_lengths(rows, processor), first)  # read back: another run, another rank
    monkeypatch.undo()
    ImageBudget.set_on(processor, max_pixels=96 * 96)  # another budget: other image tokens, another file
    smaller = lengths.token_lengths(rows, processor, progress=False)
    assert (smaller[0] <= first[0]).all() and (smaller[0] < first[0]).any() and np.array_equal(smaller[1], first[1])
    assert len(list(kept[0].parent.glob("qid-token-lengths-*.npy"))) == 2


def test_a_collator_that_left_padding_on_the_tokenizer_does_not_change_the_lengths(shapes_dir, tmp_path):
    """transformers leaves a call's padding settings on the Rust tokenizer: a collator's padding=True call then padded
    every batch the lengths were counted in to its longest text."""
    processor = build_processor(["circle square"], TinyModelConfig(min_pixels=56 * 56, max_pixels=160 * 160))
    rows = load_split("count", "train", cache_dir=str(tmp_path), data_dir=str(shapes_dir))
    before = lengths.rendered_lengths(rows.select(range(10)), processor)
    processor.tokenizer(["a", "a much longer text than the other one"], padding=True)
    assert processor.tokenizer.backend_tokenizer.padding is not None
    assert np.array_equal(lengths.token_lengths(rows, processor, progress=False)[:, :10], before)


def test_rows_of_another_shape_are_measured_whole(shapes_dir, tmp_path):
    import datasets

    processor = build_processor(["circle square"], TinyModelConfig(min_pixels=56 * 56, max_pixels=160 * 160))
    rows = load_split("count", "train", cache_dir=str(tmp_path), data_dir=str(shapes_dir)).select(range(4))
    two_turns = datasets.Dataset.from_list([{**row, "prompt": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
                                             + row["prompt"]} for row in rows.select_columns(["prompt", "completion", "width", "height"])])
    assert np.array_equal(lengths.token_lengths(two_turns, processor), lengths.rendered_lengths(two_turns, processor))
    assert lengths.token_lengths(two_turns, processor)[0].tolist() != lengths.token_lengths(rows, processor)[0].tolist()
