"""Padding and packing: what fraction of the tokens trained is padding, and what packing changes, at COCO-2017 size and on the CPU.

Part 1, from the token lengths alone (no training): the COCO-2017 layout of build_speed.py
(train2017 118,287 images at COCO's image sizes and object density), the recipes' mix
(``configs/seed_recipe.yaml``: detection 0.5 + 0.125 each for the four others, one epoch of the
anchor rule) and image budget (4-1,280 image tokens of 28 px), lengths measured as ``qid train``
measures them (a tiny tokenizer: text lengths are close to, not equal to, Qwen's; image tokens
are exact). For one epoch it prints, per way of batching, the padding fraction (padding tokens /
all tokens the batches hold), the sequences per epoch and the device steps per epoch: batches of
1, 4 and 8 rows in the epoch's order, the same length-grouped (``train_sampling_strategy
group_by_length``), and packed into sequences of 4,096 and 8,192 tokens, one sequence per device
batch (flash attention's flattened batch, or sdpa's block-diagonal mask) and four (sdpa, padded
to the longest of the four).

Part 2, on this CPU, one run: a tiny Qwen2-VL (LoRA on all parts, float32, sdpa) trains one
epoch of the same synthetic rows (images of 56-250 px a side, detection + count) four ways: batch
4 in the epoch's order (what ``qid train`` did before), batch 4 length-grouped, and packed (one
sequence of up to ``--pack`` tokens per step, and four). Prints seconds per optimizer step,
samples per second and real (non-padding) tokens per second, medians of ``--repeats``.

Run: python benchmarks/packing.py [--images 118287] [--cpu-images 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from build_speed import COCO_TRAIN_IMAGES, COCO_VAL_IMAGES, make_split

ROOT = Path(__file__).resolve().parents[1]


def _padding(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Padding tokens / all tokens when each batch is padded to its longest member."""
    held = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1 - sum(int(lengths[b].sum()) for b in batches) / held


def _packed_padding(lengths: np.ndarray, packs: list[np.ndarray], per_batch: int) -> float:
    """Padding of packed sequences, ``per_batch`` to a device batch, each batch padded to its longest sequence."""
    sizes = np.array([lengths[p].sum() for p in packs])
    held = sum(int(sizes[i:i + per_batch].max()) * len(sizes[i:i + per_batch]) for i in range(0, len(sizes), per_batch))
    return 1 - int(sizes.sum()) / held


def padding_table(data_dir: Path, cache: Path) -> None:
    from qwen_instruct_det.budget import ImageBudget
    from qwen_instruct_det.data.synthetic import CATEGORIES
    from qwen_instruct_det.models.tiny import TinyModelConfig, build_processor
    from qwen_instruct_det.train.config import DataArguments
    from qwen_instruct_det.train.mixture import MixtureSampler, load_mixture
    from qwen_instruct_det.train.packing import Packer
    from qwen_instruct_det.train.sft import target_options

    recipe = yaml.safe_load((ROOT / "configs" / "seed_recipe.yaml").read_text())
    texts = [c["name"] for c in CATEGORIES] + ["Draw the bounding box of objects", "What does the area contain?",
                                               "Please count how many objects of each category are in the image."]
    processor = build_processor(texts, TinyModelConfig())
    ImageBudget.set_on(processor, recipe["min_pixels"], recipe["max_pixels"])
    start = time.perf_counter()
    mix = load_mixture(DataArguments(data_dir=str(data_dir), mix=recipe["mix"], display_name="COCO"), "train", cache_dir=str(cache),
                       **target_options(processor, "qwen2"))
    mix.measure(processor)
    mix.keep_shorter(recipe["max_length"])
    rows = mix.epoch_indices(0)
    lengths = mix.lengths[0]
    print(f"COCO-2017 layout, the recipes' mix and budget: {mix.samples_per_epoch:,} samples an epoch, {lengths[rows].sum():,} tokens "
          f"(mean {lengths[rows].mean():.0f}, max {lengths[rows].max()}; {sum(p.dropped for p in mix.parts)} rows over "
          f"max_length {recipe['max_length']}); built and measured in {time.perf_counter() - start:.0f} s\n")
    print(f"{'batching (one epoch)':<46}{'padding':>9}{'sequences':>12}{'steps':>10}")
    for size in (1, 4, 8):
        batches = [rows[i:i + size] for i in range(0, len(rows), size)]
        print(f"{f'batch {size}, epoch order':<46}{_padding(lengths, batches):>9.1%}{len(rows):>12,}{len(batches):>10,}")
    for size in (4, 8):
        sampler = MixtureSampler(mix, group_batch=size)
        order = np.array(list(sampler))
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        print(f"{f'batch {size}, length-grouped':<46}{_padding(lengths, batches):>9.1%}{len(order):>12,}{len(batches):>10,}")
    for capacity in (4096, 8192):
        packer = Packer(mix, capacity)
        packer.plan_epochs(1)
        packs = packer.epoch(0)
        fill = packer.fill(0)
        for per_batch in (1, 4):
            name = f"packed {capacity:,}, {per_batch} sequence{'s' if per_batch > 1 else ''} a batch"
            print(f"{name:<46}{_packed_padding(lengths, packs, per_batch):>9.1%}{len(packs):>12,}{math.ceil(len(packs) / per_batch):>10,}"
                  f"   ({fill:.1%} of each sequence filled, {len(rows) / len(packs):.1f} rows a sequence)")


