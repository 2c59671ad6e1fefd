"""Every Qwen-VL generation end to end: the model decides the box format, one image budget, exact category names.

Each family's tiny model is saved as a plain folder (what a Hub checkpoint is) and driven
through the real entry points: ``train_command.main`` (``qid train`` flags, no ``--box_format``),
``model_cli.predict``, ``eval_report.evaluate_file`` and ``model_cli.merge``. Training
memorises 8 images, so predictions must score F1@50 = 1.0; a LoRA adapter trained on top and
merged must answer as the adapter does. The budget tests stand in for
``generate`` with a function that answers each image's training target exactly: whatever the
family and budget, what the model was taught must parse back to the truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")

from qwen_instruct_det.commands import models as model_cli  # noqa: E402
from qwen_instruct_det.commands import train as train_command  # noqa: E402
from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco  # noqa: E402
from qwen_instruct_det.eval import report as eval_report  # noqa: E402
from qwen_instruct_det.models import config as model_config  # noqa: E402
from qwen_instruct_det.models import inference  # noqa: E402
from qwen_instruct_det.models import tiny as tiny_model  # noqa: E402
from qwen_instruct_det.train import config as train_config  # noqa: E402
from qwen_instruct_det.train import mixture  # noqa: E402
from qwen_instruct_det.train import sft as training  # noqa: E402

NATIVE = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5", "qwen3_vl": "qwen3"}
# The processors' published budgets (preprocessor_config.json of Qwen2-VL-2B-Instruct and Qwen2.5-VL-3B-Instruct:
# min_pixels 3136, max_pixels 12845056; Qwen3-VL-2B-Instruct: size shortest_edge 65536, longest_edge 16777216).
PUBLISHED_BUDGETS = {"qwen2_vl": (3136, 12845056), "qwen2_5_vl": (3136, 12845056), "qwen3_vl": (65536, 16777216)}
NAMES = ["Traffic Light", "SQUARE  (big)"]  # capitals, two spaces, brackets: the data set's names must come back exactly
TINY = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "vision_depth": 1, "vision_embed_dim": 64}
SFT_FLAGS = ["--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "no",
             "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0", "--weight_decay", "0",
             "--max_length", "1024"]


def _synthetic(root: Path, train: int, val: int, size: tuple[int, int], seed: int) -> Path:
    """A synthetic COCO-layout folder whose two categories are renamed to NAMES."""
    opts = SynthOptions(min_size=size[0], max_size=size[1], min_objects=1, max_objects=2, empty_fraction=0, crowd_fraction=0,
                        categories=2, min_object_fraction=0.3, max_object_fraction=0.5, textured_fraction=0)
    make_synthetic_coco(root, train=train, val=val, seed=seed, options=opts)
    for path in (root / "annotations").glob("instances_*.json"):
        coco = json.loads(path.read_text())
        for category, name in zip(sorted(coco["categories"], key=lambda c: c["id"]), NAMES):
            category["name"] = name
        path.write_text(json.dumps(coco))
    return root


def _plain_checkpoint(folder: Path, family: str, texts: list[str], min_pixels: int, max_pixels: int) -> Path:
    """A tiny model and its processor saved as a plain folder (no qid_config.json), like a Hub checkpoint."""
    cfg = tiny_model.TinyModelConfig(family=family, min_pixels=min_pixels, max_pixels=max_pixels, **TINY)
    processor = tiny_model.build_processor(texts, cfg)
    tiny_model.build_model(processor, cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _pixels(image) -> str:
    """An opened image's fingerprint: predict hands the model pictures opened by DataLoader workers, without their file names."""
    return hashlib.sha1(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def _answers(rows) -> dict[str, str]:
    """Each row's target answer, keyed by its image's pixels as the model is shown them."""
    from qwen_instruct_det.data.images import open_image

    return {_pixels(open_image(row["images"][0].filename)): row["completion"][0]["content"][0]["text"] for row in rows}


def _answer_with(monkeypatch, answers: dict[str, str], prompts_seen: list | None = None):
    """Stand in for ``inference.generate``: answer each image (by its pixels) with ``answers[...]``, ending the turn."""

    def generate(model, processor, images, prompts, max_new_tokens=512, **kwargs):
        if prompts_seen is not None:
            prompts_seen.extend(prompts)
        texts = [answers[_pixels(batch[0])] for batch in images]
        return [inference.Generation(t, np.ones(1), np.array([len(t)]), True) for t in texts]

    monkeypatch.setattr(inference, "generate", generate)


def _f1(predictions: Path) -> float:
    return eval_report.evaluate_file(predictions)["det_iou50"]["f1"]


# ---------------------------------------------------------------- one image budget, every family (generate stood in for)


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """Images of 150-260 px a side: above a 12544-pixel budget, so the budget changes the resize."""
    return _synthetic(tmp_path_factory.mktemp("larger") / "data", train=8, val=2, size=(150, 260), seed=5)


@pytest.mark.parametrize("max_pixels", [None, 12544])
@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_answers_equal_to_the_training_targets_score_f1_one_at_any_budget(family, max_pixels, larger, tmp_path, monkeypatch):
    from trl import ModelConfig, SFTConfig

    published_min, published_max = PUBLISHED_BUDGETS[family]
    base = _plain_checkpoint(tmp_path / "base", family, ["Traffic Light", "[]"], published_min, published_max)
    data = train_config.DataArguments(data_dir=str(larger))
    parts = train_config.PartsArguments(max_pixels=max_pixels)
    sft = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_length=None)
    trainer, qc, stats = training.make_trainer(data, parts, ModelConfig(model_name_or_path=str(base), use_peft=False), sft,
                                        cache_dir=str(tmp_path / "cache"))
    assert (qc.box_format, qc.model_type, qc.categories) == (NATIVE[family], family, NAMES)
    # the checkpoint's budget unless overridden (Qwen3-VL's min_pixels 65536 comes down to a max_pixels below it)
    assert (qc.min_pixels, qc.max_pixels) == (min(published_min, max_pixels or published_max), max_pixels or published_max)
    assert trainer.processing_class.image_processor.size["longest_edge"] == qc.max_pixels
    out = training.save_trained(trainer, trainer.processing_class, qc, stats)

    _answer_with(monkeypatch, _answers(trainer.train_dataset))
    predictions = tmp_path / "p.jsonl"
    model_cli.predict(model_cli.PredictArguments(model=str(out), data_dir=str(larger), split="train", out=str(predictions)))
    assert _f1(predictions) == 1.0


