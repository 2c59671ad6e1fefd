"""From ``qid train`` to its first optimizer step at COCO-2017 size, beside the build of the same data.

Makes (or reuses) build_speed.py's COCO-2017 layout (train2017 118,287 images and val2017 5,000,
COCO's image sizes, real JPEG headers and pixels) and a tiny Qwen2-VL checkpoint folder (model and
processor saved, then loaded through ``AutoProcessor`` as a real checkpoint is: not ``--tiny``).
Then, each in a fresh process with its own empty datasets cache, ``--repeats`` times:
  1. ``qid build DATA --config all``: the yardstick;
  2. ``qid train --config configs/seed_recipe.yaml --model_name_or_path CKPT --max_steps 1`` on the CPU, cache cold:
     the command to the end of its first optimizer step (4 micro-batches of 1, as the recipe says), model saved after;
  3. the same again with the cache warm (a second run, a resume, another rank: the data built, the lengths kept).
Prints each run, the medians, (2) - (1) (goal: at most 150 s) and every step's peak RSS (goal: under 4 GiB).
``--code DIR`` runs another checkout's ``qid`` (a worktree of an earlier commit) the same way, for before and after.

Run: python benchmarks/train_start.py [--images N] [--repeats 3] [--code DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_speed import COCO_TRAIN_IMAGES, COCO_VAL_IMAGES, make_split

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--max_steps", "1", "--report_to", "none", "--save_strategy", "no",
       "--logging_steps", "1"]


def _qid(code: Path | None) -> list[str]:
    """The command line of ``qid`` in this checkout, or in another one (an older layout has ``qwen_instruct_det/cli.py``)."""
    if code is None:
        return [sys.executable, "-m", "qwen_instruct_det"]
    module = "qwen_instruct_det.cli" if (code / "qwen_instruct_det" / "cli.py").is_file() else "qwen_instruct_det.commands.cli"
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); from {module} import main; sys.exit(main())"]


def _run(argv: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run a command; return (wall seconds, its peak RSS in GiB). Output goes to ``log``."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed; see {log}")
    return seconds, usage.ru_maxrss / 2**20


def _checkpoint(folder: Path) -> Path:
    """A tiny Qwen2-VL saved like a Hub checkpoint (model + processor), its tokenizer trained on COCO-like text."""
    if (folder / "config.json").is_file():
        return folder
    from qwen_instruct_det.data.synthetic import CATEGORIES
    from qwen_instruct_det.models.tiny import TinyModelConfig, build_model, build_processor

    texts = [c["name"] for c in CATEGORIES] + ["Draw the bounding box of objects", "What does the area contain?",
                                               "Please count how many objects of each category are in the image."]
    processor = build_processor(texts, TinyModelConfig())
    build_model(processor, TinyModelConfig()).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES, help="train2017 images (val2017 gets 5,000 or fewer)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_build_bench"))
    parser.add_argument("--code", type=Path, default=None, help="another checkout whose qid to time (default: this one)")
    parser.add_argument("--skip-build", action="store_true", help="time only qid train (the build is the same in both checkouts)")
    parser.add_argument("--cold-only", action="store_true", help="no second, warm start (an old checkout measures everything again)")
    args = parser.parse_args()
    work = Path(args.workdir)
    data = work / f"coco{args.images}"
    make_split(data, "train", args.images, seed=0, first_id=1)
    make_split(data, "val", min(COCO_VAL_IMAGES, max(args.images // 20, 10)), seed=1, first_id=10_000_000)
    checkpoint = _checkpoint(work / "tiny-qwen2-vl-checkpoint")
    qid = _qid(args.code)
    runs: dict[str, list[float]] = {k: [] for k in ("build", "build_peak", "cold", "cold_peak", "warm", "warm_peak")}
    table = ""
    for r in range(args.repeats):
        cache = Path(tempfile.mkdtemp(prefix="qid_start_cache_", dir=work))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache / "datasets"), "TOKENIZERS_PARALLELISM": "true"}
        try:
            if not args.skip_build:
                seconds, peak = _run(qid + ["build", str(data), "--config", "all", "--cache_dir", str(cache / "build")], env, work / "build.log")
                runs["build"].append(seconds)
                runs["build_peak"].append(peak)
            recipe = (args.code or ROOT) / "configs" / "seed_recipe.yaml"  # the recipe of the code being timed
            train = qid + ["train", "--config", str(recipe), "--data_dir", str(data), "--model_name_or_path", str(checkpoint),
                           "--output_dir", str(cache / "out")] + CPU
            for key in ("cold",) if args.cold_only else ("cold", "warm"):
                seconds, peak = _run(train, env, work / f"train_{key}.log")
                runs[key].append(seconds)
                runs[f"{key}_peak"].append(peak)
            log = (work / "train_cold.log").read_text()
            match = re.search(r"training data, train split:\n(.*?optimizer steps.*?)\n", log, re.S)
            table = match.group(1) if match else table
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        done = ", ".join(f"{k} {v[-1]:.1f}{' GiB' if 'peak' in k else ' s'}" for k, v in runs.items() if v)
        print(f"run {r + 1}: {done}", flush=True)

    med = {k: statistics.median(v) for k, v in runs.items() if v}
    print(f"\nCOCO 2017 layout: {args.images} train + val images; {os.cpu_count()} cores; medians of {args.repeats}; "
          f"qid of {args.code or ROOT}")
    if "build" in med:
        print(f"qid build --config all                   {med['build']:8.1f} s   peak {max(runs['build_peak']):.2f} GiB")
    print(f"qid train to step 1, cache cold          {med['cold']:8.1f} s   peak {max(runs['cold_peak']):.2f} GiB")
    if "warm" in med:
        print(f"qid train to step 1, cache warm          {med['warm']:8.1f} s   peak {max(runs['warm_peak']):.2f} GiB")
    if "build" in med:
        print(f"cold start beyond the build              {med['cold'] - med['build']:8.1f} s   (goal: at most 150 s; "
              f"peak goal: under 4 GiB)")
    if table:
        print("\nwhat qid train shows before its first step:\n" + table)


if __name__ == "__main__":
    main()
