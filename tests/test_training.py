"""Training, inference, merge and publishing on the tiny model: the whole path, offline.

A session fixture trains the tiny Qwen2-VL from scratch on 8 images until it has memorised
them; the tests then check that masks, coordinates, parsing and the metric agree (F1 = 1.0
on those images), that batched and one-by-one generation give the same text, and the rest
of the model path (LoRA, resume, merge, cards) around it.
"""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import torch

from qwen_instruct_det import hub
from qwen_instruct_det.commands import cli
from qwen_instruct_det.commands import models as model_cli
from qwen_instruct_det.commands import train as train_command
from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
from qwen_instruct_det.eval import report as eval_report
from qwen_instruct_det.eval.matching import detection_scores
from qwen_instruct_det.models import config as model_config
from qwen_instruct_det.models import inference, loading
from qwen_instruct_det.models import parts as model_parts
from qwen_instruct_det.models import tiny as tiny_model
from qwen_instruct_det.train import config as train_config
from qwen_instruct_det.train import mixture
from qwen_instruct_det.train import sft as training

pytest.importorskip("trl")


def _sft(out, **kw):
    from trl import SFTConfig

    base = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, lr_scheduler_type="constant",
                logging_steps=50, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
                activation_checkpointing=False, seed=0, data_seed=0, dataloader_num_workers=0, max_length=1024,
                disable_tqdm=True, weight_decay=0.0)
    base.update(kw)
    return SFTConfig(**base)


@pytest.fixture(scope="session")
def eight(tmp_path_factory):
    """8 synthetic images (1-2 shapes, 2 classes) and their detection rows."""
    root = tmp_path_factory.mktemp("eight")
    opts = SynthOptions(min_size=84, max_size=84, min_objects=1, max_objects=2, empty_fraction=0, crowd_fraction=0,
                        categories=2, min_object_fraction=0.3, max_object_fraction=0.5, textured_fraction=0)
    make_synthetic_coco(root / "data", train=8, val=4, seed=11, options=opts)
    data = train_config.DataArguments(data_dir=str(root / "data"), mix="detection=1.0")
    rows = mixture.build_mixture(data, "train", cache_dir=str(root / "cache"))
    return root, data, rows


@pytest.fixture(scope="session")
def memorised(eight):
    """The tiny model trained from scratch on the 8 images until it repeats them."""
    from trl import ModelConfig

    root, data, rows = eight
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    cfg = tiny_model.TinyModelConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, vision_depth=1, vision_embed_dim=64,
                                     min_pixels=84 * 84 // 2, max_pixels=84 * 84)
    processor = tiny_model.build_processor(texts, cfg)
    model = tiny_model.build_model(processor, cfg)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    trainer, qc, stats = training.make_trainer(data, parts, ModelConfig(model_name_or_path="tiny", use_peft=False), _sft(root / "mem", max_steps=300),
                                        model=model, processor=processor, cache_dir=str(root / "cache"))
    trainer.train()
    out = training.save_trained(trainer, processor, qc, stats)
    model.eval()
    return model, processor, qc, out, trainer


def _detection_rows(eight, split="train"):
    root, data, _ = eight
    from qwen_instruct_det.data.builder import QwenInstructDet

    b = QwenInstructDet(config_name="detection", data_dir=data.data_dir, cache_dir=str(root / "cache"))
    b.download_and_prepare()
    return b.as_dataset(split=split)


def test_label_mask_covers_only_the_answer(eight, memorised):
    _, processor, *_ , trainer = memorised
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    tok = processor.tokenizer
    for ids, labels, row_index in zip(batch["input_ids"], batch["labels"], range(4)):
        row = trainer.train_dataset[row_index]
        learned = tok.decode(ids[labels != -100], skip_special_tokens=False)
        answer = row["completion"][0]["content"][0]["text"]
        assert learned.startswith(answer)
        assert learned[len(answer):].strip() == "<|im_end|>"
        image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
        assert not torch.any(labels == image_pad)


