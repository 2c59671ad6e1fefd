"""Loading Qwen-VL checkpoints and processors, LoRA targets, freezing, and what travels with a model.

Any Qwen2-VL-family checkpoint (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) loads by Hub name or local
path through transformers' ``AutoModelForImageTextToText`` and ``AutoProcessor``;
``min_pixels``/``max_pixels`` set the processor's image budget. A folder written by
``qid train`` also holds ``qid_config.json`` (box format, image budget, answer budget),
which inference reads back: coordinates are only meaningful with the resize that made them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

QID_CONFIG = "qid_config.json"
PARTS = ("vision", "merger", "language_model")
_PART_PATTERNS = {
    "merger": re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list)\."),
    "vision": re.compile(r"(^|\.)visual\."),
    "language_model": re.compile(r"(^|\.)(language_model|lm_head)(\.|$)"),
}
_LINEAR_NAMES = {
    "language_model": r"language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
    "vision": r"visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))",
    "merger": r"visual\.(merger\.(mlp\.0|mlp\.2|linear_fc1|linear_fc2)|deepstack_merger_list\.\d+\.(linear_fc1|linear_fc2))",
}


@dataclass
class QidModelConfig:
    """What inference must know about how a model was trained (saved as ``qid_config.json``)."""

    box_format: str = "qwen2"
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    max_answer_tokens: int | None = None
    base_model: str | None = None
    data: str | None = None  # where the training data came from (a folder or a Hub dataset)
    display_name: str = "COCO"
    categories: list[str] = field(default_factory=list)
    train_configs: dict[str, float] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / QID_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> QidModelConfig | None:
        path = Path(folder) / QID_CONFIG
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def part_of(name: str) -> str:
    """Which part a parameter or module name belongs to: vision, merger or language_model."""
    for part in ("merger", "vision", "language_model"):
        if _PART_PATTERNS[part].search(name):
            return part
    return "language_model"  # embeddings and the head outside the vision tower


def lora_target_regex(trainable_parts: list[str]) -> str:
    """A PEFT ``target_modules`` regex for the linear layers of the given parts."""
    unknown = [p for p in trainable_parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown model parts {unknown}; choose from {PARTS}.")
    if not trainable_parts:
        raise ValueError("every part is frozen: unfreeze at least one of vision, merger, language_model.")
    return r".*(" + "|".join(_LINEAR_NAMES[p] for p in trainable_parts) + r")$"


def load_processor(name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None, trust_remote_code: bool = False):
    """The checkpoint's processor, with the image budget overridden where given."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor.image_processor.size = size
    return processor


def resized_size(processor, width: int, height: int) -> tuple[int, int]:
    """The (width, height) the processor resizes an image to: what qwen2_5 coordinates refer to."""
    from .boxes import smart_resize

    ip = processor.image_processor
    h, w = smart_resize(height, width, factor=ip.patch_size * ip.merge_size, min_pixels=ip.size["shortest_edge"],
                        max_pixels=ip.size["longest_edge"])
    return w, h


def image_tokens(processor, width: int, height: int) -> int:
    """How many ``<|image_pad|>`` tokens the processor expands one image of this size to."""
    ip = processor.image_processor
    w, h = resized_size(processor, width, height)
    factor = ip.patch_size * ip.merge_size
    return (h // factor) * (w // factor)


def load_model(name_or_path: str, dtype: str | None = None, attn_implementation: str | None = None,
               trust_remote_code: bool = False, device_map=None):
    """A Qwen-VL checkpoint by Hub name or local path (a ``qid merge`` folder too)."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch_dtype = getattr(torch, dtype) if dtype not in (None, "auto") else dtype
    return AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, device_map=device_map
    )


def load_for_inference(path: str, base_model: str | None = None, dtype: str | None = None, device_map=None):
    """Model, processor and :class:`QidModelConfig` from a trained folder: an adapter (PEFT) or a full model."""
    folder = Path(path)
    qid_config = QidModelConfig.load(folder) if folder.is_dir() else None
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = base_model or adapter.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{folder}: the adapter names no base model; pass base_model=.")
        model = PeftModel.from_pretrained(load_model(base, dtype=dtype, device_map=device_map), str(folder))
    else:
        model = load_model(str(path), dtype=dtype, device_map=device_map)
    saved_with_model = any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
    qc = qid_config or QidModelConfig()
    processor = load_processor(str(folder) if saved_with_model else (base_model or str(path)), qc.min_pixels, qc.max_pixels)
    model.eval()
    return model, processor, qc


def trainable_summary(model) -> dict[str, dict[str, int]]:
    """Trainable and total parameters per part (vision, merger, language_model)."""
    out = {p: {"trainable": 0, "total": 0} for p in PARTS}
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        part = part_of(name)
        out[part]["total"] += param.numel()
        if param.requires_grad:
            out[part]["trainable"] += param.numel()
    return out


def format_summary(summary: dict[str, dict[str, int]]) -> str:
    lines = [f"{'part':<16}{'trainable':>14}{'total':>14}{'%':>8}"]
    for part, s in summary.items():
        pct = 100 * s["trainable"] / s["total"] if s["total"] else 0.0
        lines.append(f"{part:<16}{s['trainable']:>14,}{s['total']:>14,}{pct:>8.2f}")
    return "\n".join(lines)


def set_trainable_parts(model, trainable_parts: list[str]) -> None:
    """Full fine-tuning: gradients for the parameters of the given parts only."""
    for name, param in model.named_parameters():
        param.requires_grad = part_of(name) in trainable_parts
