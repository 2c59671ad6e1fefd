"""GRPO on the tiny model: a few steps from a `qid train` folder, rewards logged, the result saved and loadable.

A session fixture trains the tiny Qwen2-VL briefly on two one-object images (enough for sampled
answers to differ in format and boxes, so that groups have reward variance), saved by
``training.save_trained`` as ``qid train`` would. GRPO then runs two steps from that folder
with a new LoRA through ``qid grpo`` flags, and one step more from the adapter it wrote.
"""

from __future__ import annotations

import json

import pytest
import torch

from qwen_instruct_det.commands import cli
from qwen_instruct_det.commands import grpo as grpo_command
from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
from qwen_instruct_det.models import config as model_config
from qwen_instruct_det.models import loading
from qwen_instruct_det.models import parts as model_parts
from qwen_instruct_det.models import tiny as tiny_model
from qwen_instruct_det.train import config as train_config
from qwen_instruct_det.train import grpo, mixture
from qwen_instruct_det.train import sft as training

pytest.importorskip("trl")

CPU = ["--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "no",
       "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--logging_steps", "1", "--seed", "0"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these models are too small to gain from two, and on a busy machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    """Two 56-px images with one circle each, and the tiny model trained 40 steps on them (a full-model qid train folder)."""
    from trl import ModelConfig, SFTConfig

    root = tmp_path_factory.mktemp("grpo")
    opts = SynthOptions(min_size=56, max_size=56, min_objects=1, max_objects=1, empty_fraction=0, crowd_fraction=0, categories=1,
                        min_object_fraction=0.4, max_object_fraction=0.6, textured_fraction=0)
    make_synthetic_coco(root / "data", train=2, val=2, seed=5, options=opts)
    data = train_config.DataArguments(data_dir=str(root / "data"), mix="detection=1.0")
    texts = [r["completion"][0]["content"][0]["text"] for r in mixture.build_mixture(data, "train", cache_dir=str(root / "cache"))]
    cfg = tiny_model.TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vision_depth=1, vision_embed_dim=32,
                                     min_pixels=56 * 56, max_pixels=56 * 56)
    processor = tiny_model.build_processor(texts, cfg)
    model = tiny_model.build_model(processor, cfg)
    sft = SFTConfig(output_dir=str(root / "sft"), per_device_train_batch_size=2, learning_rate=1e-2, lr_scheduler_type="constant", max_steps=40,
                    save_strategy="no", report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False, dataloader_num_workers=0,
                    max_length=1024, disable_tqdm=True, weight_decay=0.0, seed=0)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    trainer, qc, stats = training.make_trainer(data, parts, ModelConfig(model_name_or_path="tiny", use_peft=False), sft, model=model,
                                        processor=processor, cache_dir=str(root / "cache"))
    trainer.train()
    qc.categories = ["circle"]
    return root, training.save_trained(trainer, processor, qc)


def _flags(data_dir, start, out, steps, *extra):
    return ["--model_name_or_path", str(start), "--data_dir", str(data_dir), "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "32", "--learning_rate", "1e-2",
            "--beta", "0.04", *CPU, *extra]


