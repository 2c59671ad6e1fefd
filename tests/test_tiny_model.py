"""The tiny models mirror the real Qwen-VL generations where it matters: tokens, templates, patches, classes."""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("transformers")

from qwen_instruct_det.budget import ImageBudget  # noqa: E402
from qwen_instruct_det.models import tiny as tiny_model  # noqa: E402

PROMPT = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
CLASSES = {  # family: (processor, model, patch size in pixels)
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration", 14),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration", 14),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLForConditionalGeneration", 16),
}


@pytest.fixture(scope="module", params=tiny_model.FAMILIES)
def processor(request):
    texts = ["<|object_ref_start|>circle<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>", "circle: 2",
             '[{"bbox_2d": [10, 20, 30, 40], "label": "circle"}]', "Draw the bounding box of objects"]
    return tiny_model.build_processor(texts, tiny_model.TinyModelConfig(family=request.param, vocab_size=300))


def _family(processor) -> str:
    return next(f for f, (name, *_) in CLASSES.items() if type(processor).__name__ == name)


def test_special_tokens_follow_the_bpe_vocabulary_in_qwen2_order(processor):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in tiny_model.SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert ids[-1] == len(tok) - 1
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    # special tokens stay whole, digits are single tokens (Qwen2's pre-tokenizer)
    assert tok.tokenize("<|box_start|>(123,4)<|box_end|>") == ["<|box_start|>", "(", "1", "2", "3", ",", "4", ")", "<|box_end|>"]


def test_chat_template_renders_like_the_family(processor):
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    turn = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Draw the bounding box of objects<|im_end|>\n"
            "<|im_start|>assistant\n")
    if _family(processor) == "qwen3_vl":  # no default system turn
        assert text == turn
    else:
        assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + turn
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "circle: 2"}]}]
    assert processor.apply_chat_template(PROMPT + answer, tokenize=False).endswith("<|im_start|>assistant\ncircle: 2<|im_end|>\n")
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    assert processor.apply_chat_template(system + PROMPT, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + turn)


def test_image_pad_expands_to_one_token_per_merged_patch_group(processor):
    patch = CLASSES[_family(processor)][2]
    assert processor.image_processor.patch_size == patch and processor.image_processor.merge_size == 2
    # 112x84 -> Qwen2/2.5-VL: 112x84 px, 8x6 patches of 14 -> 4x3 groups; Qwen3-VL: 128x96 px, 8x6 patches of 16 -> 4x3 groups
    image = Image.new("RGB", (112, 84), (200, 30, 30))
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    enc = processor(images=[image], text=[text], return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == pad).sum()) == 12 == ImageBudget.of(processor).image_tokens(112, 84)[0]
    assert enc["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert enc["pixel_values"].shape[-1] == 3 * 2 * patch * patch
    assert ImageBudget.of(processor).resized_size(112, 84) == ((112, 84) if patch == 14 else (128, 96))


def test_model_is_the_family_class_and_generates(processor):
    import torch

    family = _family(processor)
    cfg = tiny_model.TinyModelConfig(family=family, hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vision_depth=1)
    model = tiny_model.build_model(processor, cfg)
    assert type(model).__name__ == CLASSES[family][1] and model.config.model_type == family
    text_cfg = model.config.text_config
    head = text_cfg.hidden_size // text_cfg.num_attention_heads
    assert sum(text_cfg.rope_parameters["mrope_section"]) == head // 2
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_config.patch_size == CLASSES[family][2]
    if family == "qwen3_vl":
        assert len(model.model.visual.deepstack_merger_list) == 1  # one per vision block, at most 3
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    enc = processor(images=[Image.new("RGB", (84, 84))], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3
    with pytest.raises(ValueError, match="even head size"):
        tiny_model.build_model(processor, tiny_model.TinyModelConfig(family=family, hidden_size=60, num_attention_heads=4))


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        tiny_model.TinyModelConfig(family="qwen4_vl")


def test_row_texts_take_prompts_and_answers_so_the_prompt_tokenizes_in_words():
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Count the objects"}]}],
             "completion": [{"role": "assistant", "content": [{"type": "text", "text": "circle: 2"}]}]}] * 50
    texts = tiny_model.row_texts(rows)
    assert texts[:2] == ["Count the objects", "circle: 2"] and len(texts) == 100
    tok = tiny_model.train_tokenizer(texts)  # the default 400: 144 merges beyond the 256 bytes
    assert tok.tokenize("Count the objects") == ["Count", "Ġthe", "Ġobjects"]
    # the chat template's own words are merged too (they are in every training sequence)
    assert tok.tokenize("You are a helpful assistant.") == ["You", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", "."]
