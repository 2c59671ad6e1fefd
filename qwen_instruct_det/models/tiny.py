"""Tiny Qwen-VL models and processors of each generation, built offline, for the demo and the tests.

``build_model`` makes the real transformers class of a family (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration``) from a small config
with random weights; ``build_processor`` makes that family's real processor around a byte-level
BPE tokenizer trained on the fly on the instruction texts, with all of Qwen2-VL's special tokens
in Qwen2's order after the BPE vocabulary and Qwen2's pre-tokenizer (digits one by one). The
families differ as the published checkpoints do: Qwen2.5-VL has Qwen2-VL's chat template and
14-px patches (with gated MLPs and window attention in the vision tower); Qwen3-VL has 16-px
patches (32 px per image token), deepstack mergers and no default system turn. Nothing is
downloaded. Real checkpoints load through ``loading.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Qwen2's special tokens, in id order after its 151,643 byte-level BPE tokens.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2's pre-tokenization pattern: words, single digits, punctuation runs, whitespace.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2-VL's chat template (Qwen2.5-VL ships the same one): a default system turn when none is given.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL's chat template without its tool-calling branches: no default system turn (a system
# message is rendered only when given, and only as the first message).
QWEN3_VL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}<|im_start|>system\n"
    "{% if messages[0]['content'] is string %}{{ messages[0]['content'] }}"
    "{% else %}{% for content in messages[0]['content'] %}{% if 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endif %}"
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if message['role'] == 'user' or message['role'] == 'assistant' %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if message['role'] == 'user' and (content['type'] == 'image' or 'image' in content or 'image_url' in content) %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif message['role'] == 'user' and (content['type'] == 'video' or 'video' in content) %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""The Qwen-VL generations the tiny model comes in (their ``config.model_type``)."""

CHAT_TEMPLATES = {"qwen2_vl": QWEN2_VL_TEMPLATE, "qwen2_5_vl": QWEN2_VL_TEMPLATE, "qwen3_vl": QWEN3_VL_TEMPLATE}
PATCH_SIZES = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}


@dataclass
class TinyModelConfig:
    """Family and size of the tiny model; the defaults train on a 2-core CPU in minutes."""

    family: str = field(default="qwen2_vl", metadata={"help": "Qwen-VL generation: qwen2_vl, qwen2_5_vl or qwen3_vl."})
    hidden_size: int = field(default=128, metadata={"help": "Language model width."})
    intermediate_size: int = field(default=384, metadata={"help": "Language model MLP width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Language model layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (head size = hidden / heads)."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Key-value heads."})
    vision_depth: int = field(default=2, metadata={"help": "Vision transformer blocks (Qwen3-VL: a deepstack merger on each of the first 3)."})
    vision_embed_dim: int = field(default=96, metadata={"help": "Vision transformer width."})
    vision_heads: int = field(default=4, metadata={"help": "Vision attention heads."})
    rope_theta: float = field(default=3.0, metadata={"help": "RoPE base. Qwen2-VL's 1e6 leaves mrope's width section (the lowest "
                                                              "frequencies) all but constant across a few image tokens; a small base lets a model trained "
                                                              "from scratch tell image columns apart."})
    vocab_size: int = field(default=400, metadata={"help": "BPE vocabulary before the special tokens."})
    min_pixels: int = field(default=56 * 56, metadata={"help": "Processor min_pixels."})
    max_pixels: int = field(default=112 * 112, metadata={"help": "Processor max_pixels (small images keep the demo fast)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown tiny model family {self.family!r}; choose one of {list(FAMILIES)}.")


def _corpus(texts: Iterable[str]) -> Iterable[str]:
    """Training texts for the tokenizer, with the special tokens taken out (they are added whole)."""
    import re

    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    boilerplate = "0123456789 (),.:%\"'[]{}- You are a helpful assistant. system user assistant"
    for text in texts:
        yield special.sub(" ", text)
        yield boilerplate  # as often as the texts, so the chat template's words get merges of their own


def row_texts(rows) -> list[str]:
    """Every text of the rows' conversations (prompt and completion turns): what a tiny tokenizer is trained on."""
    return [part["text"] for row in rows for turn in row["prompt"] + row["completion"] for part in turn["content"] if part.get("text")]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400, chat_template: str = QWEN2_VL_TEMPLATE):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen2's pre-tokenizer and special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(texts), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template
    return fast


def build_processor(texts: Iterable[str], config: TinyModelConfig | None = None):
    """The family's real processor (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` or ``Qwen3VLProcessor``) with a tokenizer trained on ``texts``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    cfg = config or TinyModelConfig()
    template = CHAT_TEMPLATES[cfg.family]
    tokenizer = train_tokenizer(texts, cfg.vocab_size, template)
    budget = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    if cfg.family == "qwen3_vl":  # Qwen3-VL's preprocessor_config.json: 16-px patches, mean and std 0.5
        image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5],
                                                image_std=[0.5, 0.5, 0.5], **budget)
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                                chat_template=template)
    processor_class = Qwen2_5_VLProcessor if cfg.family == "qwen2_5_vl" else Qwen2VLProcessor
    return processor_class(image_processor=Qwen2VLImageProcessor(**budget), tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                           chat_template=template)


def _mrope_section(head_dim: int, family: str) -> list[int]:
    """(temporal, height, width) rotary sections that sum to half the head size, in the family's proportions."""
    half = head_dim // 2
    if family == "qwen3_vl":  # interleaved mrope, Qwen3-VL's [24, 20, 20] of 64
        h = w = (half * 5) // 16
        return [half - h - w, h, w]
    t = half // 4  # Qwen2-VL's [16, 24, 24] of 64
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_model(processor, config: TinyModelConfig | None = None):
    """A randomly initialised model of ``config.family`` (the real transformers class), sized by ``config``."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    cfg = config or TinyModelConfig()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 2 or cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} must split into an even head size over {cfg.num_attention_heads} heads.")
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": _mrope_section(head_dim, cfg.family)}
    text = {
        "vocab_size": len(tok),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    vision = {"depth": cfg.vision_depth, "num_heads": cfg.vision_heads, "patch_size": PATCH_SIZES[cfg.family], "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if cfg.family == "qwen2_vl":
        config_class = Qwen2VLConfig
        vision.update(embed_dim=cfg.vision_embed_dim, hidden_size=cfg.hidden_size, mlp_ratio=2)
    elif cfg.family == "qwen2_5_vl":  # gated MLP blocks, window attention except in the last block
        config_class = Qwen2_5_VLConfig
        vision.update(hidden_size=cfg.vision_embed_dim, intermediate_size=2 * cfg.vision_embed_dim, out_hidden_size=cfg.hidden_size,
                      window_size=112, fullatt_block_indexes=[cfg.vision_depth - 1], hidden_act="silu")
    else:  # qwen3_vl: learned position grid, deepstack mergers feeding the first language layers
        config_class = Qwen3VLConfig
        text.update(head_dim=head_dim)
        rope["mrope_interleaved"] = True
        vision.update(hidden_size=cfg.vision_embed_dim, intermediate_size=2 * cfg.vision_embed_dim, out_hidden_size=cfg.hidden_size,
                      num_position_embeddings=64, deepstack_visual_indexes=list(range(min(3, cfg.vision_depth))), hidden_act="gelu_pytorch_tanh")
    model_config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(model_config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model
