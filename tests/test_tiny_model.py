"""The tiny model mirrors the real Qwen2-VL where it matters: tokens, template, image tokens."""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("transformers")

from qwen_instruct_det import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def processor():
    texts = ["<|object_ref_start|>circle<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>", "circle: 2", "Draw the bounding box of objects"]
    return tiny_model.build_processor(texts, tiny_model.TinyModelConfig(vocab_size=300))


def test_special_tokens_follow_the_bpe_vocabulary_in_qwen2_order(processor):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in tiny_model.SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert ids[-1] == len(tok) - 1
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    # special tokens stay whole, digits are single tokens (Qwen2's pre-tokenizer)
    assert tok.tokenize("<|box_start|>(123,4)<|box_end|>") == ["<|box_start|>", "(", "1", "2", "3", ",", "4", ")", "<|box_end|>"]


def test_chat_template_renders_like_qwen2_vl(processor):
    messages = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Draw the bounding box of objects<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "circle: 2"}]}]
    assert processor.apply_chat_template(messages + answer, tokenize=False).endswith("<|im_start|>assistant\ncircle: 2<|im_end|>\n")


def test_image_pad_expands_to_one_token_per_merged_patch_group(processor):
    image = Image.new("RGB", (112, 84), (200, 30, 30))  # 112x84 -> 8x6 patches of 14 -> 4x3 groups of 2x2
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True, tokenize=False)
    enc = processor(images=[image], text=[text], return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == pad).sum()) == 12
    assert enc["image_grid_thw"].tolist() == [[1, 6, 8]]


def test_model_config_is_consistent(processor):
    model = tiny_model.build_model(processor, tiny_model.TinyModelConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vision_depth=1))
    cfg = model.config
    head = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head // 2
    assert cfg.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_config.hidden_size == cfg.text_config.hidden_size
    with pytest.raises(ValueError, match="even head size"):
        tiny_model.build_model(processor, tiny_model.TinyModelConfig(hidden_size=60, num_attention_heads=4))
