"""Real-size cost on a GPU: a Qwen2-VL-2B-shaped model (published config, random weights) with the seed's recipe.

    python benchmarks/gpu_real_size.py                 # on a CUDA machine: bf16, LoRA r32/alpha64, batch 1 x accumulation 4
    python benchmarks/gpu_real_size.py --smoke         # the same code path, scaled down, on a CPU (a check, not a figure)

Prints training samples per second and peak GPU memory at COCO-like image sizes (sides 480-640 px,
about 7 boxes per image, default image budget), and generation throughput (new tokens per
second, batched, greedy, a fixed number of new tokens since random weights never stop).
The tokenizer is the tiny one (its ids fit the real 151,936-token vocabulary); the image and
sequence lengths are the real ones.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

QWEN2_VL_2B = {
    "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536},
}
SMOKE = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 64},
}


def build_model(shape: dict, processor, dtype):
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    t = shape["text"]
    config = Qwen2VLConfig(
        text_config={**{k: v for k, v in t.items() if k not in ("rope_theta", "mrope_section")},
                     "rope_parameters": {"rope_type": "default", "rope_theta": t["rope_theta"], "mrope_section": t["mrope_section"]},
                     "tie_word_embeddings": True, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "bos_token_id": ids["<|endoftext|>"]},
        vision_config={**shape["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Scaled-down shapes on the CPU: checks the code path only.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from trl import ModelConfig, SFTConfig

    from qwen_instruct_det import synthetic, tiny_model, training

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check of the code path")
    shape = SMOKE if args.smoke else QWEN2_VL_2B
    work = tempfile.mkdtemp(prefix="qid_gpu_")
    lo, hi = (120, 160) if args.smoke else (480, 640)  # COCO-like sides
    opts = synthetic.SynthOptions(min_size=lo, max_size=hi, min_objects=4, max_objects=10, min_object_fraction=0.08,
                                  max_object_fraction=0.35, max_iou=0.3)
    synthetic.make_synthetic_coco(f"{work}/data", train=args.images, val=args.gen_batch, options=opts)
    data = training.DataArguments(data_dir=f"{work}/data", mix="detection=1.0")
    rows = training.build_mixture(data, "train", cache_dir=f"{work}/cache")
    texts = [r["completion"][0]["content"][0]["text"] for r in rows.select_columns(["completion"])]
    budget = (56 * 56, 28 * 28 * 1280)
    processor = tiny_model.build_processor(texts, tiny_model.TinyModelConfig(min_pixels=budget[0], max_pixels=budget[1]))
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(shape, processor, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    sft = SFTConfig(output_dir=f"{work}/out", max_steps=args.steps, per_device_train_batch_size=1, gradient_accumulation_steps=4,
                    learning_rate=5e-5, lr_scheduler_type="cosine", warmup_steps=0.05, bf16=cuda, use_cpu=not cuda,
                    gradient_checkpointing=cuda, max_length=2048, logging_steps=10, save_strategy="no", report_to="none",
                    dataloader_num_workers=2 if cuda else 0)
    model_args = ModelConfig(model_name_or_path="qwen2-vl-2b-shaped (random)", use_peft=True, lora_r=32, lora_alpha=64, lora_dropout=0.05)
    parts = training.PartsArguments(min_pixels=budget[0], max_pixels=budget[1])
    trainer, _ = training.make_trainer(data, parts, model_args, sft, model=model, processor=processor, cache_dir=f"{work}/cache")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    samples = result.metrics["train_samples_per_second"]

    model = trainer.model.eval()
    val = training.build_mixture(data, "validation", cache_dir=f"{work}/cache").select(range(args.gen_batch))
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in val]
    processor.tokenizer.padding_side = "left"
    enc = processor(images=[r["images"] for r in val], text=texts, padding=True, return_tensors="pt").to(model.device)
    rates = []
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        rates.append(args.gen_batch * args.new_tokens / (time.perf_counter() - t))
    device = torch.cuda.get_device_name() if cuda else "CPU (smoke check, not a figure)"
    print(f"{device}: {n_params / 1e6:,.1f}M parameters, images {lo}-{hi} px a side, {trainer.qid_stats['train_rows']} rows")
    print(f"training (LoRA r32, bf16={cuda}, batch 1 x 4, gradient checkpointing={cuda}): {samples:.2f} samples/s over {args.steps} steps")
    print(f"peak GPU memory: {peak:.1f} GiB")
    print(f"generation: {statistics.median(rates):.0f} new tokens/s (batch {args.gen_batch}, {args.new_tokens} tokens, median of 3)")


if __name__ == "__main__":
    main()