def cpu_training(work: Path, images: int, pack: int, repeats: int) -> None:
    import torch
    from trl import ModelConfig, SFTConfig

    from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
    from qwen_instruct_det.models import tiny as tiny_model
    from qwen_instruct_det.train import config as train_config
    from qwen_instruct_det.train import sft as training
    from qwen_instruct_det.train.mixture import build_mixture

    torch.set_num_threads(os.cpu_count() or 1)
    data_dir = work / f"cpu{images}"
    if not (data_dir / "annotations").is_dir():
        make_synthetic_coco(data_dir, train=images, val=4, seed=7,
                            options=SynthOptions(min_size=56, max_size=250, min_objects=1, max_objects=6, textured_fraction=0))
    data = train_config.DataArguments(data_dir=str(data_dir), mix="detection=0.5,count=0.5")
    cfg = tiny_model.TinyModelConfig(min_pixels=56 * 56, max_pixels=250 * 250)
    rows = build_mixture(data, "train", cache_dir=str(work / "cpu_cache"))
    texts = tiny_model.row_texts(rows.select_columns(["prompt", "completion"]))
    ways = {"batch 4, epoch order (before)": {"per_device_train_batch_size": 4},
            "batch 4, length-grouped": {"per_device_train_batch_size": 4, "train_sampling_strategy": "group_by_length"},
            f"packed {pack:,}, 1 sequence a step": {"per_device_train_batch_size": 1, "packing": True, "max_length": pack},
            f"packed {pack:,}, 4 sequences a step": {"per_device_train_batch_size": 4, "packing": True, "max_length": pack}}
    results: dict[str, list[tuple[float, float, float]]] = {w: [] for w in ways}
    for r in range(repeats):
        for way, options in ways.items():
            processor = tiny_model.build_processor(texts, cfg)
            model = tiny_model.build_model(processor, cfg)
            sft = SFTConfig(**{"output_dir": str(work / "cpu_out"), "num_train_epochs": 1, "learning_rate": 1e-4, "report_to": "none",
                               "use_cpu": True, "bf16": False, "save_strategy": "no", "logging_steps": 10_000, "disable_tqdm": True,
                               "dataloader_num_workers": 0, "max_length": 2048, "seed": 0, **options})
            parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
            trainer, _, stats = training.make_trainer(data, parts, ModelConfig(model_name_or_path="tiny", use_peft=True, lora_r=8),
                                                      sft, model=model, processor=processor, cache_dir=str(work / "cpu_cache"))
            result = trainer.train()
            seconds = result.metrics["train_runtime"]
            samples = stats["mixture"]["samples_per_epoch"]
            results[way].append((seconds / result.global_step, samples / seconds, trainer._total_train_tokens / seconds))
        print(f"run {r + 1}: " + ", ".join(f"{w.split(' (')[0]} {v[-1][1]:.2f} samples/s" for w, v in results.items()), flush=True)
    print(f"\nCPU ({os.cpu_count()} cores), tiny Qwen2-VL, LoRA r8 on all parts, float32, sdpa; one epoch of {samples} rows "
          f"({images} images, detection + count); medians of {repeats}")
    print(f"{'way':<36}{'s / step':>10}{'samples/s':>11}{'real tokens/s':>15}")
    base = statistics.median(v[2] for v in results[next(iter(ways))])
    for way, values in results.items():
        step, rate, tokens = (statistics.median(x[i] for x in values) for i in range(3))
        print(f"{way:<36}{step:>10.3f}{rate:>11.2f}{tokens:>15,.0f}   ({tokens / base:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES, help="train2017 images for the padding table")
    parser.add_argument("--cpu-images", type=int, default=200, help="synthetic images for the CPU training (2 rows each)")
    parser.add_argument("--pack", type=int, default=2048, help="packing length of the CPU training")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_build_bench"))
    args = parser.parse_args()
    work = Path(args.workdir)
    data = work / f"coco{args.images}"
    make_split(data, "train", args.images, seed=0, first_id=1)
    make_split(data, "val", min(COCO_VAL_IMAGES, max(args.images // 20, 10)), seed=1, first_id=10_000_000)
    padding_table(data, work / f"packing_cache{args.images}")
    print()
    cpu_training(work, args.cpu_images, args.pack, args.repeats)


if __name__ == "__main__":
    main()
