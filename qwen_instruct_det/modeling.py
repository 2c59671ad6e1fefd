"""Loading Qwen-VL checkpoints and processors, the model's family, LoRA targets, freezing, and what travels with a model.

Any Qwen-VL checkpoint (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) loads by Hub name or local path
through transformers' ``AutoModelForImageTextToText`` and ``AutoProcessor``. The model decides
its box format (``config.model_type`` -> :data:`FAMILY_BOX_FORMATS`); the processor keeps the
checkpoint's own image budget unless ``min_pixels``/``max_pixels`` override it, and its resize
factor is its patch size x merge size (28 for Qwen2/2.5-VL, 32 for Qwen3-VL). A folder written
by ``qid train`` also holds ``qid_config.json`` (box format, image budget, category names, answer
budget), which inference reads back: coordinates are only meaningful with the resize that made them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

logger = logging.getLogger(__name__)

QID_CONFIG = "qid_config.json"
FAMILY_BOX_FORMATS = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5", "qwen3_vl": "qwen3", "qwen3_vl_moe": "qwen3"}
"""The box format each Qwen-VL generation answers in, by ``config.model_type``."""
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
    model_type: str | None = None  # the model's family (config.model_type); box_format differs from its own only when asked
    min_pixels: int | None = None  # the image budget the targets were built with and the processor trained with
    max_pixels: int | None = None
    resize_factor: int | None = None  # patch size x merge size of that processor
    max_answer_tokens: int | None = None
    base_model: str | None = None
    data: str | None = None  # where the training data came from (a folder or a Hub dataset)
    display_name: str = "COCO"
    categories: list[str] = field(default_factory=list)  # the data set's own category names
    train_configs: dict[str, float] = field(default_factory=dict)
    detection_prompt: str | None = None  # a prompt to ask with instead of the data's ({categories} filled in); None: the data's

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / QID_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> QidModelConfig | None:
        path = Path(folder) / QID_CONFIG
        if not path.is_file():
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def model_type(model) -> str | None:
    """The ``config.model_type`` of a model (a PEFT-wrapped one too), e.g. ``qwen2_5_vl``."""
    return getattr(getattr(model, "config", None), "model_type", None)


def box_format_for(family: str | None, requested: str | None = None) -> str:
    """The box format to use with a model of ``family``: its own, or ``requested`` (warning loudly when they disagree)."""
    from .formats import get_box_format

    native = FAMILY_BOX_FORMATS.get(family or "")
    if requested is None:
        if native is None:
            raise ValueError(f"model type {family!r} is not a Qwen-VL family ({sorted(FAMILY_BOX_FORMATS)}), so it names no box format; "
                             "pass --box_format qwen2, qwen2_5 or qwen3.")
        return native
    get_box_format(requested)  # an unknown name fails here, with the valid ones
    if native is not None and requested != native:
        logger.warning("box format %r disagrees with the model: a %s model answers in %r. Targets and parsing will use %r as asked "
                       "(recorded in qid_config.json); drop --box_format to use the model's own.", requested, family, native, requested)
    return requested


def image_budget(processor) -> dict[str, int]:
    """The processor's image budget: ``min_pixels``, ``max_pixels`` and ``resize_factor`` (patch size x merge size)."""
    ip = processor.image_processor
    return {"min_pixels": int(ip.size["shortest_edge"]), "max_pixels": int(ip.size["longest_edge"]),
            "resize_factor": int(ip.patch_size * ip.merge_size)}


