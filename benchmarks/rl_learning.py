"""Does GRPO beat more SFT? From the demo's SFT model, the same wall time of each, scored on held-out images.

    python benchmarks/rl_learning.py --seeds 0 1 2             # the full comparison (the demo's SFT model first, if absent)
    python benchmarks/rl_learning.py --smoke                   # a small demo and a few seconds of each: checks the script
    python benchmarks/rl_learning.py --arms grpo --grpo-lr 1e-5  # one arm only: a diagnosis of GRPO's own settings
    python benchmarks/rl_learning.py --arms grpo --trivial-reward  # does GRPO raise a reward it surely can (the wiring)?

Starts from ``--demo-out``/model (``qid demo`` writes it; run with the demo's defaults when it
is missing) and continues it (a) with GRPO (``qwen_instruct_det.train.grpo``, detection + format
rewards, KL to the start) and (b) with more SFT on the same detection rows, each for
``--seconds`` of training time. Held-out predictions are scored at ``--points`` moments of each
run (evaluation time is not counted): F1@50, precision, recall, COCO AP and AP50
(``eval.report.evaluate_file``), the duplicate rate (predicted pairs of one label with IoU > 0.9,
per prediction) and the mean answer length in tokens. For GRPO the reward curves, group reward
std and KL come from ``trainer.state.log_history``. Prints a table of medians over ``--seeds``
and writes ``--out`` (JSON) and a PNG learning curve next to it. CPU, offline. On a machine
other jobs share, ``--threads 1`` is much faster: two torch threads wait on each other there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from qwen_instruct_det.eval.curves import save_panels

METRICS = ("f1", "precision", "recall", "AP", "AP50", "duplicate_rate", "mean_answer_tokens")
GRPO_LOGS = ("reward", "reward_std", *(f"rewards/detection_{k}/mean" for k in ("f1", "iou", "map_length")), "rewards/format/mean", "kl",
             "completions/mean_length",
             "frac_reward_zero_std")


def duplicate_rate(records: list[dict], iou: float = 0.9) -> float:
    """Predicted pairs of the same label with IoU above ``iou``, divided by the number of predictions."""
    from qwen_instruct_det.boxes import iou_matrix

    pairs = predictions = 0
    for r in records:
        boxes = np.asarray(r["detections"]["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(r["detections"]["labels"], dtype=object)
        predictions += len(boxes)
        for label in set(labels.tolist()):
            group = boxes[labels == label]
            pairs += int(np.triu(iou_matrix(group, group) > iou, k=1).sum())
    return pairs / predictions if predictions else 0.0


class Scorer:
    """Held-out predictions of a model, scored; one predictions file per call."""

    def __init__(self, processor, qc, val, folder: Path):
        from qwen_instruct_det.models.inference import default_max_new_tokens

        self.processor, self.qc, self.val, self.folder = processor, qc, val, folder
        self.budget = default_max_new_tokens(qc.max_answer_tokens)
        self.calls = 0

    def __call__(self, model) -> dict:
        from qwen_instruct_det.eval.report import read_predictions
        from qwen_instruct_det.models.inference import predict_and_score

        self.calls += 1
        path = self.folder / f"predictions_{self.calls}.jsonl"
        report, _ = predict_and_score(model, self.processor, self.val, path, self.qc.box_format, self.budget,
                                      self.qc.categories or None)
        records = read_predictions(path)
        tok = self.processor.tokenizer
        lengths = [len(ids) for ids in tok([r["text"] for r in records], add_special_tokens=False)["input_ids"]]
        d, m = report["det_iou50"], report["coco_map"]
        return {"f1": d["f1"], "precision": d["precision"], "recall": d["recall"], "AP": m["AP"], "AP50": m["AP50"],
                "duplicate_rate": duplicate_rate(records), "mean_answer_tokens": float(np.mean(lengths)),
                "truncated": report["parsing"]["truncated_answers"]}


def _budget_callback(seconds: float, points: int, score):
    """Stops training after ``seconds`` of training time and scores the model at ``points`` evenly spaced moments."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self):
            self.trained = 0.0
            self.marks = [seconds * (k + 1) / points for k in range(points)]
            self.curve: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.clock = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.trained += time.perf_counter() - self.clock  # data, generation and the update; not the scoring below
            if self.marks and self.trained >= self.marks[0]:  # one score however many marks this step passed
                self.marks = [m for m in self.marks if m > self.trained]
                self.curve.append({"seconds": round(self.trained, 1), "step": state.global_step, **score(model)})
            if not self.marks:
                control.should_training_stop = True
            self.clock = time.perf_counter()

    return Budget()


