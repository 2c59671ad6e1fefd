"""Model parts, LoRA targets and trainable counts on the published configurations of every Qwen-VL generation.

The models are built on the meta device (shapes only, no memory) from the values of each
checkpoint's config.json on the Hub, written out below in transformers 5's form
(``rope_parameters`` for the old ``rope_scaling`` + ``rope_theta``). Expected counts are
worked out by hand from those values, not read back from the model.
"""

from __future__ import annotations

import itertools
import re

import pytest

from qwen_instruct_det.models import parts as model_parts  # noqa: E402

torch = pytest.importorskip("torch")


# https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json
QWEN2_VL_2B = {
    "model_type": "qwen2_vl",
    "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "hidden_size": 1536, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2},
    "tie_word_embeddings": True,
}
# https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json
QWEN2_5_VL_3B = {
    "model_type": "qwen2_5_vl",
    "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"},
    "tie_word_embeddings": True,
}
# https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct/blob/main/config.json
QWEN3_VL_2B = {
    "model_type": "qwen3_vl",
    "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
    "vision_config": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048,
                      "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                      "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh"},
    "tie_word_embeddings": True,
}
# https://huggingface.co/Qwen/Qwen3-VL-4B-Instruct/blob/main/config.json
QWEN3_VL_4B = {
    "model_type": "qwen3_vl",
    "text_config": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
    "vision_config": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2560,
                      "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                      "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh"},
    "tie_word_embeddings": True,
}
# https://huggingface.co/Qwen/Qwen3-VL-30B-A3B-Instruct/blob/main/config.json: every language layer a mixture of 128 experts
QWEN3_VL_30B_A3B = {
    "model_type": "qwen3_vl_moe",
    "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
                    "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 48, "num_attention_heads": 32,
                    "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "out_hidden_size": 2048,
                      "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                      "deepstack_visual_indexes": [8, 16, 24], "hidden_act": "gelu_pytorch_tanh"},
    "tie_word_embeddings": False,
}
PUBLISHED = {"Qwen2-VL-2B-Instruct": QWEN2_VL_2B, "Qwen2.5-VL-3B-Instruct": QWEN2_5_VL_3B, "Qwen3-VL-2B-Instruct": QWEN3_VL_2B,
             "Qwen3-VL-4B-Instruct": QWEN3_VL_4B}
R = 32


def _meta_model(spec: dict):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.for_model(**spec)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


@pytest.fixture(scope="module", params=list(PUBLISHED))
def published(request):
    return request.param, PUBLISHED[request.param], _meta_model(PUBLISHED[request.param])