def test_memorised_images_score_f1_one(eight, memorised):
    model, processor, qc, *_ = memorised
    rows = _detection_rows(eight)
    records = list(inference.predict(model, processor, rows, box_format="qwen2", batch_size=8,
                                     max_new_tokens=inference.default_max_new_tokens(qc.max_answer_tokens)))
    scores = detection_scores([r["detections"] for r in records], [r["truth"] for r in records])
    assert scores["f1"] == 1.0, [r["text"] for r in records]
    assert all(not r["truncated"] for r in records)
    confidences = [s for r in records for s in r["detections"]["scores"]]
    assert all(0.5 < s <= 1.0 for s in confidences)


def test_batched_and_one_by_one_generation_agree(eight, memorised):
    model, processor, qc, *_ = memorised
    rows = _detection_rows(eight, "validation")
    images, prompts = [r["images"] for r in rows], [r["prompt"] for r in rows]
    batched = inference.generate(model, processor, images, prompts, max_new_tokens=40)
    single = [inference.generate(model, processor, [im], [p], max_new_tokens=40)[0] for im, p in zip(images, prompts)]
    assert [g.text for g in batched] == [g.text for g in single]
    assert np.allclose(np.concatenate([g.token_probs for g in batched]), np.concatenate([g.token_probs for g in single]), atol=1e-4)


def test_truncated_answers_are_flagged(eight, memorised):
    model, processor, *_ = memorised
    rows = _detection_rows(eight)
    record = next(inference.predict(model, processor, rows.select([0]), max_new_tokens=5))
    assert record["truncated"] is True
    assert inference.default_max_new_tokens(100) == 141


