"""The three parts of a Qwen-VL model (vision tower, merger, language model): which train, and how LoRA finds them.

:class:`FreezeOptions` is the one declaration of the freeze flags (``qid train`` and ``qid grpo``
inherit it); :func:`lora_target_regex` and :func:`set_lora_targets` turn the unfrozen parts into
PEFT targets, :func:`set_trainable_parts` does the same for full fine-tuning, and
:func:`trainable_summary` counts what trains per part.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

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
class FreezeOptions:
    """Which parts of the model train (declared once; ``qid train`` and ``qid grpo`` arguments inherit it)."""

    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower (no LoRA / no gradients there)."})
    freeze_merger: bool = field(default=True, metadata={"help": "Freeze the merger (the aligner between vision and language)."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model."})

    def trainable_parts(self) -> list[str]:
        frozen = {"vision": self.freeze_vision, "merger": self.freeze_merger, "language_model": self.freeze_llm}
        return [p for p in PARTS if not frozen[p]]


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
