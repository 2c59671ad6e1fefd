"""Real-size cost on a GPU for each Qwen-VL generation: published configs, random weights, the seed's recipe.

    python benchmarks/gpu_real_size.py                        # on a CUDA machine: all three families, one after the other
    python benchmarks/gpu_real_size.py --family qwen3_vl      # one family: qwen2_vl, qwen2_5_vl or qwen3_vl
    python benchmarks/gpu_real_size.py --smoke                # the same code path, scaled down, on a CPU (a check, not a figure)

The models are Qwen2-VL-2B-Instruct, Qwen2.5-VL-3B-Instruct and Qwen3-VL-2B-Instruct as their
config.json on the Hub describes them, with random weights. The recipe is the seed's
(configs/seed_recipe.yaml and its siblings): vision, merger (with Qwen3-VL's deepstack mergers)
and language model all unfrozen, LoRA r 32 / alpha 64 on every linear layer, bf16, batch 1 x
accumulation 4, gradient checkpointing, each family's own box format and image budget (1280
image tokens at most). Prints, per family, training samples and tokens per second and peak GPU memory at
COCO-like image sizes (sides 480-640 px, about 7 boxes per image), unpacked (the recipe) and packed
(``--packing true``: one sequence of up to 4,096 tokens per device batch; flash attention's varlen
kernels where flash-attn is installed, else sdpa's block-diagonal mask), and generation throughput
(new tokens per second, batched, greedy, a fixed number of new tokens since random weights never
stop). The tokenizer is the tiny one (its ids fit the real 151,936-token vocabulary); the image
and sequence lengths are the real ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# config.json on the Hub of Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen3-VL-2B-Instruct
# (transformers 5 spelling: rope_parameters for rope_scaling + rope_theta).
PUBLISHED = {
    "qwen2_vl": {
        "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                        "num_key_value_heads": 2, "vocab_size": 151936,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "hidden_size": 1536, "patch_size": 14},
    },
    "qwen2_5_vl": {
        "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                        "num_key_value_heads": 2, "vocab_size": 151936,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
                          "patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"},
    },
    "qwen3_vl": {
        "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
        "vision_config": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048,
                          "patch_size": 16, "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
                          "hidden_act": "gelu_pytorch_tanh"},
    },
}
SMOKE = {
    "qwen2_vl": {
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "vocab_size": 512,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        "vision_config": {"depth": 1, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "hidden_size": 64, "patch_size": 14},
    },
    "qwen2_5_vl": {
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "vocab_size": 512,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64, "patch_size": 14,
                          "window_size": 112, "fullatt_block_indexes": [1], "hidden_act": "silu"},
    },
    "qwen3_vl": {
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}},
        "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64, "patch_size": 16,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1, 2], "hidden_act": "gelu_pytorch_tanh"},
    },
}
# Each family's budget in the recipes (configs/*.yaml): at most 1280 image tokens of 28 px (Qwen2/2.5-VL) or 32 px (Qwen3-VL).
BUDGETS = {"qwen2_vl": (3136, 1003520), "qwen2_5_vl": (3136, 1003520), "qwen3_vl": (65536, 1310720)}


def build_model(family: str, shape: dict, processor, dtype):
    """A randomly initialised model of ``family`` with ``shape``'s sizes and the tokenizer's special-token ids."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    config = AutoConfig.for_model(
        family,
        text_config={**shape["text_config"], "tie_word_embeddings": True, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "bos_token_id": ids["<|endoftext|>"]},
        vision_config={**shape["vision_config"], "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    flash = dtype != torch.float32 and importlib.util.find_spec("flash_attn") is not None  # varlen kernels for the packed run
    return AutoModelForImageTextToText.from_config(config, attn_implementation="flash_attention_2" if flash else "sdpa").to(dtype)


def run_family(family: str, args, work: str, cuda: bool) -> None:
    """Train the seed's recipe for ``args.steps`` steps and time batched generation; print the figures."""
    import torch
    from trl import ModelConfig, SFTConfig

    from qwen_instruct_det.models import tiny as tiny_model
    from qwen_instruct_det.models.config import FAMILY_BOX_FORMATS
    from qwen_instruct_det.train import config as train_config
    from qwen_instruct_det.train import sft as training
    from qwen_instruct_det.train.mixture import build_mixture

    budget = BUDGETS[family]
    data = train_config.DataArguments(data_dir=f"{work}/data", mix="detection=1.0")
    rows = build_mixture(data, "train", cache_dir=f"{work}/cache", box_format=FAMILY_BOX_FORMATS[family], min_pixels=budget[0],
                                  max_pixels=budget[1])
    texts = [r["completion"][0]["content"][0]["text"] for r in rows.select_columns(["completion"])]
    processor = tiny_model.build_processor(texts, tiny_model.TinyModelConfig(family=family, min_pixels=budget[0], max_pixels=budget[1]))
    dtype = torch.bfloat16 if cuda else torch.float32
    model_args = ModelConfig(model_name_or_path=f"{family} published shape (random)", use_peft=True, lora_r=32, lora_alpha=64, lora_dropout=0.05)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, freeze_llm=False)  # the seed's run: all three parts
    runs = {}
    for packed in (True, False):  # packed (sequences of up to 4,096 tokens, one per device batch), then the recipe as it is
        model = build_model(family, (SMOKE if args.smoke else PUBLISHED)[family], processor, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        sft = SFTConfig(output_dir=f"{work}/out_{family}", max_steps=args.steps, per_device_train_batch_size=1, gradient_accumulation_steps=4,
                        learning_rate=5e-5, lr_scheduler_type="cosine", warmup_steps=0.05, bf16=cuda, use_cpu=not cuda,
                        activation_checkpointing=cuda, max_length=4096 if packed else 2048, packing=packed, logging_steps=10,
                        save_strategy="no", report_to="none", dataloader_num_workers=2 if cuda else 0)
        trainer, qc, stats = training.make_trainer(data, parts, model_args, sft, model=model, processor=processor, cache_dir=f"{work}/cache")
        trainable = sum(s["trainable"] for s in stats["trainable"].values())
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = trainer.train()
        seconds = result.metrics["train_runtime"]
        runs[packed] = {"samples": result.metrics["train_samples_per_second"],  # rows, packed or not (the trainer counts them)
                        "tokens": trainer._total_train_tokens / seconds,
                        "peak": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
                        "attention": model.config._attn_implementation}
        if packed:  # the unpacked run's model generates below
            del trainer, model
            if cuda:
                torch.cuda.empty_cache()
    model = trainer.model.eval()
    val = build_mixture(data, "validation", cache_dir=f"{work}/cache", **training.target_options(processor, qc.box_format))
    val = val.select(range(min(args.gen_batch, len(val))))
    prompts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in val]
    processor.tokenizer.padding_side = "left"
    enc = processor(images=[r["images"] for r in val], text=prompts, padding=True, return_tensors="pt").to(model.device)
    rates = []
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        rates.append(len(val) * args.new_tokens / (time.perf_counter() - t))
    print(f"{family}: {n_params / 1e6:,.1f}M parameters ({trainable / 1e6:,.1f}M trainable LoRA), box format {qc.box_format}, "
          f"budget {qc.min_pixels}-{qc.max_pixels} px, {stats['train_rows']} rows "
          f"({stats['dropped_long_samples']} over max_length dropped)")
    for packed, run in sorted(runs.items()):
        how = "packed, 1 sequence of <= 4,096 tokens x 4" if packed else "batch 1 x 4"
        print(f"  training (LoRA r32 on all parts, bf16={cuda}, {how}, gradient checkpointing={cuda}, "
              f"{run['attention']}): {run['samples']:.2f} samples/s, {run['tokens']:,.0f} tokens/s over {args.steps} steps; "
              f"peak GPU memory {run['peak']:.1f} GiB")
    print(f"  generation: {statistics.median(rates):.0f} new tokens/s (batch {len(val)}, {args.new_tokens} tokens, median of 3)", flush=True)
    if cuda and importlib.util.find_spec("vllm") is not None:  # qid predict --engine vllm's engine, where vLLM is installed
        vllm_rate, startup = vllm_generation(model, processor, qc, val, args, f"{work}/vllm_{family}")
        print(f"  generation with vLLM: {vllm_rate:.0f} new tokens/s (the same batch and tokens, median of 3; engine start-up {startup:.0f} s)",
              flush=True)
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()