@pytest.mark.parametrize("family", tiny_model.FAMILIES)
def test_a_base_checkpoint_is_asked_and_read_in_its_family_format(family, larger, tmp_path, monkeypatch):
    from qwen_instruct_det.data.splits import load_split

    budget = PUBLISHED_BUDGETS[family]
    base = _plain_checkpoint(tmp_path / "base", family, ["Traffic Light", "[]"], *budget)
    truth = load_split("detection", "validation", cache_dir=str(tmp_path / "cache"), data_dir=str(larger), box_format=NATIVE[family],
                       min_pixels=budget[0], max_pixels=budget[1])
    prompts: list = []
    _answer_with(monkeypatch, _answers(truth), prompts)
    predictions = tmp_path / "p.jsonl"
    result = model_cli.predict(model_cli.PredictArguments(model=str(base), data_dir=str(larger), split="validation", out=str(predictions)))
    assert result["box_format"] == NATIVE[family]
    asked = {p[0]["content"][1]["text"] for p in prompts}
    if family == "qwen2_vl":
        assert asked == {"Draw the bounding box of objects"}
    else:
        assert asked == {'Locate every instance that belongs to the following categories: "Traffic Light, SQUARE  (big)". '
                         "Report bbox coordinates in JSON format."}
    assert _f1(predictions) == 1.0