def _linears(model) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear except the output head (tied to the input embeddings; PEFT's all-linear leaves it out too)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


def _lora_by_hand(spec: dict) -> dict[str, int]:
    """LoRA r=32 parameters per part: r * (in + out) for every linear layer, from the config's numbers."""
    t, v = spec["text_config"], spec["vision_config"]
    h, i, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    head = t.get("head_dim", h // t["num_attention_heads"])
    q, kv = t["num_attention_heads"] * head, t["num_key_value_heads"] * head
    language = layers * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
    family = spec["model_type"]
    if family == "qwen2_vl":
        w, vi, out = v["embed_dim"], v["embed_dim"] * v["mlp_ratio"], v["hidden_size"]
        mlp = (w + vi) + (vi + w)  # fc1, fc2
    elif family == "qwen2_5_vl":
        w, vi, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
        mlp = 2 * (w + vi) + (vi + w)  # gate_proj, up_proj, down_proj
    else:
        w, vi, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
        mlp = (w + vi) + (vi + w)  # linear_fc1, linear_fc2
    vision = v["depth"] * ((w + 3 * w) + (w + w) + mlp)  # qkv, proj, MLP
    merged = w * v["spatial_merge_size"] ** 2  # a 2x2 group of patch features, concatenated
    mergers = 1 + len(v.get("deepstack_visual_indexes", []))  # Qwen3-VL: the merger and one per deepstack layer
    merger = mergers * ((merged + merged) + (merged + out))
    return {"vision": R * vision, "merger": R * merger, "language_model": R * language}


def test_part_of_names_every_generation():
    assert model_parts.part_of("model.visual.blocks.3.mlp.linear_fc1.weight") == "vision"
    assert model_parts.part_of("model.visual.merger.mlp.0.weight") == "merger"
    assert model_parts.part_of("model.visual.merger.linear_fc2.bias") == "merger"
    assert model_parts.part_of("base_model.model.model.visual.deepstack_merger_list.2.linear_fc1.lora_A.default.weight") == "merger"
    assert model_parts.part_of("model.visual.deepstack_merger_list.0.norm.weight") == "merger"
    assert model_parts.part_of("model.visual.patch_embed.proj.weight") == "vision"
    assert model_parts.part_of("model.language_model.embed_tokens.weight") == "language_model"
    assert model_parts.part_of("lm_head.weight") == "language_model"


def test_lora_regex_targets_exactly_the_linear_layers_of_the_unfrozen_parts(published):
    name, _, model = published
    linears = _linears(model)
    assert {model_parts.part_of(n) for n in linears} == set(model_parts.PARTS)
    for k in range(1, len(model_parts.PARTS) + 1):
        for parts in itertools.combinations(model_parts.PARTS, k):
            regex = re.compile(model_parts.lora_target_regex(list(parts)))
            wrong = [n for n in linears if bool(regex.fullmatch(n)) != (model_parts.part_of(n) in parts)]
            assert not wrong, f"{name}, trainable {parts}: {wrong[:5]}"


def test_lora_r32_trainable_parameters_per_part_match_the_hand_count(published):
    from peft import LoraConfig, get_peft_model

    name, spec, model = published
    config = LoraConfig(r=R, lora_alpha=2 * R, target_modules=model_parts.lora_target_regex(list(model_parts.PARTS)))
    summary = model_parts.trainable_summary(get_peft_model(model, config, low_cpu_mem_usage=True))  # LoRA weights on meta too
    assert {p: summary[p]["trainable"] for p in model_parts.PARTS} == _lora_by_hand(spec), name


def test_full_fine_tuning_of_the_merger_includes_qwen3_vl_deepstack_mergers():
    model = _meta_model(QWEN3_VL_2B)
    model_parts.set_trainable_parts(model, ["merger"])
    summary = model_parts.trainable_summary(model)
    w, m, out = 1024, 4096, 2048
    main = 2 * w + (m * m + m) + (m * out + out)  # LayerNorm over one patch feature, linear_fc1, linear_fc2
    deepstack = 3 * (2 * m + (m * m + m) + (m * out + out))  # LayerNorm over the merged feature, linear_fc1, linear_fc2
    assert deepstack == 75_540_480
    assert summary["merger"] == {"trainable": main + deepstack, "total": main + deepstack}
    assert summary["vision"]["trainable"] == summary["language_model"]["trainable"] == 0


def test_lora_reaches_the_experts_of_qwen3_vl_moe():
    """Qwen3-VL-MoE keeps each layer's experts in two 3-D parameters, not nn.Linear: target_modules alone adapts attention only."""
    from peft import get_peft_model

    model = _meta_model(QWEN3_VL_30B_A3B)
    assert model_parts.lora_target_parameters(model, ["language_model"]) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert model_parts.lora_target_parameters(model, ["vision", "merger"]) == []
    assert model_parts.lora_target_parameters(_meta_model(QWEN3_VL_2B), list(model_parts.PARTS)) == []  # dense: every MLP is nn.Linear
    trl = pytest.importorskip("trl")
    explicit = trl.get_peft_config(trl.ModelConfig(use_peft=True, lora_r=R, lora_target_modules=["q_proj"]))
    model_parts.set_lora_targets(explicit, model, ["language_model"], trl.ModelConfig(use_peft=True, lora_target_modules=["q_proj"]))
    assert explicit.target_modules in ("q_proj", {"q_proj"}) and not explicit.target_parameters  # what the user names is what trains
    args = trl.ModelConfig(use_peft=True, lora_r=R, lora_alpha=2 * R)  # targets left to the library, as qid train leaves them
    config = trl.get_peft_config(args)
    model_parts.set_lora_targets(config, model, ["language_model"], args)
    assert config.target_parameters == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert args.lora_dropout > 0 and config.lora_dropout == 0  # TRL's default dropout; PEFT's expert LoRA refuses any
    summary = model_parts.trainable_summary(get_peft_model(model, config, low_cpu_mem_usage=True))
    t = QWEN3_VL_30B_A3B["text_config"]
    h, q, kv = t["hidden_size"], t["num_attention_heads"] * t["head_dim"], t["num_key_value_heads"] * t["head_dim"]
    attention = (h + q) + 2 * (h + kv) + (q + h)
    experts = t["num_experts"] * ((h + 2 * t["moe_intermediate_size"]) + (t["moe_intermediate_size"] + h))  # gate_up, down: E x (in + out)
    assert summary["language_model"]["trainable"] == R * t["num_hidden_layers"] * (attention + experts)
    assert summary["vision"]["trainable"] == summary["merger"]["trainable"] == 0


def test_lora_on_parameters_the_user_names_gets_no_dropout():
    """PEFT's LoRA on parameters refuses dropout; TRL's default is 0.05, so naming lora_target_parameters failed inside PEFT."""
    from peft import get_peft_model

    trl = pytest.importorskip("trl")
    model = _meta_model(QWEN3_VL_30B_A3B)
    for named in ({"lora_target_parameters": ["mlp.experts.down_proj"]},
                  {"lora_target_parameters": ["mlp.experts.down_proj"], "lora_target_modules": ["q_proj"]}):
        args = trl.ModelConfig(use_peft=True, lora_r=R, **named)
        config = trl.get_peft_config(args)
        model_parts.set_lora_targets(config, model, ["language_model"], args)
        assert args.lora_dropout > 0 and config.lora_dropout == 0
        assert config.target_parameters == ["mlp.experts.down_proj"]  # the user's choice, not the library's
        summary = model_parts.trainable_summary(get_peft_model(_meta_model(QWEN3_VL_30B_A3B), config, low_cpu_mem_usage=True))
        assert summary["language_model"]["trainable"] > 0


def test_expert_lora_trains_and_merges_on_a_small_qwen3_vl_moe():
    """The experts' LoRA is in the forward pass (its gradients are not zero) and merges into the same function."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText

    trl = pytest.importorskip("trl")
    small = {**QWEN3_VL_30B_A3B,
             "text_config": {**QWEN3_VL_30B_A3B["text_config"], "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
                             "num_experts": 4, "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300,
                             "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}},
             "vision_config": {**QWEN3_VL_30B_A3B["vision_config"], "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                               "out_hidden_size": 64, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}}
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(**small))
    args = trl.ModelConfig(use_peft=True, lora_r=4, lora_alpha=8)
    config = trl.get_peft_config(args)
    model_parts.set_lora_targets(config, model, ["language_model"], args)
    peft_model = get_peft_model(model, config)
    ids = torch.randint(0, 300, (2, 12))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    expert_grads = {n: p.grad.abs().sum().item() for n, p in peft_model.named_parameters() if "experts" in n and "lora_B" in n}
    assert len(expert_grads) == 2 * 2 and all(g > 0 for g in expert_grads.values())  # gate_up and down, in both layers
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # B starts at zero: give the adapter something to merge
        adapted = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