def set_image_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Override the processor's ``min_pixels``/``max_pixels`` where given; ``None`` keeps the checkpoint's."""
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size["shortest_edge"] > size["longest_edge"]:
        if min_pixels is not None and max_pixels is not None:
            raise ValueError(f"min_pixels {min_pixels} is above max_pixels {max_pixels}; lower --min_pixels or raise --max_pixels.")
        kept = "min_pixels" if max_pixels is not None else "max_pixels"
        logger.warning("the checkpoint's %s clashes with the %s asked for; using %d for both", kept,
                       "max_pixels" if max_pixels is not None else "min_pixels", min_pixels or max_pixels)
        size["shortest_edge"] = size["longest_edge"] = min_pixels or max_pixels
    processor.image_processor.size = size


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


def lora_target_parameters(model, trainable_parts: list[str]) -> list[str]:
    """PEFT ``target_parameters`` for weights the linear-layer regex cannot reach: Qwen3-VL-MoE's experts.

    A mixture-of-experts layer keeps its experts in two 3-D parameters (``mlp.experts.gate_up_proj``
    and ``mlp.experts.down_proj``, one slice per expert), not in nn.Linear modules, so
    ``target_modules`` alone would adapt attention and nothing of the MLPs. PEFT (>= 0.17) wraps
    such parameters with one LoRA per expert. Empty for dense models and for a frozen language model.
    """
    if "language_model" not in trainable_parts:
        return []
    expert = re.compile(r"language_model\.layers\.\d+\.(mlp\.experts\.[A-Za-z_]+)$")
    return sorted({m.group(1) for n, p in model.named_parameters() if p.dim() == 3 and (m := expert.search(n))})


def set_lora_targets(peft_config, model, trainable_parts: list[str], model_args) -> None:
    """Fill in the LoRA targets ``model_args`` (TRL's ModelConfig) leaves unset: the unfrozen parts' linear layers and, when
    neither ``lora_target_modules`` nor ``lora_target_parameters`` is given, a mixture-of-experts model's experts.

    LoRA on parameters (the experts, or whatever ``lora_target_parameters`` names) takes no
    dropout in PEFT, so ``lora_dropout`` (TRL's default 0.05) becomes 0 then; a warning says so.
    """
    automatic = False
    if not model_args.lora_target_modules:
        peft_config.target_modules = lora_target_regex(trainable_parts)
        if getattr(model_args, "lora_target_parameters", None) is None:
            experts = lora_target_parameters(model, trainable_parts)
            if experts:
                automatic = True
                peft_config.target_parameters = experts
                logger.info("LoRA also adapts the experts (%s): they are 3-D parameters, not linear layers", ", ".join(experts))
    if getattr(peft_config, "target_parameters", None) and peft_config.lora_dropout:
        hint = " (name lora_target_modules to keep dropout and leave the experts frozen)" if automatic else ""
        logger.warning("lora_dropout %s -> 0: PEFT's LoRA on parameters (%s) takes no dropout%s", peft_config.lora_dropout,
                       ", ".join(peft_config.target_parameters), hint)
        peft_config.lora_dropout = 0.0


def load_processor(name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None, trust_remote_code: bool = False):
    """The checkpoint's processor, keeping its own image budget unless ``min_pixels``/``max_pixels`` override it."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    set_image_budget(processor, min_pixels, max_pixels)
    return processor


def resized_size(processor, width: int, height: int) -> tuple[int, int]:
    """The (width, height) the processor resizes an image to: what qwen2_5 coordinates refer to."""
    from .boxes import smart_resize

    budget = image_budget(processor)
    h, w = smart_resize(height, width, factor=budget["resize_factor"], min_pixels=budget["min_pixels"], max_pixels=budget["max_pixels"])
    return w, h


def image_tokens(processor, width: int, height: int) -> int:
    """How many ``<|image_pad|>`` tokens the processor expands one image of this size to."""
    w, h = resized_size(processor, width, height)
    factor = image_budget(processor)["resize_factor"]
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


def load_for_inference(path: str, base_model: str | None = None, dtype: str | None = None, device_map=None,
                       box_format: str | None = None):
    """Model, processor and :class:`QidModelConfig` from a trained folder (adapter or full model) or a plain checkpoint.

    A folder with ``qid_config.json`` gets the box format, image budget and categories it was trained with. A plain
    checkpoint keeps its own processor budget and gets its family's box format and zero-shot detection prompt.
    ``box_format`` overrides either (with a warning where it disagrees).
    """
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
    processor_source = str(folder) if saved_with_model else (base_model or str(path))
    family = model_type(model)
    if qid_config is None:
        from .inference import zero_shot_prompt

        processor = load_processor(processor_source)
        fmt = box_format_for(family, box_format)
        qid_config = QidModelConfig(box_format=fmt, model_type=family, base_model=str(path), detection_prompt=zero_shot_prompt(fmt),
                                    **image_budget(processor))
    else:
        processor = load_processor(processor_source, qid_config.min_pixels, qid_config.max_pixels)
        if box_format is not None and box_format != qid_config.box_format:
            logger.warning("box format %r overrides %r, the format %s was trained to answer in (qid_config.json)", box_format,
                           qid_config.box_format, path)
            qid_config.box_format = box_format_for(family, box_format)
    model.eval()
    return model, processor, qid_config


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


def merge(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_model: str | None = None) -> Path:
    """Fold a LoRA adapter into its base model; save the standalone model, processor and qid config."""
    model, processor, qc = load_for_inference(str(adapter_dir), base_model=base_model)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    qc.save(out)
    return out