@pytest.fixture(scope="module")
def grpo_adapter(sft_folder):
    """Two GRPO steps from the SFT folder with a new LoRA on the language model; the trainer and its output."""
    root, sft = sft_folder
    args, model_args, config = grpo_command.make_parser().parse_args_and_config(
        args=_flags(root / "data", sft, root / "grpo", 2, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"))
    trainer, qc, stats = grpo.make_trainer(args, model_args, config, cache_dir=str(root / "cache"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    return trainer, before, grpo.save(trainer, qc, stats)


def test_rewards_and_kl_are_logged_per_step(grpo_adapter):
    trainer, *_ = grpo_adapter
    steps = [h for h in trainer.state.log_history if "reward" in h]
    assert len(steps) == 2
    for h in steps:
        for key in ("rewards/detection_f1/mean", "rewards/format/mean", "rewards/detection_f1/std", "reward_std", "kl",
                    "completions/mean_length"):
            assert key in h, key
        assert 0.0 <= h["rewards/format/mean"] <= 1.0 and 0.0 <= h["rewards/detection_f1/mean"] <= 1.0
        assert h["reward"] == pytest.approx(h["rewards/detection_f1/mean"] + h["rewards/format/mean"], abs=1e-5)  # weights 1, 1
    # the briefly trained start writes some well-formed answers and some not: the groups carry a learning signal
    assert any(h["rewards/format/mean"] > 0 for h in steps)
    assert any(h["frac_reward_zero_std"] < 1 for h in steps)


def test_lora_moved_and_only_the_language_model_trains(grpo_adapter):
    trainer, before, _ = grpo_adapter
    summary = model_parts.trainable_summary(trainer.model)
    assert summary["vision"]["trainable"] == summary["merger"]["trainable"] == 0 and summary["language_model"]["trainable"] > 0
    moved = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert any("lora_B" in n for n in moved)


def test_result_loads_like_a_qid_train_output(sft_folder, grpo_adapter):
    from peft import PeftModel

    root, sft = sft_folder
    *_, out = grpo_adapter
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    model, processor, qc = loading.load_for_inference(str(out))
    assert isinstance(model, PeftModel)
    assert (qc.box_format, qc.categories, qc.max_pixels) == ("qwen2", ["circle"], 56 * 56)
    assert processor.image_processor.size["longest_edge"] == 56 * 56
    recipe = json.loads((out / "training_args.json").read_text())
    assert recipe["grpo_rewards"] == ["detection_f1", "format"] and recipe["beta"] == 0.04 and recipe["train_rows"] == 2


def test_qid_grpo_trains_an_adapter_further(sft_folder, grpo_adapter, tmp_path, capsys):
    """From an adapter folder, `qid grpo` keeps training that adapter (TRL's KL reference copy is not saved)."""
    from safetensors.torch import load_file

    root, sft = sft_folder
    *_, first = grpo_adapter
    out = tmp_path / "again"
    argv = ["grpo", *_flags(root / "data", first, out, 1, "--detection_kind", "map_length", "--rewards", "detection")]
    assert cli.main(argv) == 0
    assert f"saved to {out}" in capsys.readouterr().out
    assert not (out / "ref").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    assert load_file(str(out / "adapter_model.safetensors")).keys() == load_file(str(first / "adapter_model.safetensors")).keys()
    recipe = json.loads((out / "training_args.json").read_text())
    assert recipe["grpo_rewards"] == ["detection_map_length"]
    assert model_config.QidModelConfig.load(out).categories == ["circle"]


def test_a_reward_of_your_own_replaces_the_named_ones(sft_folder):
    root, sft = sft_folder
    seen = []

    def boxes_named(prompts, completions, objects, **columns):  # TRL passes the row's columns, as to the library's rewards
        seen.append(len(objects))
        return [float(len(o)) for o in objects]

    args, model_args, config = grpo_command.make_parser().parse_args_and_config(args=_flags(root / "data", sft, root / "own", 1))
    trainer, _, stats = grpo.make_trainer(args, model_args, config, cache_dir=str(root / "cache"), reward_funcs=[boxes_named])
    trainer.train()
    assert stats["grpo_rewards"] == ["boxes_named"] and seen == [4]
    assert [h for h in trainer.state.log_history if "rewards/boxes_named/mean" in h]


def test_unknown_reward_names_the_choices(sft_folder):
    root, sft = sft_folder
    args, model_args, config = grpo_command.make_parser().parse_args_and_config(args=_flags(root / "data", sft, root / "x", 1, "--rewards", "accuracy"))
    with pytest.raises(ValueError, match="detection"):
        grpo.make_trainer(args, model_args, config, cache_dir=str(root / "cache"))


def test_grpo_recipe_parses_and_flags_override():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "configs" / "grpo_recipe.yaml"
    args, model_args, config = grpo_command.make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--detection_kind", "map_length", "--use_cpu", "true"])
    assert args.rewards == ["detection", "format"] and args.detection_kind == "map_length" and args.trainable_parts() == ["language_model"]
    assert (config.use_vllm, config.vllm_mode, config.num_generations, config.beta) == (True, "colocate", 8, 0.04)
    assert config.reward_weights == [1.0, 1.0] and config.mask_truncated_completions and config.bf16
    assert (model_args.use_peft, model_args.lora_r) == (True, 32)