def _common(out: Path, lr: float, seed: int) -> dict:
    return dict(output_dir=str(out), max_steps=10**6, learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no",
                report_to="none", use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False, seed=seed, data_seed=seed,
                dataloader_num_workers=0, disable_tqdm=True)


def shorter_answers(prompts, completions, **columns) -> list[float]:
    """A reward any working GRPO set-up raises at once (1 - characters / 200): a check that the policy gradient reaches the model."""
    from qwen_instruct_det.train.rewards import completion_text

    return [max(0.0, 1.0 - len(completion_text(c)) / 200) for c in completions]


def run_grpo(start: Path, data_dir: Path, args, seed: int, out: Path):
    from trl import GRPOConfig, ModelConfig

    from qwen_instruct_det.models.config import QidModelConfig
    from qwen_instruct_det.models.inference import default_max_new_tokens
    from qwen_instruct_det.train import grpo
    from qwen_instruct_det.train.config import GrpoArguments

    qc = QidModelConfig.load(start)
    config = GRPOConfig(**_common(out, args.grpo_lr, seed), per_device_train_batch_size=args.prompts * args.generations,
                        num_generations=args.generations, max_completion_length=default_max_new_tokens(qc.max_answer_tokens),
                        temperature=1.0, beta=args.beta, logging_steps=1)
    grpo_args = GrpoArguments(data_dir=str(data_dir), build_seed=seed, detection_kind=args.kind, freeze_vision=False,
                                   freeze_merger=False)
    trainer, _, _ = grpo.make_trainer(grpo_args, ModelConfig(model_name_or_path=str(start), use_peft=False), config,
                                   cache_dir=str(out.parent / "hf_cache"), reward_funcs=[shorter_answers] if args.trivial_reward else None)
    return trainer


def run_sft(start: Path, data_dir: Path, args, seed: int, out: Path):
    from trl import ModelConfig, SFTConfig

    from qwen_instruct_det.models.config import QidModelConfig
    from qwen_instruct_det.train import config as train_config
    from qwen_instruct_det.train import sft as training

    qc = QidModelConfig.load(start)
    config = SFTConfig(**_common(out, args.sft_lr, seed), per_device_train_batch_size=args.sft_batch, max_length=1024, logging_steps=5)
    data = train_config.DataArguments(data_dir=str(data_dir), mix="detection=1.0", display_name=qc.display_name, build_seed=seed)
    parts = train_config.PartsArguments(freeze_vision=False, freeze_merger=False, min_pixels=qc.min_pixels, max_pixels=qc.max_pixels)
    trainer, _, _ = training.make_trainer(data, parts, ModelConfig(model_name_or_path=str(start), use_peft=False), config,
                                       cache_dir=str(out.parent / "hf_cache"))
    return trainer


