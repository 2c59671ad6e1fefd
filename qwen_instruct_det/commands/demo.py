"""The demo: the whole path on the CPU, offline, shown to learn.

``run_demo`` makes the synthetic data set, builds the configurations, builds a tiny model of
the chosen Qwen-VL family (Qwen2-VL, Qwen2.5-VL or Qwen3-VL, each answering in its own box
format) from scratch, trains it with TRL's SFTTrainer (full fine-tuning: LoRA on random
weights would teach nothing), predicts on the held-out split, scores it with det_iou50 and
COCO mAP, and writes ``report.json``, ``report.md`` and a picture grid. Every step is the
library's public code path; only the sizes are chosen to fit a 2-core CPU in minutes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


# Steps that reach held-out F1@50 >= 0.6 within 10 minutes on a 2-core CPU (benchmarks/demo_learning.py): Qwen2.5-VL's and
# Qwen3-VL's steps take about 0.42 s there against Qwen2-VL's 0.30 s, and they learn the demo in fewer of them.
FAMILY_STEPS = {"qwen2_vl": 1500, "qwen2_5_vl": 1200, "qwen3_vl": 1200}


@dataclass
class DemoArguments:
    out: str = field(default="demo_out", metadata={"help": "Folder for the data, the model, the predictions and the report."})
    family: str = field(default="qwen2_vl", metadata={"help": "The tiny model's Qwen-VL family: qwen2_vl, qwen2_5_vl or qwen3_vl "
                                                              "(each answers in its own box format)."})
    train_images: int = field(default=3000, metadata={"help": "Synthetic training images."})
    val_images: int = field(default=100, metadata={"help": "Held-out synthetic images the report is about."})
    mix: str = field(default="detection=1.0", metadata={"help": "Configurations and ratios to train on (see qid train --mix)."})
    max_steps: int | None = field(default=None, metadata={"help": "Training steps (default: the family's, "
                                                                  + ", ".join(f"{k} {v}" for k, v in FAMILY_STEPS.items()) + ")."})
    batch_size: int = field(default=16, metadata={"help": "Samples per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (cosine schedule, 3% warm-up)."})
    max_objects: int = field(default=3, metadata={"help": "Most objects per synthetic image (at least 1)."})
    categories: int = field(default=3, metadata={"help": "How many shape classes the synthetic data uses (1-5)."})
    image_size: int = field(default=112, metadata={"help": "Side of the synthetic images in pixels."})
    min_object: float = field(default=0.3, metadata={"help": "Smallest object side as a fraction of the image side."})
    max_object: float = field(default=0.55, metadata={"help": "Largest object side as a fraction of the image side."})
    colour_by_class: bool = field(default=True, metadata={"help": "One colour per shape class in the synthetic data."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the tiny language model."})
    layers: int = field(default=4, metadata={"help": "Layers of the tiny language model."})
    vision_depth: int = field(default=2, metadata={"help": "Blocks of the tiny vision tower."})
    rope_theta: float = field(default=3.0, metadata={"help": "RoPE base of the tiny model (see TinyModelConfig.rope_theta)."})
    seed: int = field(default=0, metadata={"help": "Seed of everything."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    curve_points: int = field(default=0, metadata={"help": "Also score the held-out images at this many evenly spaced steps of training "
                                                           "(the last at the end): the report's learning curve. 0: only at the end."})

    def __post_init__(self):
        if self.family not in FAMILY_STEPS:
            raise ValueError(f"family {self.family!r} is not one of {sorted(FAMILY_STEPS)}.")
        if self.max_steps is None:
            self.max_steps = FAMILY_STEPS[self.family]
        if self.curve_points < 0 or self.curve_points > self.max_steps:
            raise ValueError(f"curve_points must be between 0 and max_steps ({self.max_steps}), not {self.curve_points}.")


def run_demo(args: DemoArguments, progress=print) -> dict:
    """Run the demo; return the report (also written to ``args.out``)."""
    import torch
    from transformers.trainer_utils import set_seed
    from trl import ModelConfig, SFTConfig

    from .. import visualize
    from ..data import synthetic
    from ..data.splits import load_split
    from ..eval.report import read_predictions
    from ..models import inference
    from ..models import tiny as tiny_model
    from ..models.config import FAMILY_BOX_FORMATS
    from ..train import config as train_config
    from ..train import sft as training
    from ..train.callbacks import evaluate_at
    from ..train.mixture import build_mixture

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out = Path(args.out)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    progress(f"[1/6] synthetic data: {args.train_images} train + {args.val_images} val images")
    options = synthetic.SynthOptions(min_size=args.image_size, max_size=args.image_size, min_objects=1, max_objects=args.max_objects,
                                     empty_fraction=0.0, crowd_fraction=0.0, textured_fraction=0.3, categories=args.categories,
                                     min_object_fraction=args.min_object, max_object_fraction=args.max_object,
                                     colour_by_class=args.colour_by_class)
    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # always the data these arguments describe, never a previous run's
    synthetic.make_synthetic_coco(data_dir, train=args.train_images, val=args.val_images, seed=args.seed, options=options)
    timings["data"] = time.perf_counter() - start

    tiny = tiny_model.TinyModelConfig(family=args.family, hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size,
                                      num_hidden_layers=args.layers, vision_depth=args.vision_depth, min_pixels=args.image_size ** 2 // 2,
                                      max_pixels=args.image_size ** 2, rope_theta=args.rope_theta, seed=args.seed)
    box_format = FAMILY_BOX_FORMATS[args.family]
    progress(f"[2/6] instruction data: {args.mix} ({box_format} box format)")
    data_args = train_config.DataArguments(data_dir=str(data_dir), mix=args.mix, display_name="Shapes", build_seed=args.seed)
    cache = str(out / "hf_cache")
    train_rows = build_mixture(data_args, "train", cache_dir=cache, box_format=box_format, min_pixels=tiny.min_pixels,
                                        max_pixels=tiny.max_pixels)
    texts = tiny_model.row_texts(train_rows.select_columns(["prompt", "completion"]))
    timings["build"] = time.perf_counter() - start - sum(timings.values())

    progress(f"[3/6] tiny {args.family} and processor (tokenizer trained on the prompts and answers)")
    processor = tiny_model.build_processor(texts, tiny)
    model = tiny_model.build_model(processor, tiny)
    n_params = sum(p.numel() for p in model.parameters())

    progress(f"[4/6] training {n_params / 1e6:.2f}M parameters for {args.max_steps} steps of {args.batch_size}")
    sft = SFTConfig(
        output_dir=str(out / "model"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, int(0.03 * args.max_steps)), weight_decay=0.0, logging_steps=max(1, args.max_steps // 20),
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False, seed=args.seed,
        data_seed=args.seed, dataloader_num_workers=0, max_length=1024, disable_tqdm=False, per_device_eval_batch_size=32,
    )
    model_args = ModelConfig(model_name_or_path=f"tiny {args.family} (random init)", use_peft=False)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, freeze_llm=False)
    if args.curve_points:  # the trainer scores the held-out images at the curve's steps (the library's detection scores)
        data_args.eval_split, data_args.eval_detection_images = "validation", args.val_images
    trainer, qid_config, stats = training.make_trainer(data_args, parts, model_args, sft, model=model, processor=processor, cache_dir=cache)
    if args.curve_points:
        trainer.add_callback(evaluate_at()({round(args.max_steps * (k + 1) / args.curve_points) for k in range(args.curve_points)}))
    val = load_split("detection", "validation", cache_dir=cache, data_dir=data_args.data_dir, display_name=data_args.display_name,
                     seed=data_args.build_seed, **training.target_options(processor, qid_config.box_format))

    def predict(path: Path, out_dir: Path | None = None) -> tuple[dict, dict]:
        return inference.predict_and_score(model, processor, val, path, qid_config.box_format,
                                            inference.default_max_new_tokens(qid_config.max_answer_tokens), qid_config.categories, out_dir)

    t = time.perf_counter()
    result = trainer.train()
    timings["train"] = time.perf_counter() - t - trainer.evaluation_seconds
    if args.curve_points:
        timings["curve_scoring"] = trainer.evaluation_seconds
    model_dir = training.save_trained(trainer, processor, qid_config, stats)

    progress(f"[5/6] predicting and scoring {args.val_images} held-out images")
    preds_path = out / "predictions.jsonl"
    t = time.perf_counter()
    report, counts = predict(preds_path, out)
    timings["predict"] = time.perf_counter() - t

    progress("[6/6] drawing")
    records = read_predictions(preds_path)
    pictures = visualize.visualize_records(records, out / "pictures", limit=16)
    timings["total"] = time.perf_counter() - start - timings.get("curve_scoring", 0.0)  # the demo's time, as without a curve
    report["demo"] = {
        "arguments": asdict(args), "parameters": n_params, "train_rows": stats["train_rows"],
        "dropped_long_samples": stats["dropped_long_samples"], "final_train_loss": result.training_loss,
        "seconds": {k: round(v, 3) for k, v in timings.items()}, "predict_counts": counts, "model_dir": str(model_dir),
        "grid": str(pictures[-1]),
    }
    if args.curve_points:
        report["demo"]["curve"] = [{**point, "train_seconds": round(point["train_seconds"], 3)} for point in trainer.detection_scores.history]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report

