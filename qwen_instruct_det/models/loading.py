"""Loading Qwen-VL checkpoints and what ``qid train`` wrote: one loader for inference, GRPO and merging.

Any Qwen-VL checkpoint (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) loads by Hub name or local path through
transformers' ``AutoModelForImageTextToText`` and ``AutoProcessor``. :func:`load_trained` is the
one loader of a folder written by ``qid train`` (a LoRA adapter or a full model) or a plain
checkpoint: the adapter's base model, the processor saved with the model (else the base's), and
the image budget saved in ``qid_config.json`` (else the checkpoint's own), unless
``min_pixels``/``max_pixels`` override it. :func:`load_for_inference` adds what predicting needs
(a plain checkpoint's family format and zero-shot prompt); :func:`merge` folds an adapter in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..budget import ImageBudget
from .config import QidModelConfig, box_format_for, model_type, zero_shot_prompt

logger = logging.getLogger(__name__)

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def check_source(name_or_path: str) -> str:
    """``name_or_path`` if it is a local folder or reads as a Hub id (``name`` or ``user/name``); a path that does not exist is
    named as a missing path (transformers would go looking for it on the Hub and report a connection error)."""
    text = str(name_or_path)
    first = text.split("/", 1)[0]
    # "./x", "/x", "~/x", "a/b/c" are paths; "user/name" is a Hub id unless "user" is a folder here ("outputs/run")
    local = text.startswith((".", "/", "~")) or text.count("/") > 1 or Path(text).exists() or ("/" in text and Path(first).is_dir())
    if local and not Path(text).expanduser().is_dir():
        parent = Path(text).expanduser().parent
        near = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith(Path(text).name[:3]))[:3] if parent.is_dir() else []
        raise FileNotFoundError(f"{text}: no such folder. Pass a model folder (one qid train or qid merge wrote, or a checkpoint) or a "
                                f"Hub id such as Qwen/Qwen2-VL-2B-Instruct" + (f"; folders nearby: {', '.join(near)}" if near else "") + ".")
    return text


def _pretrained(cls, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` on a folder or a Hub id; a name found in neither place is named as such (transformers
    reports a connection problem even for a mistyped local folder)."""
    try:
        return cls.from_pretrained(check_source(name_or_path), **kwargs)
    except OSError as e:
        if Path(str(name_or_path)).expanduser().exists() or isinstance(e, FileNotFoundError) and str(name_or_path) in str(e):
            raise
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
        raise OSError(f"{name_or_path}: no such folder here, and the Hub could not give it{offline}. If it is a folder qid train or "
                      "qid merge wrote, check the path; if it is a Hub id, check its spelling and the connection, or download it "
                      "first (hf download).") from e


def load_processor(name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None, trust_remote_code: bool = False):
    """The checkpoint's processor, keeping its own image budget unless ``min_pixels``/``max_pixels`` override it."""
    from transformers import AutoProcessor

    processor = _pretrained(AutoProcessor, name_or_path, trust_remote_code=trust_remote_code)
    ImageBudget.set_on(processor, min_pixels, max_pixels)
    return processor


def load_model(name_or_path: str, dtype: str | None = None, attn_implementation: str | None = None,
               trust_remote_code: bool = False, device_map=None):
    """A Qwen-VL checkpoint by Hub name or local path (a ``qid merge`` folder too)."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch_dtype = getattr(torch, dtype) if dtype not in (None, "auto") else dtype
    return _pretrained(
        AutoModelForImageTextToText, name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, device_map=device_map
    )


def checkpoint_family(name_or_path: str, trust_remote_code: bool = False) -> str | None:
    """A checkpoint's ``model_type`` (its Qwen-VL family) from its config alone, before any weight loads."""
    from transformers import AutoConfig

    return _pretrained(AutoConfig, name_or_path, trust_remote_code=trust_remote_code).model_type


