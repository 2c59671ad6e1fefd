"""A tiny Qwen2-VL-architecture model and processor, built offline, for the demo and the tests.

The model is ``Qwen2VLForConditionalGeneration`` from a small config (random weights);
the processor is the real ``Qwen2VLProcessor`` around a byte-level BPE tokenizer trained
on the fly on the instruction texts, with all of Qwen2-VL's special tokens in Qwen2's
order after the BPE vocabulary, Qwen2's pre-tokenizer (digits one by one) and a
Qwen2-VL-style chat template. Nothing is downloaded. Real checkpoints load through
``modeling.py``.
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

CHAT_TEMPLATE = (
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


@dataclass
class TinyModelConfig:
    """Size of the tiny model; the defaults train on a 2-core CPU in minutes."""

    hidden_size: int = field(default=128, metadata={"help": "Language model width."})
    intermediate_size: int = field(default=384, metadata={"help": "Language model MLP width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Language model layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (head size = hidden / heads)."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Key-value heads."})
    vision_depth: int = field(default=2, metadata={"help": "Vision transformer blocks."})
    vision_embed_dim: int = field(default=96, metadata={"help": "Vision transformer width."})
    vision_heads: int = field(default=4, metadata={"help": "Vision attention heads."})
    rope_theta: float = field(default=3.0, metadata={"help": "RoPE base. Qwen2-VL's 1e6 leaves mrope's width section (the lowest "
                                                              "frequencies) all but constant across a few image tokens; a small base lets a model trained "
                                                              "from scratch tell image columns apart."})
    vocab_size: int = field(default=400, metadata={"help": "BPE vocabulary before the special tokens."})
    min_pixels: int = field(default=56 * 56, metadata={"help": "Processor min_pixels."})
    max_pixels: int = field(default=112 * 112, metadata={"help": "Processor max_pixels (small images keep the demo fast)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})


def _corpus(texts: Iterable[str]) -> Iterable[str]:
    """Training texts for the tokenizer, with the special tokens taken out (they are added whole)."""
    import re

    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    for text in texts:
        yield special.sub(" ", text)
    yield "0123456789 (),.:%\"'[]{}- You are a helpful assistant. system user assistant"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400):
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
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(texts: Iterable[str], config: TinyModelConfig | None = None):
    """The real ``Qwen2VLProcessor`` with a tokenizer trained on ``texts``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    cfg = config or TinyModelConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    image_processor = Qwen2VLImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=CHAT_TEMPLATE)


def build_model(processor, config: TinyModelConfig | None = None):
    """A randomly initialised ``Qwen2VLForConditionalGeneration`` sized by ``config``."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = config or TinyModelConfig()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 2 or cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} must split into an even head size over {cfg.num_attention_heads} heads.")
    half = head_dim // 2  # mrope sections (temporal, height, width) must sum to half the head size
    t = half // 4
    h = (half - t) // 2
    mrope = [t, h, half - t - h]
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model_config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": cfg.vision_depth,
            "embed_dim": cfg.vision_embed_dim,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.vision_heads,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model