def test_predict_file_resumes(eight, memorised, tmp_path):
    model, processor, *_ = memorised
    rows = _detection_rows(eight)
    path = tmp_path / "p.jsonl"
    first = inference.predict_to_file(model, processor, rows.select(range(3)), path, progress=False)
    with open(path, "a") as f:
        f.write('{"image_id": 99, "cut')  # a run killed mid-line
    second = inference.predict_to_file(model, processor, rows, path, progress=False)
    assert (first["written"], second["skipped_done"], second["written"]) == (3, 3, 5)
    ids = [json.loads(line)["image_id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(rows["image_id"])


def test_a_prediction_on_a_crowd_region_is_ignored_not_a_false_positive(eight, memorised, tmp_path):
    """The memorised model finds an object; made a crowd region (out of the targets), its box is neither hit nor miss."""
    model, processor, *_ = memorised
    rows = [dict(r) for r in _detection_rows(eight)]  # the images it memorised: every object found
    first = rows[0]
    hidden, first["objects"] = first["objects"][0], first["objects"][1:]
    region = {"boxes": [hidden["bbox"]], "labels": [hidden["category"]]}
    scores = {}
    for name, crowd in (("with", {first["image_id"]: region}), ("without", None)):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for record in inference.predict(model, processor, rows, crowd=crowd):
                f.write(json.dumps(record) + "\n")
        scores[name] = eval_report.evaluate_file(path)
    record = json.loads((tmp_path / "with.jsonl").read_text().splitlines()[0])
    n = len(first["objects"])
    assert record["truth"]["boxes"][n:] == region["boxes"] and record["truth"]["iscrowd"] == [False] * n + [True]
    assert all("iscrowd" not in json.loads(line)["truth"] for line in (tmp_path / "with.jsonl").read_text().splitlines()[1:])
    with_crowd, without = scores["with"]["det_iou50"], scores["without"]["det_iou50"]
    assert (with_crowd["fp"], with_crowd["ignored"], with_crowd["fn"], with_crowd["f1"]) == (0, 1, 0, 1.0)
    assert (without["fp"], without["ignored"]) == (1, 0)  # what scoring without the crowd region said
    assert scores["with"]["coco_map"]["AP50"] > scores["without"]["coco_map"]["AP50"]


def test_qid_predict_on_a_split_writes_its_crowd_regions(memorised, shapes_dir, tmp_path):
    *_, out, _ = memorised
    data = json.loads((shapes_dir / "annotations" / "instances_val2017.json").read_text())
    crowded = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    path = tmp_path / "p.jsonl"
    model_cli.predict(model_cli.PredictArguments(model=str(out), data_dir=str(shapes_dir), out=str(path), max_new_tokens=4))
    records = eval_report.read_predictions(path)
    assert crowded and {r["image_id"] for r in records if any(r["truth"].get("iscrowd", []))} == crowded


def test_qid_config_travels_with_the_model(memorised):
    *_, out, _ = memorised
    model, processor, qc = loading.load_for_inference(str(out))
    assert qc.box_format == "qwen2" and qc.max_pixels == 84 * 84 and qc.max_answer_tokens > 10
    assert processor.image_processor.size["longest_edge"] == 84 * 84
    recipe = json.loads((out / "training_args.json").read_text())
    assert recipe["max_steps"] == 300 and recipe["dropped_long_samples"] == 0
    # every argument as it took effect (main wrote max_length null and left out the mix, the data and the model settings)
    assert recipe["max_length"] == 1024 and recipe["arguments"]["data"]["mix"] == "detection=1.0"
    assert recipe["arguments"]["data"]["data_dir"] and recipe["arguments"]["model"]["use_peft"] is False
    assert recipe["arguments"]["parts"]["freeze_vision"] is False
    card = (out / "README.md").read_text()  # the library's card, not TRL's "fine-tuned version of [None]"
    assert "library_name: transformers" in card and "qwen_instruct_det" in card and "[None]" not in card
    assert "max_length 1024" in card and "trained parts: vision, merger, language model" in card


def test_over_long_samples_are_left_out_and_counted(eight, memorised):
    root, data, _ = eight
    _, processor, *_ = memorised
    mix = mixture.load_mixture(data, "train", cache_dir=str(root / "cache"), **training.target_options(processor, "qwen2"))
    mix.measure(processor)
    total, answer = mix.lengths
    limit = int(np.median(total))
    mix.keep_shorter(limit)
    assert mix.parts[0].dropped == int((total > limit).sum()) > 0
    assert sorted(mix.epoch_indices(0).tolist()) == np.flatnonzero(total <= limit).tolist()  # an epoch draws the rest, once each
    assert mix.longest_answer() == answer[total <= limit].max()
    # the counted length is the real one: the collator makes exactly that many tokens
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from qwen_instruct_det.data.images import decode_named

    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    rows = decode_named(mix.dataset)
    for k in (0, len(rows) - 1):
        batch = collator([dict(rows[k])])
        assert (int(batch["attention_mask"].sum()), int((batch["labels"] != -100).sum())) == (total[k], answer[k])


def test_parse_mix():
    assert mixture.parse_mix("detection=3,count=1") == {"detection": 0.75, "count": 0.25}
    assert mixture.parse_mix("detection,count") == {"detection": 0.5, "count": 0.5}
    with pytest.raises(ValueError, match="choose from"):
        mixture.parse_mix("boxes=1")


def test_mixture_follows_the_ratios(eight):
    root, data, _ = eight
    mixed = mixture.build_mixture(train_config.DataArguments(data_dir=data.data_dir, mix="detection=1,partial_region=1"), "train",
                                   cache_dir=str(root / "cache"))
    tasks = mixed["task"]
    assert set(tasks) == {"detection", "partial_region"}


@pytest.fixture(scope="session")
def tiny_base(memorised, tmp_path_factory):
    """The memorised tiny model saved as a plain base checkpoint (what a Hub model would be)."""
    model, processor, *_ = memorised
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _lora_trainer(eight, base, out, **sft):
    from trl import ModelConfig

    _, data, _ = eight
    model_args = ModelConfig(model_name_or_path=str(base), use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    parts = train_config.PartsArguments(freeze_vision=True, freeze_merger=False, freeze_llm=False, min_pixels=84 * 84 // 2, max_pixels=84 * 84)
    return training.make_trainer(data, parts, model_args, _sft(out, learning_rate=1e-2, **sft), cache_dir=str(eight[0] / "cache"))


def test_an_image_that_breaks_mid_training_is_named(tmp_path):
    """A JPEG whose header reads but whose pixels are cut off passes the build; decoding it for training names the file."""
    from trl import ModelConfig

    from qwen_instruct_det.data.images import BadImageError

    opts = SynthOptions(min_size=84, max_size=84, min_objects=1, max_objects=1, empty_fraction=0, crowd_fraction=0, categories=2,
                        textured_fraction=0)
    make_synthetic_coco(tmp_path / "data", train=4, val=1, seed=3, options=opts)
    broken = sorted((tmp_path / "data" / "train2017").glob("*.jpg"))[2]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size * 2 // 3])
    cfg = tiny_model.TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vision_depth=1, vision_embed_dim=32,
                                     min_pixels=84 * 84 // 2, max_pixels=84 * 84)
    processor = tiny_model.build_processor(["circle(1,2),(3,4) square"], cfg)
    data = train_config.DataArguments(data_dir=str(tmp_path / "data"), mix="detection=1.0")
    parts = train_config.PartsArguments(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    with pytest.raises(BadImageError, match=str(broken)) as caught:  # SFTTrainer reads a first row as it starts; training the rest
        trainer, _, _ = training.make_trainer(data, parts, ModelConfig(model_name_or_path="tiny", use_peft=False),
                                              _sft(tmp_path / "out", max_steps=1, per_device_train_batch_size=4),
                                              model=tiny_model.build_model(processor, cfg), processor=processor,
                                              cache_dir=str(tmp_path / "cache"))
        trainer.train()
    assert caught.value.paths == [str(broken)]
    assert "cannot decode the image (OSError: image file is truncated" in str(caught.value)  # not the build's header check


def test_lora_targets_only_unfrozen_parts(eight, tiny_base, tmp_path):
    trainer, _, _stats = _lora_trainer(eight, tiny_base, tmp_path, max_steps=1)
    summary = model_parts.trainable_summary(trainer.model)
    assert summary["vision"]["trainable"] == 0
    assert summary["merger"]["trainable"] > 0 and summary["language_model"]["trainable"] > 0
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_resume_gives_the_same_adapter(eight, tiny_base, tmp_path):
    from safetensors.torch import load_file

    full, qc, _stats = _lora_trainer(eight, tiny_base, tmp_path / "full", max_steps=6)
    full.train()
    full.save_model(str(tmp_path / "full"))
    part, _, _stats = _lora_trainer(eight, tiny_base, tmp_path / "part", max_steps=6, save_strategy="steps", save_steps=3)
    part.train()  # writes checkpoint-3 on the way
    resumed, _, _stats = _lora_trainer(eight, tiny_base, tmp_path / "part", max_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    resumed.save_model(str(tmp_path / "resumed"))
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_merge_equals_adapter_and_cards(eight, tiny_base, tmp_path):
    from peft import PeftModel

    trainer, qc, _stats = _lora_trainer(eight, tiny_base, tmp_path / "adapter", max_steps=3)
    trainer.train()
    adapter_dir = training.save_trained(trainer, trainer.processing_class, qc)
    loaded = PeftModel.from_pretrained(loading.load_model(str(tiny_base)), str(adapter_dir))
    merged_dir = loading.merge(adapter_dir, tmp_path / "merged")
    merged = loading.load_model(str(merged_dir))
    processor = loading.load_processor(str(merged_dir))
    rows = _detection_rows(eight, "validation")
    enc = processor(images=[rows[0]["images"]], text=[processor.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True)],
                    return_tensors="pt")
    with torch.no_grad():
        a = loaded.eval()(**enc).logits
        b = merged.eval()(**enc).logits
    assert torch.allclose(a, b, atol=1e-4)
    card = hub.model_card(adapter_dir, "adapter", recipe={"lora_r": 4}, report={"images": 4, "det_iou50": detection_scores([], []),
                                                                                 "coco_map": {"AP": 0.1, "AP50": 0.2, "AP75": 0.0}})
    text = card.read_text()
    assert f"base_model: {tiny_base}" in text and "library_name: peft" in text and "| **all** |" in text
    assert "max_pixels 7056" in text

    # merging what is not an adapter says so (it was "unexpected AttributeError: no attribute 'merge_and_unload'")
    assert cli.main(["merge", str(merged_dir), "--out", str(tmp_path / "again")]) == 2
    # an adapter whose base was saved as a relative path, used from another folder: the base is found beside the adapter
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(adapter_dir, moved / "adapter")
    shutil.copytree(tiny_base, moved / "base")
    config = json.loads((moved / "adapter" / "adapter_config.json").read_text())
    (moved / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "../base"}))
    model, _, _ = loading.load_trained(str(moved / "adapter"))
    assert model.peft_config["default"].base_model_name_or_path == "../base"


def test_dataset_folder_loads_without_the_library(shapes_dir, tmp_path):
    folder = hub.dataset_folder(tmp_path / "repo", configs=["count", "none_region"], data_dir=str(shapes_dir), cache_dir=str(tmp_path / "c"))
    card = (folder / "README.md").read_text()
    assert "config_name: count" in card and "path: count/train-*.parquet" in card
    ds = datasets.load_dataset(str(folder), "count", cache_dir=str(tmp_path / "c2"))
    assert set(ds) == {"train", "validation"}
    raw = ds["train"].cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert raw[0]["images"][0]["bytes"] and raw[0]["images"][0]["bytes"][:2] == b"\xff\xd8"  # JPEG bytes embedded
    assert ds["train"][0]["images"][0].size == (ds["train"][0]["width"], ds["train"][0]["height"])


def test_push_dry_run_builds_the_folder_and_never_uploads(memorised, monkeypatch, capsys):

    *_, out, _ = memorised
    monkeypatch.setattr(hub, "upload", lambda *a, **k: pytest.fail("dry run must not upload"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(["push", "model", str(out), "--dry_run", "--folder", str(out.parent / "stage")]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert "library_name: transformers" in (out.parent / "stage" / "README.md").read_text()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # a dry run writes nothing into the source
    assert cli.main(["push", "model", str(out)]) == 2  # no repo id, no dry run: a clear error


def test_two_process_cpu_training_with_torchrun(eight, tmp_path):
    """The same entry point, distributed over two CPU processes (DDP on gloo) by torchrun.

    (accelerate launch's multi-CPU mode needs MPI for several processes on one machine; on GPUs
    `accelerate launch --config_file configs/accelerate/ddp.yaml` starts this same module through torchrun.)"""
    import os
    import socket
    import subprocess
    import sys

    _, data, _ = eight
    with socket.socket() as sock:  # a free local port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
           "-m", "qwen_instruct_det", "train", "--data_dir", data.data_dir, "--tiny", "true", "--use_peft", "false",
           "--min_pixels", "3528", "--max_pixels", "7056", "--max_steps", "2", "--per_device_train_batch_size", "2",
           "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false",
           "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert recipe["world_size"] == 2 and recipe["max_steps"] == 2
    assert (tmp_path / "out" / "qid_config.json").is_file()


RECIPES = {  # file: (model, box format named in the file, min_pixels, max_pixels)
    "seed_recipe.yaml": ("Qwen/Qwen2-VL-2B-Instruct", None, 3136, 1003520),
    "qwen2_5_vl_3b.yaml": ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5", 3136, 1003520),
    "qwen3_vl_2b.yaml": ("Qwen/Qwen3-VL-2B-Instruct", "qwen3", 65536, 1310720),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes_parse_with_trl_and_flags_override(recipe, caplog):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / recipe
    data, parts, _tiny, model_args, sft = train_command.make_parser().parse_args_and_config(
        args=["--config", str(path), "--learning_rate", "1e-4", "--use_cpu", "true"])  # bf16 checks want a GPU otherwise
    model, box_format, min_pixels, max_pixels = RECIPES[recipe]
    assert (model_args.model_name_or_path, data.box_format, parts.min_pixels, parts.max_pixels) == (model, box_format, min_pixels, max_pixels)
    # the seed's run: every part unfrozen, LoRA r 32 / alpha 64 on all their linear layers
    assert parts.trainable_parts() == ["vision", "merger", "language_model"]
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.use_peft) == (32, 64, 0.05, True)
    assert model_args.lora_target_modules is None  # make_trainer fills in the parts' linear layers
    assert (sft.num_train_epochs, sft.per_device_train_batch_size, sft.gradient_accumulation_steps) == (10, 1, 4)
    assert sft.lr_scheduler_type == "cosine" and sft.warmup_steps == 0.05 and sft.max_length == 2048 and sft.bf16
    assert sft.learning_rate == 1e-4  # the flag wins over the file
    assert mixture.parse_mix(data.mix)["detection"] == 0.5
    family = {"Qwen2-VL": "qwen2_vl", "Qwen2.5-VL": "qwen2_5_vl", "Qwen3-VL": "qwen3_vl"}[model.split("/")[1].rsplit("-", 2)[0]]
    with caplog.at_level("WARNING"):
        assert model_config.box_format_for(family, data.box_format) == model_config.FAMILY_BOX_FORMATS[family]
    assert not caplog.records  # the recipe's format is the model's own


def test_predict_command_on_a_split_and_on_an_image_folder(eight, memorised, tmp_path, capsys):

    root, data, _ = eight
    *_, out, _ = memorised
    preds = tmp_path / "split.jsonl"
    assert cli.main(["predict", str(out), "--data_dir", data.data_dir, "--split", "train", "--out", str(preds), "--batch_size", "4"]) == 0
    records = eval_report.read_predictions(preds)
    assert len(records) == 8 and all("truth" in r and r["image"].endswith(".jpg") for r in records)
    assert cli.main(["evaluate", str(preds), "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["det_iou50"]["f1"] == 1.0
    folder = tmp_path / "folder.jsonl"
    # the memorised images as a plain folder: every one gets its boxes back, without truth (unseen images may not)
    assert cli.main(["predict", str(out), "--images", str(root / "data" / "train2017"), "--out", str(folder)]) == 0
    records = eval_report.read_predictions(folder, need_truth=False)
    assert len(records) == 8 and all("truth" not in r and r["detections"]["boxes"] for r in records), [r["text"] for r in records]
    assert cli.main(["predict", str(out), "--data_dir", data.data_dir, "--images", str(root), "--out", str(folder)]) == 2
    assert "not both" in capsys.readouterr().err


def test_token_offsets_survive_characters_split_over_tokens(memorised):
    _, processor, *_ = memorised
    tok = processor.tokenizer
    ids = tok("feuille d'érable(10,20),(30,40)", add_special_tokens=False)["input_ids"]
    from qwen_instruct_det.models.generate import _text_and_token_ends

    text, ends = _text_and_token_ends(tok, ids)
    assert text == "feuille d'érable(10,20),(30,40)"
    assert ends[-1] == len(text) and list(ends) == sorted(ends)


def test_the_trainer_draws_the_mixtures_epochs_and_logs_detection_scores_at_each_evaluation(eight, memorised, tmp_path, caplog):
    import copy
    import logging

    from trl import ModelConfig

    root, _, _ = eight
    model, processor, *_ = memorised
    data = train_config.DataArguments(data_dir=str(root / "data"), mix="detection=1,count=0.5", eval_split="validation",
                                      eval_detection_images=4)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False)
    sft = _sft(tmp_path / "run", num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-4, eval_strategy="steps", eval_steps=3,
               save_strategy="steps", save_steps=3, metric_for_best_model="f1", per_device_eval_batch_size=4)
    with caplog.at_level(logging.INFO, logger="qwen_instruct_det"):
        trainer, qc, stats = training.make_trainer(data, parts, ModelConfig(model_name_or_path="tiny", use_peft=False), sft,
                                                   model=copy.deepcopy(model), processor=processor, cache_dir=str(root / "cache"))
    # 8 detection rows + 4 count rows an epoch: 3 steps of 4, 6 in two epochs, as the table said before the first step
    assert stats["mixture"]["samples_per_epoch"] == 12 and stats["mixture"]["optimizer_steps"] == 6
    assert "one epoch (anchor): 12 samples" in caplog.text and "training: 6 optimizer steps (3 per epoch, 2 epochs), 24 samples" in caplog.text
    assert stats["eval_mixture"]["samples_per_epoch"] == 4 + 2 and len(trainer.eval_dataset) == 6
    trainer.train()
    assert trainer.state.max_steps == 6 and trainer.state.epoch == 2
    scored = [entry for entry in trainer.state.log_history if "eval_f1" in entry]
    assert [entry["step"] for entry in scored] == [3, 6]
    assert all(0 <= entry[f"eval_{k}"] <= 1 for entry in scored for k in ("f1", "precision", "recall", "AP50"))
    assert trainer.state.best_metric == max(entry["eval_f1"] for entry in scored)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{max(scored, key=lambda e: e['eval_f1'])['step']}")
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["eval_f1"] for e in state["log_history"] if "eval_f1" in e] == [e["eval_f1"] for e in scored]
    out = training.save_trained(trainer, processor, qc, stats)
    assert (out / "detection_curve.png").stat().st_size > 0
    assert json.loads((out / "training_args.json").read_text())["mixture"]["configurations"]["count"]["rows_per_epoch"] == 4


@pytest.mark.parametrize("images, split, match", [(5, "validation", "more than the 4 images of split 'validation'"),
                                                  (2, None, "eval_split, which is not set")])
def test_detection_scores_on_impossible_held_out_sets_name_the_option(eight, memorised, tmp_path, images, split, match):
    from trl import ModelConfig

    root, _, _ = eight
    model, processor, *_ = memorised
    data = train_config.DataArguments(data_dir=str(root / "data"), eval_split=split, eval_detection_images=images)
    with pytest.raises(ValueError, match=match):
        training.make_trainer(data, train_config.PartsArguments(), ModelConfig(model_name_or_path="tiny", use_peft=False), _sft(tmp_path),
                              model=model, processor=processor, cache_dir=str(root / "cache"))


def _resumable_run(root, data, texts, out, stop_at=None, resume=None, **sft_kw):
    """A tiny model fully fine-tuned for 8 steps (stopped after ``stop_at``), saving every 4, from the same seed each time."""
    from transformers import TrainerCallback
    from trl import ModelConfig

    torch.manual_seed(0)
    cfg = tiny_model.TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vision_depth=1, vision_embed_dim=32,
                                     min_pixels=84 * 84 // 2, max_pixels=84 * 84)
    processor = tiny_model.build_processor(texts, cfg)
    sft = _sft(out, per_device_train_batch_size=2, learning_rate=1e-2, max_steps=8, save_strategy="steps", save_steps=4, **sft_kw)
    trainer, qc, stats = training.make_trainer(data, train_config.PartsArguments(freeze_vision=False, freeze_merger=False),
                                          ModelConfig(model_name_or_path="tiny", use_peft=False), sft, model=tiny_model.build_model(processor, cfg),
                                          processor=processor, cache_dir=str(root / "cache"))

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = stop_at is not None and state.global_step >= stop_at

    trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=resume)
    trainer.qid = (qc, stats)
    return trainer


def test_full_fine_tuning_resumes_to_the_last_bit(eight, tmp_path):
    """transformers 5 saves Qwen-VL weights under the published key names; the trainer's own resume matched none of them,
    warned, and trained on from fresh weights (loss back to the start)."""
    root, data, rows = eight
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    whole = _resumable_run(root, data, texts, tmp_path / "whole")
    _resumable_run(root, data, texts, tmp_path / "part", stop_at=4)
    resumed = _resumable_run(root, data, texts, tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-4"))
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[name], b[name]) for name in a)
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (whole, resumed)]
    assert losses[1] == losses[0][4:]  # the resumed run logs steps 5-8 only, and they are the uninterrupted run's


def test_a_checkpoint_whose_weights_do_not_fit_is_an_error(eight, memorised, tmp_path):
    root, data, rows = eight
    _, _, _, memorised_out, _ = memorised  # another, larger tiny model: its weights fit no key shape of this one
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    with pytest.raises(ValueError, match="do not fit the model"):
        _resumable_run(root, data, texts, tmp_path / "other", resume=str(memorised_out))


def test_no_token_is_written_to_any_file_of_the_run(eight, tmp_path, monkeypatch):
    root, data, rows = eight
    monkeypatch.delenv("HF_TOKEN", raising=False)
    secret = "hf_" + "QidSecretToken" * 3
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    trainer = _resumable_run(root, data, texts, tmp_path / "run", hub_token=secret)
    training.save_trained(trainer, trainer.processing_class, *trainer.qid)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("checkpoint-8" in str(p) for p in files)
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked
    assert os.environ["HF_TOKEN"] == secret  # pushes during training still authenticate


def test_a_full_disk_while_predicting_names_the_file_and_a_rerun_resumes(eight, memorised, small_disk, capsys):
    root, data, _ = eight
    *_, out, _ = memorised
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (60 * 1024))  # about 2 KiB left: a record or two, not eight
    preds = small_disk / "preds.jsonl"
    assert cli.main(["predict", str(out), "--data_dir", data.data_dir, "--split", "train", "--out", str(preds), "--batch_size", "8"]) == 2
    err = capsys.readouterr().err
    assert f"no space left on the device while writing {preds}" in err and "a rerun resumes" in err
    filler.unlink()
    assert cli.main(["predict", str(out), "--data_dir", data.data_dir, "--split", "train", "--out", str(preds), "--batch_size", "8"]) == 0
    records = eval_report.read_predictions(preds)
    assert sorted(r["image_id"] for r in records) == sorted(set(r["image_id"] for r in records)) and len(records) == 8


def test_a_checkpoint_holding_an_unsafe_pickle_is_refused_naming_the_file(eight, tmp_path, capsys):
    import pickle

    _, data, _ = eight
    flags = ["--data_dir", data.data_dir, "--tiny", "true", "--use_peft", "false", "--min_pixels", "3528", "--max_pixels", "7056",
             "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false",
             "--activation_checkpointing", "false", "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "steps",
             "--save_steps", "1"]
    assert cli.main(["train", *flags, "--max_steps", "1"]) == 0
    checkpoint = tmp_path / "out" / "checkpoint-1"

    class Hostile:  # what a downloaded checkpoint could hold: a pickle that calls a function when loaded
        def __reduce__(self):
            return (print, ("this ran while loading",))

    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps(Hostile()))
    assert cli.main(["train", *flags, "--max_steps", "2", "--resume_from_checkpoint", str(checkpoint)]) == 2
    captured = capsys.readouterr()
    assert f"{checkpoint / 'rng_state.pth'}: refused to load" in captured.err and "move it away" in captured.err
    assert "weights_only" not in captured.err and "please report" not in captured.err and "this ran" not in captured.out