def test_an_explicit_box_format_that_disagrees_with_the_model_warns_and_is_recorded(larger, tmp_path, caplog):
    from trl import ModelConfig, SFTConfig

    base = _plain_checkpoint(tmp_path / "base", "qwen3_vl", ["[]"], 56 * 56, 112 * 112)
    sft = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_length=None)
    with caplog.at_level(logging.WARNING, logger="qwen_instruct_det.models.config"):
        trainer, qc, stats = training.make_trainer(train_config.DataArguments(data_dir=str(larger), box_format="qwen2"), train_config.PartsArguments(),
                                            ModelConfig(model_name_or_path=str(base), use_peft=False), sft, cache_dir=str(tmp_path / "c"))
    assert "disagrees with the model" in caplog.text and "'qwen3'" in caplog.text
    assert trainer.train_dataset[0]["completion"][0]["content"][0]["text"].startswith("<|object_ref_start|>")
    out = training.save_trained(trainer, trainer.processing_class, qc, stats)
    saved = json.loads((out / "qid_config.json").read_text())
    assert (saved["box_format"], saved["model_type"], saved["resize_factor"]) == ("qwen2", "qwen3_vl", 32)
    with pytest.raises(ValueError, match="qwen2_5"):
        model_config.box_format_for("llava", None)  # not a Qwen-VL family: the format must be named


# ---------------------------------------------------------------- train -> predict -> evaluate -> merge, every family


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """8 images of 84 px (1-2 shapes of the two renamed categories) and 4 held out."""
    return _synthetic(tmp_path_factory.mktemp("eight") / "data", train=8, val=4, size=(84, 84), seed=11)


def _train_args(base: Path, data_dir: Path, out: Path, **flags) -> list[str]:
    """``qid train`` flags: every part trained, no --box_format and no image budget (the checkpoint decides both)."""
    args = {"model_name_or_path": base, "data_dir": data_dir, "output_dir": out, "freeze_vision": "false", "freeze_merger": "false",
            "use_peft": "false", "max_steps": 240, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
            "logging_steps": 40, **flags}
    return [item for k, v in args.items() for item in (f"--{k}", str(v))] + SFT_FLAGS


