"""Every script in benchmarks/ runs: a smoke run of each at its smallest size (the figures come from full runs, not here).

benchmarks/metric_speed.py once failed with "predictions[76] has a box with x2 < x1": a script nobody ran had rotted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))

SMOKE = {  # script: (arguments, a line its output must hold)
    "build_speed.py": (["--images", "60", "--repeats", "1"], "build all five"),
    "coco_map_speed.py": (["--images", "40", "--classes", "30", "--repeats", "1"], "largest difference"),
    "confidence_ap.py": (["--demo-out", "demo", "--max-steps", "2", "--train-images", "8", "--val-images", "4", "--random", "2"],
                         "held-out images"),
    "demo_learning.py": (["--repeats", "1", "--max-steps", "2", "--train-images", "8", "--val-images", "4", "--points", "1"], "F1@50"),
    "generate_memory.py": (["--batches", "1", "--lengths", "3"], "peak memory of generation"),
    "gpu_real_size.py": (["--smoke", "--steps", "1", "--images", "8", "--gen-batch", "2", "--new-tokens", "4"], "CPU (smoke check"),
    "metric_speed.py": (["--images", "50", "--repeats", "1"], "COCOeval"),
    "packing.py": (["--images", "60", "--cpu-images", "4", "--repeats", "1"], "real tokens/s"),
    "parse_speed.py": (["--megabytes", "0.02", "--repeats", "1"], "qwen2"),
    "predict_engines.py": (["--images", "4", "--new-tokens", "2"], "answer tokens per image"),
    "predict_throughput.py": (["--before", str(ROOT), "--images", "4", "--repeats", "1", "--new-tokens", "2", "--workers", "1"], "speed-up"),
    "push_memory.py": (["--sizes", "40"], "qid push dataset --dry_run"),
    "rl_learning.py": (None, None),  # continues the demo's trained model for minutes: run it from benchmarks/, not here
    "train_start.py": (["--images", "60", "--repeats", "1"], "cold start beyond the build"),
}


def test_every_script_has_a_smoke_run_or_says_why_not():
    assert set(SMOKE) == set(SCRIPTS)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if SMOKE.get(s, (None,))[0] is not None])
def test_benchmark_runs_at_its_smallest_size(script, tmp_path):
    args, expected = SMOKE[script]
    if "--workdir" in Path(ROOT / "benchmarks" / script).read_text():
        args = args + ["--workdir", str(tmp_path / "work")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-1500:], done.stderr[-3000:])
    assert expected in done.stdout