def load_trained(path: str, base_model: str | None = None, *, trainable: bool = False, min_pixels: int | None = None,
                 max_pixels: int | None = None, dtype: str | None = None, attn_implementation: str | None = None,
                 trust_remote_code: bool = False, device_map=None):
    """Model, processor and the saved :class:`QidModelConfig` (None for a plain checkpoint) of a folder or checkpoint.

    An adapter folder loads onto ``base_model`` (default: the base it names), trainable when asked. The processor is
    the one saved with the model, else the base's; it resizes with the saved budget (a plain checkpoint: its own),
    ``min_pixels``/``max_pixels`` overriding either.
    """
    folder = Path(path)
    saved = QidModelConfig.load(folder) if folder.is_dir() else None
    load = {"dtype": dtype, "attn_implementation": attn_implementation, "trust_remote_code": trust_remote_code, "device_map": device_map}
    base = base_of(path, base_model)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base, **load), str(folder), is_trainable=trainable)
    else:
        model = load_model(str(path), **load)
    has_processor = any((folder / name).is_file() for name in _PROCESSOR_FILES)
    low = min_pixels if min_pixels is not None else (saved.min_pixels if saved else None)
    high = max_pixels if max_pixels is not None else (saved.max_pixels if saved else None)
    processor = load_processor(str(folder) if has_processor else (base or str(path)), low, high, trust_remote_code)
    return model, processor, saved


def load_for_inference(path: str, base_model: str | None = None, dtype: str | None = None, device_map=None,
                       box_format: str | None = None):
    """Model, processor and :class:`QidModelConfig` from a trained folder (adapter or full model) or a plain checkpoint.

    A folder with ``qid_config.json`` gets the box format, image budget and categories it was trained with. A plain
    checkpoint keeps its own processor budget and gets its family's box format and zero-shot detection prompt.
    ``box_format`` overrides either (with a warning where it disagrees).
    """
    model, processor, qid_config = load_trained(path, base_model, dtype=dtype, device_map=device_map)
    qid_config = _inference_config(path, model_type(model), processor, qid_config, box_format)
    model.eval()
    return model, processor, qid_config


def base_of(path: str, base_model: str | None = None) -> str | None:
    """The base model an adapter folder loads onto (``base_model``, else the one it names, found beside it when saved relative);
    None for a folder that is no adapter."""
    folder = Path(path)
    adapter = folder / "adapter_config.json"
    if not adapter.is_file():
        return None
    base = base_model or json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}: the adapter names no base model; pass base_model (--base_model) or set "
                         "base_model_name_or_path in it.")
    if base_model is None and not Path(base).is_absolute() and not Path(base).exists() and (folder / base).is_dir():
        base = str(folder / base)  # saved relative to where training ran; found beside the adapter
    return base


def load_without_weights(path: str, base_model: str | None = None, box_format: str | None = None):
    """Processor and :class:`QidModelConfig` as :func:`load_for_inference` gives them, without loading any weight (for an
    engine that loads the weights itself, such as vLLM)."""
    folder = Path(path)
    saved = QidModelConfig.load(folder) if folder.is_dir() else None
    base = base_of(path, base_model)
    has_processor = any((folder / name).is_file() for name in _PROCESSOR_FILES)
    processor = load_processor(str(folder) if has_processor else (base or str(path)), saved.min_pixels if saved else None,
                               saved.max_pixels if saved else None)
    family = checkpoint_family(base or str(path))
    return processor, _inference_config(path, family, processor, saved, box_format)


def _inference_config(path: str, family: str | None, processor, qid_config, box_format: str | None) -> QidModelConfig:
    """The saved config with ``box_format`` applied, or (a plain checkpoint) its family's format, prompt and own budget."""
    if qid_config is None:
        fmt = box_format_for(family, box_format)
        qid_config = QidModelConfig(box_format=fmt, model_type=family, base_model=str(path), detection_prompt=zero_shot_prompt(fmt),
                                    **ImageBudget.of(processor).as_options())
    elif box_format is not None and box_format != qid_config.box_format:
        logger.warning("box format %r overrides %r, the format %s was trained to answer in (qid_config.json)", box_format,
                       qid_config.box_format, path)
        qid_config.box_format = box_format_for(family, box_format)
    return qid_config


def merge(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_model: str | None = None) -> Path:
    """Fold a LoRA adapter into its base model; save the standalone model, processor and qid config."""
    if not Path(adapter_dir).is_dir():
        raise FileNotFoundError(f"{adapter_dir}: no such folder; pass the adapter folder qid train wrote (with --use_peft true).")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir}: is not a LoRA adapter (no adapter_config.json): a full or already merged model has nothing to "
                         "merge; use it as it is (qid predict, qid push model).")
    model, processor, qc = load_for_inference(str(adapter_dir), base_model=base_model)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    qc.save(out)
    return out
