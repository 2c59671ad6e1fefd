"""Build speed at COCO-train scale: all five configurations vs. pycocotools' load time.

Makes a COCO-train-scale annotation file with the synthetic generator (118,287 images,
about 860k boxes; images are hard links to a few tiny JPEGs, since building never decodes
them), then, each in its own process so peak memory is the step's own:
  1. pycocotools.coco.COCO(annotation_file), the yardstick;
  2. building all five configurations (load once, Arrow output), wall time and peak RSS;
and prints rows per second per configuration. Run: python benchmarks/build_speed.py [--images N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COCO_TRAIN_IMAGES = 118_287


def make_data(root: Path, n_images: int) -> Path:
    from PIL import Image

    from qwen_instruct_det.synthetic import SynthOptions, make_annotations, write_split

    ann = root / "annotations" / "instances_train2017.json"
    if ann.exists():
        return ann
    opts = SynthOptions(min_size=320, max_size=640, min_objects=1, max_objects=14, min_object_fraction=0.05,
                        max_object_fraction=0.3, max_iou=0.3, empty_fraction=0.01, crowd_fraction=0.01)
    t = time.perf_counter()
    data = make_annotations(n_images, seed=0, options=opts)
    write_split(root, "train", data, draw=False)
    sources = []
    for k in range(max(1, n_images // 60_000 + 1)):
        src = root / f"source{k}.jpg"
        Image.new("RGB", (8, 8), (k * 40 % 255, 90, 160)).save(src)
        sources.append(src)
    image_dir = root / "train2017"
    for i, im in enumerate(data["images"]):
        os.link(sources[i // 60_000], image_dir / im["file_name"])
    print(f"made {n_images} images, {len(data['annotations'])} boxes in {time.perf_counter() - t:.1f}s "
          f"({ann.stat().st_size / 1e6:.0f} MB)", flush=True)
    return ann


_PEAK = "import resource as _r, json as _j; print(_j.dumps({'peak_kib': _r.getrusage(_r.RUSAGE_SELF).ru_maxrss}))"


def _child(code: str) -> tuple[float, float, dict]:
    """Run code in a fresh interpreter; return (its wall seconds, its own peak RSS in GiB, its JSON output)."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code + "\n" + _PEAK], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = out.stdout.strip().splitlines()
    result, peak = json.loads(lines[-2]), json.loads(lines[-1])["peak_kib"]
    return wall, peak / 2**20, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_build_bench"))
    args = parser.parse_args()
    root = Path(args.workdir) / f"coco{args.images}"
    ann = make_data(root, args.images)

    load_code = f"""
import json, time
from pycocotools.coco import COCO
t = time.perf_counter(); COCO({str(ann)!r}); print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""
    build_code = f"""
import json, time, logging, tempfile
t0 = time.perf_counter()
import qwen_instruct_det
from qwen_instruct_det.builder import QwenInstructDet
import datasets
datasets.disable_progress_bars()
out = {{}}
with tempfile.TemporaryDirectory() as cache:
    t = time.perf_counter()
    for name in qwen_instruct_det.TASKS:
        s = time.perf_counter()
        b = QwenInstructDet(config_name=name, data_dir={str(root)!r}, cache_dir=cache)
        b.download_and_prepare()
        out[name] = {{"rows": b.info.splits["train"].num_examples, "seconds": time.perf_counter() - s}}
    total = time.perf_counter() - t
print(json.dumps({{"total": total, "configs": out}}))
"""
    loads, builds, peaks, per_config = [], [], [], []
    for r in range(args.repeats):
        _, load_peak, load = _child(load_code)
        loads.append(load["seconds"])
        _, peak, build = _child(build_code)
        builds.append(build["total"])
        peaks.append(peak)
        per_config.append(build["configs"])
        print(f"run {r + 1}: pycocotools load {load['seconds']:.2f}s (peak {load_peak:.2f} GiB), "
              f"build all five {build['total']:.2f}s (peak {peak:.2f} GiB)", flush=True)

    load_s, build_s = statistics.median(loads), statistics.median(builds)
    print(f"\n{args.images} images; medians of {args.repeats} runs on {os.cpu_count()} cores")
    print(f"pycocotools COCO() load      {load_s:8.2f} s")
    print(f"build all five (Arrow)       {build_s:8.2f} s   = {build_s / load_s:.2f}x the load (target <= 5x)")
    print(f"peak memory of the build     {max(peaks):8.2f} GiB (target < 6 GiB)")
    print(f"{'config':<16}{'rows':>10}{'seconds':>10}{'rows/s':>12}")
    for name in per_config[0]:
        rows = per_config[0][name]["rows"]
        secs = statistics.median(pc[name]["seconds"] for pc in per_config)
        print(f"{name:<16}{rows:>10}{secs:>10.2f}{rows / secs:>12.0f}")


if __name__ == "__main__":
    main()