def continue_training(kind: str, start: Path, data_dir: Path, args, seed: int, score, work: Path) -> dict:
    """One continuation (grpo or sft) for ``args.seconds`` of training time; its curve, final scores and logs."""
    from transformers.trainer_utils import set_seed

    set_seed(seed)
    trainer = (run_grpo if kind == "grpo" else run_sft)(start, data_dir, args, seed, work / f"{kind}_{seed}")
    budget = _budget_callback(args.seconds, args.points, score)
    trainer.add_callback(budget)
    trainer.train()
    keys = GRPO_LOGS if kind == "grpo" else ("loss",)
    logs = [{"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in trainer.state.log_history if any(k in h for k in keys)]
    return {"seed": seed, "kind": kind, "steps": trainer.state.global_step, "samples": trainer.state.global_step * trainer.args.per_device_train_batch_size,
            "train_seconds": round(budget.trained, 1), "curve": budget.curve, "final": budget.curve[-1], "logs": logs}


def by_quarter(logs: list[dict], key: str) -> list[float]:
    """The mean of ``key`` over each quarter of the logged steps (GRPO logs every step: single steps are noise)."""
    values = [h[key] for h in logs if key in h]
    if len(values) < 4:
        return [float(np.mean(values))] if values else []
    return [float(np.mean(part)) for part in np.array_split(values, 4)]


def median_curve(runs: list[dict]) -> list[dict]:
    n = min(len(r["curve"]) for r in runs)
    return [{k: statistics.median(r["curve"][i][k] for r in runs) for k in ("seconds", "step", *METRICS)} for i in range(n)]


SMOOTH = 10  # steps in the running mean of the per-step GRPO logs (one step is 2 prompts: single steps are noise)


def _running_mean(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) < SMOOTH:
        return points
    values = np.convolve([v for _, v in points], np.ones(SMOOTH) / SMOOTH, mode="valid")
    return [(points[k + SMOOTH - 1][0], float(v)) for k, v in enumerate(values)]


def plot(result: dict, path: Path) -> str:
    """Held-out F1 over training time (both), GRPO rewards and KL over steps; matplotlib if installed, else Pillow."""
    series_f1 = {name: [(0.0, result["start"]["f1"])] + [(p["seconds"], p["f1"]) for p in result[name]["median_curve"]]
                 for name in ("grpo", "sft") if name in result}
    if "grpo" not in result:
        return save_panels([("held-out F1@50 vs training seconds", series_f1)], path)
    logs = result["grpo"]["runs"][0]["logs"]
    series_rewards = {k.split("/")[1] if "/" in k else k: _running_mean([(h["step"], h[k]) for h in logs if k in h])
                      for k in ("reward", f"rewards/detection_{result['arguments']['kind']}/mean", "rewards/format/mean", "reward_std")}
    series_rewards = {k: v for k, v in series_rewards.items() if v}  # a reward of another run (--trivial-reward) logs only "reward"
    series_kl = {"kl": _running_mean([(h["step"], h["kl"]) for h in logs if "kl" in h])}
    seed = result["grpo"]["runs"][0]["seed"]
    panels = [("held-out F1@50 vs training seconds", series_f1), (f"GRPO rewards, seed {seed} (mean of {SMOOTH} steps)", series_rewards),
              (f"GRPO KL, seed {seed} (mean of {SMOOTH} steps)", series_kl)]
    return save_panels(panels, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", default="demo_out", help="The demo's folder (model/ and data/); the demo runs first if model/ is missing.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=600.0, help="Training seconds of each continuation (evaluation not counted).")
    parser.add_argument("--points", type=int, default=5, help="Held-out evaluations per continuation (the last one at --seconds).")
    parser.add_argument("--kind", default="f1", choices=("f1", "iou", "map_length"), help="GRPO's detection reward.")
    parser.add_argument("--generations", type=int, default=8, help="GRPO group size.")
    parser.add_argument("--prompts", type=int, default=2, help="GRPO prompts (groups) per step.")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO KL coefficient.")
    parser.add_argument("--grpo-lr", type=float, default=1e-4)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--sft-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    parser.add_argument("--out", default=None, help="JSON to write (default: DEMO_OUT/rl_learning.json); the PNG goes next to it.")
    parser.add_argument("--arms", nargs="+", default=["grpo", "sft"], choices=("grpo", "sft"),
                        help="Continuations to run (both by default; one alone for a diagnosis of its settings).")
    parser.add_argument("--trivial-reward", action="store_true",
                        help="GRPO on a reward it can surely raise (shorter answers) instead of detection + format: checks the wiring.")
    parser.add_argument("--smoke", action="store_true", help="A small demo, one seed, a few seconds of each: checks the script runs.")
    args = parser.parse_args()

    import torch
    from transformers.trainer_utils import set_seed

    from qwen_instruct_det.commands.demo import DemoArguments, run_demo
    from qwen_instruct_det.data.splits import load_split
    from qwen_instruct_det.models.loading import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    demo_args = DemoArguments(out=args.demo_out)
    if args.smoke:
        demo_args = replace(demo_args, out=args.demo_out if args.demo_out != "demo_out" else "rl_smoke_out", train_images=64, val_images=16,
                            max_steps=150, batch_size=8, hidden_size=64, layers=2, vision_depth=1)
        args.seeds, args.seconds, args.points, args.generations, args.prompts, args.sft_batch = args.seeds[:1], 15.0, 2, 4, 2, 8
    demo_dir = Path(demo_args.out)
    start = demo_dir / "model"
    if not (start / "qid_config.json").is_file():
        print(f"no SFT model in {start}: running the demo ({demo_args.train_images} images, {demo_args.max_steps} steps) first", flush=True)
        run_demo(demo_args, progress=lambda *_: None)
    work = demo_dir / "rl_learning"
    work.mkdir(exist_ok=True)

    model, processor, qc = load_for_inference(str(start))
    val = load_split("detection", "validation", cache_dir=str(demo_dir / "hf_cache"), data_dir=str(demo_dir / "data"),
                     display_name=qc.display_name, min_pixels=qc.min_pixels, max_pixels=qc.max_pixels)
    score = Scorer(processor, qc, val, work)
    set_seed(0)
    result = {"arguments": vars(args), "start_model": str(start), "start": score(model)}
    del model
    for kind in args.arms:
        runs = []
        for seed in args.seeds:
            t = time.perf_counter()
            run = continue_training(kind, start, demo_dir / "data", args, seed, score, work)
            runs.append(run)
            f = run["final"]
            print(f"{kind} seed {seed}: {run['steps']} steps ({run['samples']} samples) in {run['train_seconds']:.0f} s training "
                  f"({time.perf_counter() - t:.0f} s wall): F1@50 {f['f1']:.3f} P {f['precision']:.3f} R {f['recall']:.3f} "
                  f"AP {f['AP']:.3f} AP50 {f['AP50']:.3f} dup {f['duplicate_rate']:.3f} len {f['mean_answer_tokens']:.1f}", flush=True)
            if kind == "grpo":  # GRPO's own objective, on the training images: did it rise?
                reward = "reward" if args.trivial_reward else f"rewards/detection_{args.kind}/mean"
                quarters = {k: by_quarter(run["logs"], k) for k in (reward, "reward_std", "kl", "completions/mean_length")}
                run["quarters"] = quarters
                print("  by quarter of steps: " + "; ".join(f"{k} " + " / ".join(f"{v:.3f}" for v in q) for k, q in quarters.items()), flush=True)
        result[kind] = {"runs": runs, "median_curve": median_curve(runs),
                        "median": {**{k: statistics.median(r["final"][k] for r in runs) for k in METRICS},
                                   **{k: statistics.median(r[k] for r in runs) for k in ("steps", "samples")}}}

    out = Path(args.out) if args.out else demo_dir / "rl_learning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    backend = plot(result, out.with_suffix(".png"))
    print(f"\n| start point | {' | '.join(METRICS)} | steps | samples |")
    print("| --- |" + " ---: |" * (len(METRICS) + 2))
    print("| SFT model (start) | " + " | ".join(f"{result['start'][k]:.3f}" for k in METRICS) + " | | |")
    for kind, name in (("grpo", "+ GRPO"), ("sft", "+ more SFT")):
        if kind not in result:
            continue
        m = result[kind]["median"]
        print(f"| {name} (median of {len(args.seeds)}) | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + f" | {m['steps']:.0f} | {m['samples']:.0f} |")
    last = [h for h in result["grpo"]["runs"][0]["logs"] if "reward" in h] if "grpo" in result else []
    if last:
        print(f"GRPO seed {args.seeds[0]} last step: reward {last[-1]['reward']:.3f}, group reward std {last[-1].get('reward_std', 0):.3f}, "
              f"KL {last[-1].get('kl', 0):.4f}")
    print(f"wrote {out} and {out.with_suffix('.png')} ({backend})")


if __name__ == "__main__":
    main()
