"""Packed training: every family's packed loss and LoRA gradients equal the unpacked ones; the plan keeps the epoch contract.

The exactness tests train nothing: a tiny model of each family (float32, LoRA on the vision
tower, merger and language model, LoRA B drawn at random so every gradient is non-zero) reads
rows of different image sizes once packed and once row by row, through the trainer's own
collator and ``compute_loss``. A control packs the same rows with an all-ones attention mask
(no block-diagonal mask) to show the comparison sees attention leaking across rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
from qwen_instruct_det.models import tiny as tiny_model
from qwen_instruct_det.train import config as train_config
from qwen_instruct_det.train import mixture, packing
from qwen_instruct_det.train import sft as training

pytest.importorskip("trl")


def _sft(out, **kw):
    from trl import SFTConfig

    base = dict(output_dir=str(out), per_device_train_batch_size=2, learning_rate=1e-3, report_to="none", use_cpu=True, bf16=False,
                fp16=False, activation_checkpointing=False, seed=0, data_seed=0, dataloader_num_workers=0, max_length=400,
                disable_tqdm=True, save_strategy="no", logging_steps=1000)
    base.update(kw)
    return SFTConfig(**base)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """6 synthetic images of sides 56-150 px (different image token counts) and detection + count rows."""
    root = tmp_path_factory.mktemp("varied")
    opts = SynthOptions(min_size=56, max_size=150, min_objects=1, max_objects=3, empty_fraction=0, crowd_fraction=0, categories=3,
                        textured_fraction=0)
    make_synthetic_coco(root / "data", train=6, val=2, seed=5, options=opts)
    data = train_config.DataArguments(data_dir=str(root / "data"), mix="detection=0.5,count=0.5")
    return root, data


def _trainer(varied, family: str, attn: str = "sdpa", peft: bool = True, **kw):
    from trl import ModelConfig

    root, data = varied
    rows = mixture.build_mixture(data, "train", cache_dir=str(root / "cache"))
    cfg = tiny_model.TinyModelConfig(family=family, hidden_size=64, intermediate_size=128, num_hidden_layers=2, vision_depth=1,
                                     vision_embed_dim=64, min_pixels=56 * 56, max_pixels=150 * 150)
    processor = tiny_model.build_processor(tiny_model.row_texts(rows.select_columns(["prompt", "completion"])), cfg)
    model = tiny_model.build_model(processor, cfg)
    model.config._attn_implementation = attn
    for sub in (model.config.get_text_config(), getattr(model.config, "vision_config", None)):
        if sub is not None:
            sub._attn_implementation = attn
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    args = ModelConfig(model_name_or_path="tiny", use_peft=peft, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    trainer, _, stats = training.make_trainer(data, parts, args, _sft(root / f"out-{family}", **kw), model=model, processor=processor,
                                              cache_dir=str(root / "cache"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # LoRA B starts at zero, which would make every LoRA A gradient zero
    return trainer, stats


def _loss_and_grads(trainer, batch) -> tuple[float, dict]:
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, trainer._prepare_inputs(batch))
    loss.backward()
    return loss, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _unpacked(trainer, rows) -> tuple[float, dict]:
    """The token-weighted loss of ``rows`` each alone (batch of one), and its gradients."""
    model = trainer.model
    model.train()
    model.zero_grad()
    batches = [trainer._prepare_inputs(trainer.data_collator([row])) for row in rows]  # rows fresh from the dataset: TRL's
    # collator writes the images into the rows' messages
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    total = sum(counts)
    loss = sum(trainer.compute_loss(model, b) * n / total for b, n in zip(batches, counts))
    loss.backward()
    return loss, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_a_packed_batch_has_the_loss_and_lora_gradients_of_its_rows_unpacked(varied, family, tmp_path):
    trainer, _ = _trainer(varied, family, packing=True)
    rows = [trainer.train_dataset[i] for i in range(8)]
    sizes = {(r["width"], r["height"]) for r in rows}
    assert len(sizes) >= 4  # rows of different image sizes in the same pack
    batch = trainer.packing_collator(rows)
    starts = (batch["position_ids"] == 0).sum(1)
    assert batch["input_ids"].shape[0] < 8 and starts.max() >= 3, starts  # sequences of several rows (capacity 400 tokens)
    assert "attention_mask" not in batch and len(batch["image_grid_thw"]) == 8

    loss, grads = _loss_and_grads(trainer, batch)
    expected, expected_grads = _unpacked(trainer, [trainer.train_dataset[i] for i in range(8)])
    assert abs(loss.item() - expected.item()) <= 1e-5, (loss.item(), expected.item())
    lora = [n for n in grads if "lora_" in n]
    assert any(".visual." in n for n in lora) and any("language_model" in n for n in lora)
    worst = max(float((grads[n] - expected_grads[n]).norm() / expected_grads[n].norm()) for n in lora)
    assert worst <= 1e-4, worst

    leaky = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}  # a causal mask over the whole sequence
    with torch.no_grad():
        leaked = trainer.compute_loss(trainer.model, trainer._prepare_inputs(leaky))
    assert abs(leaked.item() - expected.item()) > 1e-4  # the comparison sees rows attending to each other


@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_positions_restart_in_every_row_as_if_it_were_alone(varied, family):
    trainer, _ = _trainer(varied, family, packing=True)
    rows = [trainer.train_dataset[i] for i in range(5)]
    batch = trainer.packing_collator(rows)
    positions = packing.packed_positions(trainer.rope_index, batch)
    alone = []
    for i in range(5):
        one = trainer.data_collator([trainer.train_dataset[i]])
        mrope, _ = trainer.rope_index(input_ids=one["input_ids"], mm_token_type_ids=one["mm_token_type_ids"],
                                      image_grid_thw=one["image_grid_thw"], attention_mask=one["attention_mask"])
        alone.append(mrope[:, 0, one["attention_mask"][0].bool()])
    got = []
    pad = trainer.processing_class.tokenizer.pad_token_id
    for sequence in range(positions.shape[1]):
        text = batch["position_ids"][sequence]
        starts = torch.nonzero(text == 0).flatten().tolist() + [len(text)]
        got += [positions[1:, sequence, a:b] for a, b in zip(starts, starts[1:])
                if not (batch["input_ids"][sequence, a:b] == pad).all()]  # a shorter sequence's padding restarts too
    assert len(got) == len(alone)
    for row, want in zip(got, alone):
        assert torch.equal(row, want)
    assert any(int(w.max()) != w.shape[1] - 1 for w in alone)  # image rows: mRoPE positions are not the text positions


def test_best_fit_decreasing_fills_sequences_and_keeps_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 1400, 2000)
    packs = packing.pack_rows(lengths, 4096)
    assert sorted(np.concatenate(packs).tolist()) == list(range(2000))
    assert max(lengths[p].sum() for p in packs) <= 4096
    assert len(packs) <= int(np.ceil(lengths.sum() / 4096 * 1.03))  # within 3% of the bound no packing can beat
    with pytest.raises(ValueError, match="longer than max_length"):
        packing.pack_rows([10, 5000], 4096)


def test_next_fit_cuts_a_batch_into_no_more_sequences_than_it_holds():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lengths = rng.integers(1, 60, 12)
        packs = packing.pack_rows(lengths, 100)
        flat = np.concatenate(packs)
        groups = packing.next_fit(lengths[flat], 100)
        assert len(groups) <= len(packs)
        assert all(lengths[flat[g]].sum() <= 100 for g in groups)


def test_every_epoch_packs_the_same_samples_into_as_many_sequences(varied, tmp_path):
    trainer, stats = _trainer(varied, "qwen2_vl", packing=True, max_length=140, num_train_epochs=3)
    packer, mix = trainer.packer, trainer.mixture
    counts = set()
    for epoch in range(3):
        packs = packer.epoch(epoch)
        counts.add(len(packs))
        rows = np.sort(np.concatenate(packs))
        assert np.array_equal(rows, np.sort(mix.epoch_indices(epoch)))  # the epoch's samples, each once
        assert max(mix.lengths[0, p].sum() for p in packs) <= 140
    assert counts == {packer.sequences}
    plan = stats["mixture"]["packing"]
    assert plan["sequences_per_epoch"] == packer.sequences and plan["max_length"] == 140
    assert stats["mixture"]["steps_per_epoch"] == int(np.ceil(packer.sequences / 2))
    assert stats["mixture"]["samples_per_epoch"] == mix.samples_per_epoch


def test_rows_longer_than_the_packing_length_are_left_out_and_counted(varied):
    trainer, stats = _trainer(varied, "qwen2_vl", packing=True, max_length=80)
    lengths = trainer.mixture.lengths[0]
    too_long = int((lengths > 80).sum())
    assert too_long > 0 and stats["dropped_long_samples"] == too_long  # as unpacked: never cut
    packed = np.concatenate(trainer.packer.epoch(0))
    assert lengths[packed].max() <= 80 and len(packed) == trainer.mixture.samples_per_epoch


def test_packed_training_learns_and_saves_the_plan(varied, tmp_path):
    import json

    trainer, stats = _trainer(varied, "qwen2_5_vl", peft=False, packing=True, max_steps=24, learning_rate=3e-3, logging_steps=6,
                              output_dir=str(tmp_path / "run"))
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.global_step == 24
    rows = stats["mixture"]["samples_per_epoch"] * 24 / stats["mixture"]["steps_per_epoch"]  # rows read, not sequences
    assert result.metrics["train_samples_per_second"] * result.metrics["train_runtime"] == pytest.approx(rows, rel=0.05)
    record = training.run_record(trainer, stats)
    assert record["packing"] is True and record["mixture"]["packing"]["sequences_per_epoch"] == trainer.packer.sequences
    tokens = trainer.state.log_history[-2].get("num_tokens") or trainer._total_train_tokens
    assert tokens > 24 * 100  # rows' tokens, not the count of sequences
    json.dumps(record)


@pytest.mark.parametrize("bad, message", [
    ({"packing_strategy": "wrapped"}, "cuts rows across sequences"),
    ({"padding_free": True}, "drop --padding_free"),
    ({"max_length": None}, "set --max_length"),
    ({"train_sampling_strategy": "batch_rebalance"}, "draws each epoch itself"),
])
def test_packing_options_that_would_cut_rows_are_refused(varied, bad, message):
    with pytest.raises(ValueError, match=message):
        _trainer(varied, "qwen2_vl", packing=True, **bad)


def test_an_attention_that_cannot_keep_rows_apart_is_refused(varied):
    with pytest.raises(ValueError, match="--attn_implementation sdpa"):
        _trainer(varied, "qwen2_vl", attn="paged|eager", packing=True)


def test_length_grouped_batches_pad_less_and_hold_the_same_rows():
    rng = np.random.default_rng(2)
    lengths = rng.integers(300, 1400, (2, 2000))
    mix = mixture.Mixture(None, [mixture.MixPart("detection", 0, 1000, 0.5), mixture.MixPart("count", 1000, 1000, 0.5)], "train",
                          lengths=lengths)
    grouped, plain = mixture.MixtureSampler(mix, group_batch=8), mixture.MixtureSampler(mix)
    for sampler in (grouped, plain):
        sampler.set_epoch(1)
    grouped, ordered = np.array(list(grouped)), np.array(list(plain))
    assert np.array_equal(np.sort(grouped), np.sort(ordered)) and not np.array_equal(grouped, ordered)

    def padding(order):
        batches = lengths[0, order].reshape(-1, 8)
        return (batches.max(1)[:, None] - batches).sum() / (batches.max(1) * 8).sum()

    assert padding(grouped) < padding(ordered) / 5, (padding(grouped), padding(ordered))


def test_the_trainer_groups_by_length_when_asked(varied):
    trainer, _ = _trainer(varied, "qwen2_vl", per_device_train_batch_size=4, train_sampling_strategy="group_by_length")
    assert trainer._get_train_sampler().group_batch == 4
    trainer, _ = _trainer(varied, "qwen2_vl", per_device_train_batch_size=4)
    assert trainer._get_train_sampler().group_batch is None


def test_qid_train_packing_true_trains_packed_and_says_so(varied, tmp_path, caplog):
    import json
    import logging

    from qwen_instruct_det.commands import train as train_command

    root, data = varied
    argv = ["--tiny", "true", "--data_dir", data.data_dir, "--mix", "detection=0.5,count=0.5", "--output_dir", str(tmp_path / "out"),
            "--use_peft", "false", "--max_steps", "2", "--per_device_train_batch_size", "1", "--packing", "true", "--max_length", "600",
            "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0"]
    with caplog.at_level(logging.INFO, logger="qwen_instruct_det"):
        out = train_command.main(argv)
    assert "packed: " in caplog.text and "sequences of at most 600 tokens per epoch" in caplog.text
    record = json.loads((out / "training_args.json").read_text())
    assert record["packing"] is True and record["max_length"] == 600
    assert record["mixture"]["packing"]["sequences_per_epoch"] < record["mixture"]["samples_per_epoch"]


def test_each_epoch_of_a_packed_run_reads_its_own_draw(varied, tmp_path):
    trainer, stats = _trainer(varied, "qwen2_vl", packing=True, max_length=300, num_train_epochs=2, output_dir=str(tmp_path / "run"))
    seen = []
    plan = trainer.packer.epoch
    trainer.packer.epoch = lambda epoch: seen.append(epoch) or plan(epoch)
    result = trainer.train()
    assert seen == [0, 1]  # the trainer's set_epoch reaches the batch sampler through accelerate's wrapper
    assert result.global_step == 2 * stats["mixture"]["steps_per_epoch"]


def test_an_epoch_the_schedule_did_not_plan_says_what_it_cannot_read(varied, caplog):
    import logging

    trainer, _ = _trainer(varied, "qwen2_vl", packing=True, max_length=140, num_train_epochs=1)
    packer = trainer.packer
    packer.sequences = len(packer.epoch(0)) - 1  # as if the schedule had planned one sequence fewer than epoch 0 packs into
    with caplog.at_level(logging.WARNING, logger="qwen_instruct_det.train.packing"):
        packer.epoch(0)
    assert "the last 1 are not read" in caplog.text
