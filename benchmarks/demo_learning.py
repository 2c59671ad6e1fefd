"""Does the whole path learn? The demo's held-out F1@50, wall time, and detection-only vs mixture.

    python benchmarks/demo_learning.py                        # the demo as `qid demo` runs it, --repeats times
    python benchmarks/demo_learning.py --family qwen3_vl      # the tiny Qwen3-VL (or qwen2_5_vl) in its own box format
    python benchmarks/demo_learning.py --compare-mix steps    # protocol (b): the same steps, the mixture halves detection
    python benchmarks/demo_learning.py --compare-mix epochs   # protocol (a): the same detection samples, augmentations on top
    python benchmarks/demo_learning.py --compare-mix epochs --leave-one-out   # (a) without each augmentation in turn

Under (a) every augmentation configuration gets a quarter of detection's share and the steps
grow to match (detection + four augmentations: twice the steps), so each variant sees the
same expected number of detection samples, and a control trains detection only for the
mixture's steps; under (b) all variants have the demo's steps.
Prints F1@50 (det_iou50), precision, recall, mean IoU, AP50, steps and seconds per run, and
the median over runs (each run with its own seed); ``--json`` keeps them (one line a run, with
its held-out learning curve at ``--points`` steps) and draws, next to that file, a PNG of the
median curves of every family, protocol and variant in it (``--summarize`` prints its table of
medians and redraws the PNG, running nothing).
CPU, offline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from qwen_instruct_det.commands.demo import DemoArguments, run_demo
from qwen_instruct_det.eval.curves import save_panels
from qwen_instruct_det.models.tiny import FAMILIES

AUGMENTATIONS = ("count", "full_region", "partial_region", "none_region")
AUGMENTATION_SHARE = 0.25  # of detection's share, per augmentation configuration


def mixture(augmentations) -> str:
    return ",".join(["detection=1.0", *(f"{name}={AUGMENTATION_SHARE}" for name in augmentations)])


def variants(compare: str | None, leave_one_out: bool, steps: int, demo_mix: str) -> dict[str, tuple[str, int]]:
    """Variant name -> (mix, steps) for a protocol: None (the demo), 'steps' (b) or 'epochs' (a)."""
    if compare is None:
        return {"demo": (demo_mix, steps)}

    def scaled(augs) -> int:
        return steps if compare == "steps" else round(steps * (1 + AUGMENTATION_SHARE * len(augs)))

    out = {"detection only": ("detection=1.0", steps), "detection + all four": (mixture(AUGMENTATIONS), scaled(AUGMENTATIONS))}
    if compare == "epochs":  # the control: (a)'s mixture trains longer; is its gain the rows or the steps?
        out["detection only, the mixture's steps"] = ("detection=1.0", scaled(AUGMENTATIONS))
    if leave_one_out:
        for left in AUGMENTATIONS:
            augs = [a for a in AUGMENTATIONS if a != left]
            out[f"without {left}"] = (mixture(augs), scaled(augs))
    return out


def one(args: DemoArguments) -> dict:
    report = run_demo(args, progress=lambda *_: None)
    d = report["det_iou50"]
    return {"f1": d["f1"], "precision": d["precision"], "recall": d["recall"], "mean_iou": d["mean_iou"],
            "AP50": report["coco_map"]["AP50"], "seconds": report["demo"]["seconds"]["total"],
            "truncated": report["parsing"]["truncated_answers"], "steps": args.max_steps, "curve": report["demo"].get("curve", [])}


def median_curves(lines: list[dict]) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """(family, protocol, variant and steps) -> (step, median F1@50 over the seeds scored at that step), from runs with a curve."""
    groups: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for line in lines:
        key = (line["family"], line["protocol"] or "demo", f"{line['variant']}, {line['steps']} steps")
        for point in line.get("curve", []):
            groups.setdefault(key, {}).setdefault(point["step"], []).append(point["f1"])
    return {key: [(step, statistics.median(f1s)) for step, f1s in sorted(points.items())] for key, points in groups.items()}


def summary_table(json_path: Path) -> str:
    """Markdown: one row per family, protocol, variant and steps, F1@50 by seed and the medians of F1@50 and AP50."""
    groups: dict[tuple, list[dict]] = {}
    for line in json_path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            groups.setdefault((r["family"], r["protocol"] or "demo", r["variant"], r["steps"]), []).append(r)
    rows = ["| family | protocol | variant | steps | F1@50 by seed | median F1@50 | median AP50 |", "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    for (family, protocol, variant, steps), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        by_seed = " / ".join(f"{r['f1']:.3f} (s{r['seed']})" for r in runs)
        rows.append(f"| {family} | {protocol} | {variant} | {steps} | {by_seed} | {statistics.median(r['f1'] for r in runs):.3f} | "
                    f"{statistics.median(r['AP50'] for r in runs):.3f} |")
    return "\n".join(rows)


def plot(json_path: Path) -> Path | None:
    """PNG next to ``json_path``: one panel per family and protocol, a median F1@50 curve per variant (seeds in the legend).

    The x axis is training steps (of 16 samples), not seconds: runs measured side by side share
    the cores, so their seconds measure the neighbour as much as the run.
    """
    lines = [json.loads(line) for line in json_path.read_text().splitlines() if line.strip()]
    seeds: dict[tuple[str, str, str], set[int]] = {}
    for line in lines:
        if line.get("curve"):
            seeds.setdefault((line["family"], line["protocol"] or "demo", f"{line['variant']}, {line['steps']} steps"), set()).add(line["seed"])
    curves = median_curves(lines)
    if not curves:
        return None
    titles = {"demo": "the demo", "steps": "(b) equal steps", "epochs": "(a) equal detection samples"}
    panels = {}
    for (family, protocol, variant), points in sorted(curves.items()):
        title = f"{family} {titles.get(protocol, protocol)}: F1@50 vs steps"
        panels.setdefault(title, {})[f"{variant} ({len(seeds[family, protocol, variant])} seeds)"] = points
    path = json_path.with_suffix(".png")
    save_panels(list(panels.items()), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per variant, seeds first-seed, first-seed+1, ...")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--compare-mix", choices=("steps", "epochs"), default=None,
                        help="Detection only vs the mixture: at the same steps (b) or the same detection samples (a).")
    parser.add_argument("--leave-one-out", action="store_true", help="With --compare-mix: also the mixture without each augmentation.")
    parser.add_argument("--only", nargs="+", default=None, help="Run only these variants (by name, e.g. 'detection only').")
    parser.add_argument("--json", default=None, help="Append each run as a JSON line to this file.")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="Tiny model family (each answers in its own box format).")
    parser.add_argument("--train-images", type=int, default=None, help="Synthetic training images (default: the demo's).")
    parser.add_argument("--val-images", type=int, default=None, help="Held-out images (default: the demo's).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores).")
    parser.add_argument("--keep", default=None, help="Keep each run's folder as KEEP/FAMILY_VARIANT_SEED (default: a temporary folder).")
    parser.add_argument("--points", type=int, default=6, help="Held-out scores during each run: its learning curve (0: only the end).")
    parser.add_argument("--summarize", action="store_true", help="Run nothing: print the --json file's table (per family, protocol, "
                        "variant and steps: F1@50 per seed and medians) and redraw its PNG.")
    args = parser.parse_args()
    if args.summarize:
        if not args.json:
            parser.error("--summarize needs --json FILE")
        print(summary_table(Path(args.json)))
        png = plot(Path(args.json))
        print(f"wrote {png}" if png else "no run in the file has a curve: no PNG")
        return
    base = DemoArguments(family=args.family, threads=args.threads)
    if args.train_images:
        base = replace(base, train_images=args.train_images)
    if args.val_images:
        base = replace(base, val_images=args.val_images)
    if args.max_steps:
        base = replace(base, max_steps=args.max_steps)
    plan = variants(args.compare_mix, args.leave_one_out, base.max_steps, base.mix)
    for name, (mix, steps) in plan.items():
        if args.only and name not in args.only:
            continue
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.repeats):
            run_args = replace(base, mix=mix, seed=seed, max_steps=steps, curve_points=min(args.points, steps))
            if args.keep:
                out = Path(args.keep) / f"{args.family}_{name.replace(' ', '_').replace('+', 'and')}_{seed}"
                r = one(replace(run_args, out=str(out)))
            else:
                with tempfile.TemporaryDirectory() as out:
                    r = one(replace(run_args, out=out))
            runs.append(r)
            print(f"{args.family} {name} seed {seed}: F1@50 {r['f1']:.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
                  f"mIoU {r['mean_iou']:.3f}  AP50 {r['AP50']:.3f}  {steps} steps  {r['seconds']:.0f} s  truncated {r['truncated']}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"family": args.family, "protocol": args.compare_mix, "variant": name, "mix": mix, "seed": seed, **r}) + "\n")
        if args.json and (png := plot(Path(args.json))):
            print(f"curves: {png}")
        print(f"{args.family} {name}: median F1@50 {statistics.median(r['f1'] for r in runs):.3f}, "
              f"median {statistics.median(r['seconds'] for r in runs):.0f} s over {len(runs)} runs ({steps} steps)\n", flush=True)


if __name__ == "__main__":
    main()