@pytest.fixture(scope="module", params=tiny_model.FAMILIES)
def trained(request, eight, tmp_path_factory):
    """Each family's plain tiny checkpoint, fully fine-tuned by ``qid train`` until it has memorised the 8 images."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    budget = (84 * 84 // 2, 84 * 84)
    rows = mixture.build_mixture(train_config.DataArguments(data_dir=str(eight)), "train", cache_dir=str(root / "cache"),
                                  box_format=NATIVE[family], min_pixels=budget[0], max_pixels=budget[1])
    base = _plain_checkpoint(root / "base", family, [r["completion"][0]["content"][0]["text"] for r in rows], *budget)
    args = _train_args(base, eight, root / "memorised")
    return family, root, args, train_command.main(args)


def test_only_the_answer_and_the_end_of_turn_carry_labels(trained):
    import torch

    family, root, args, _ = trained
    data, parts, _tiny, model_args, sft = train_command.make_parser().parse_args_and_config(args=args + ["--output_dir", str(root / "mask")])
    trainer, _, stats = training.make_trainer(data, parts, model_args, sft)
    tok = trainer.processing_class.tokenizer
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    for ids, labels, row in zip(batch["input_ids"], batch["labels"], rows):
        learned = tok.decode(ids[labels != -100], skip_special_tokens=False)
        answer = row["completion"][0]["content"][0]["text"]
        assert learned.startswith(answer) and learned[len(answer):].strip() == "<|im_end|>"
        assert not torch.any(labels == tok.convert_tokens_to_ids("<|image_pad|>"))


def _predict(model: Path, data_dir: Path, out: Path) -> list[dict]:
    model_cli.predict(model_cli.PredictArguments(model=str(model), data_dir=str(data_dir), split="train", out=str(out)))
    return eval_report.read_predictions(out)


def test_train_predict_evaluate_merge_every_family(trained, eight, tmp_path):
    from safetensors.torch import load_file

    family, root, _, memorised = trained
    qc = json.loads((memorised / "qid_config.json").read_text())
    assert (qc["box_format"], qc["model_type"], qc["categories"]) == (NATIVE[family], family, NAMES)
    assert (qc["min_pixels"], qc["max_pixels"], qc["resize_factor"]) == (84 * 84 // 2, 84 * 84, 32 if family == "qwen3_vl" else 28)

    records = _predict(memorised, eight, tmp_path / "memorised.jsonl")
    report = eval_report.evaluate_file(tmp_path / "memorised.jsonl", tmp_path / "report")
    assert report["det_iou50"]["f1"] == 1.0, [r["text"] for r in records]
    assert sorted({label for r in records for label in r["detections"]["labels"]}) == sorted(NAMES)

    # a LoRA adapter on every part of the memorised model, then merged into it: the merged model answers as the adapter does
    adapter = train_command.main(_train_args(memorised, eight, tmp_path / "adapter", use_peft="true", lora_r=8, lora_alpha=16, lora_dropout=0,
                                        max_steps=3, learning_rate=1e-3))
    lora_b = [w for name, w in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in name]
    assert lora_b and all(float(w.abs().max()) > 0 for w in lora_b)
    if family == "qwen3_vl":
        assert any("deepstack_merger_list" in name for name in load_file(str(adapter / "adapter_model.safetensors")))
    with_adapter = _predict(adapter, eight, tmp_path / "adapter.jsonl")
    merged = model_cli.merge(model_cli.MergeArguments(adapter=str(adapter), out=str(tmp_path / "merged")))
    with_merged = _predict(merged, eight, tmp_path / "merged.jsonl")
    assert [r["text"] for r in with_merged] == [r["text"] for r in with_adapter]
    a = np.concatenate([r["detections"]["scores"] for r in with_adapter])
    b = np.concatenate([r["detections"]["scores"] for r in with_merged])
    assert np.allclose(a, b, atol=1e-4)
    assert _f1(tmp_path / "merged.jsonl") == 1.0
    assert json.loads((merged / "qid_config.json").read_text())["categories"] == NAMES


@pytest.mark.parametrize("trained", ["qwen2_5_vl"], indirect=True)
def test_a_checkpoint_predicts_as_the_final_folder_with_the_same_weights(trained, eight, tmp_path):
    """A Qwen2.5-VL model trained to answer in another box format, on a filtered category list, with another display name and
    image budget: read as a plain checkpoint (no qid_config.json), a checkpoint was parsed in the family's own format and
    asked zero-shot, unlike the final folder holding the same weights."""
    family, root, _, memorised = trained
    out = tmp_path / "run"
    flags = _train_args(memorised, eight, out, use_peft="true", lora_r=8, lora_alpha=16, lora_dropout=0, max_steps=2, learning_rate=1e-3,
                        categories=NAMES[1], display_name="Shapes", max_pixels=64 * 64, box_format="qwen3")
    final = train_command.main(flags + ["--save_strategy", "steps", "--save_steps", "2"])
    checkpoint = out / "checkpoint-2"
    assert {"qid_config.json", "training_args.json", "adapter_config.json", "processor_config.json"} <= {p.name for p in checkpoint.iterdir()}
    saved = json.loads((checkpoint / "qid_config.json").read_text())
    assert saved == json.loads((final / "qid_config.json").read_text())
    assert (saved["categories"], saved["display_name"], saved["max_pixels"], saved["box_format"]) == ([NAMES[1]], "Shapes", 64 * 64, "qwen3")
    assert json.loads((checkpoint / "training_args.json").read_text())["mixture"]["samples_per_epoch"] == 8
    from_checkpoint = _predict(checkpoint, eight, tmp_path / "checkpoint.jsonl")
    from_final = _predict(final, eight, tmp_path / "final.jsonl")
    assert [(r["text"], r["detections"]) for r in from_checkpoint] == [(r["text"], r["detections"]) for r in from_final]