def vllm_generation(model, processor, qc, val, args, folder: str) -> tuple[float, float]:
    """The trained model (LoRA merged) saved and served by qid predict's vLLM engine: new tokens/s on ``val``, start-up seconds."""
    from qwen_instruct_det.models.vllm_engine import ServingPlan, VllmEngine

    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(folder)
    processor.save_pretrained(folder)
    t = time.perf_counter()
    engine = VllmEngine(ServingPlan(model=folder, route="model"), processor, qc.budget, max_num_seqs=len(val), gpu_memory_utilization=0.5)
    startup = time.perf_counter() - t
    params = engine.sampling_params(args.new_tokens)
    params.min_tokens, params.ignore_eos = args.new_tokens, True  # random weights: every answer runs to new_tokens, as above
    requests = [{"prompt": processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                 "multi_modal_data": {"image": r["images"][0]}} for r in val]
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        engine.llm.generate(requests, params, use_tqdm=False)
        rates.append(len(val) * args.new_tokens / (time.perf_counter() - t))
    engine.close()
    return statistics.median(rates), startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Scaled-down shapes on the CPU: checks the code path only.")
    parser.add_argument("--family", choices=(*FAMILIES, "all"), default="all", help="Which generation(s) to measure.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch

    from qwen_instruct_det.data import synthetic

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check of the code path")
    work = tempfile.mkdtemp(prefix="qid_gpu_")
    lo, hi = (120, 160) if args.smoke else (480, 640)  # COCO-like sides
    opts = synthetic.SynthOptions(min_size=lo, max_size=hi, min_objects=4, max_objects=10, min_object_fraction=0.08,
                                  max_object_fraction=0.35, max_iou=0.3)
    synthetic.make_synthetic_coco(f"{work}/data", train=args.images, val=args.gen_batch, options=opts)
    device = torch.cuda.get_device_name() if cuda else "CPU (smoke check, not a figure)"
    print(f"{device}: images {lo}-{hi} px a side, the seed's recipe")
    for family in FAMILIES if args.family == "all" else (args.family,):
        run_family(family, args, work, cuda)


if __name__ == "__main__":
    main()
