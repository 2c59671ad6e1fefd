"""Build speed on COCO 2017's real layout: all five configurations, train and val, vs pycocotools' load.

Makes a COCO-2017-layout data set with the synthetic generator: train2017 (118,287 images,
about 860k boxes) and val2017 (5,000 images), COCO-like object counts and sizes (up to 14
overlapping objects, crowd regions with RLE masks, a few sub-pixel boxes), images of COCO's
common sizes as hard links to one real JPEG per size (building reads headers, never pixels).
Then, each step in its own process so its peak memory is its own, ``--repeats`` times:
  1. pycocotools ``COCO(instances_train2017.json)``: the yardstick;
  2. parsing that file with json and with orjson: the floor of any build;
  3. the image-header read alone (sizes and EXIF orientation of train + val);
  4. all five configurations of both splits with image checks off (``check_files=False``);
  5. the same with the defaults (every image's header read, in parallel);
and prints medians, both ratios to the load time, seconds per configuration and peak RSS.
Run: python benchmarks/build_speed.py [--images N] [--repeats 3]
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
COCO_VAL_IMAGES = 5_000
# COCO's most common image sizes (width, height)
SIZES = [(640, 480), (640, 427), (480, 640), (640, 426), (427, 640), (500, 375), (640, 428), (375, 500), (640, 360), (612, 612)]


def make_split(root: Path, split: str, n_images: int, seed: int, first_id: int) -> Path:
    import numpy as np
    from PIL import Image

    from qwen_instruct_det.data.synthetic import SynthOptions, make_annotations, write_split

    ann = root / "annotations" / f"instances_{split}2017.json"
    if ann.exists():
        return ann
    opts = SynthOptions(min_size=640, max_size=640, min_objects=1, max_objects=14, min_object_fraction=0.03,
                        max_object_fraction=0.45, max_iou=0.3, empty_fraction=0.01, crowd_fraction=0.01)
    t = time.perf_counter()
    data = make_annotations(n_images, seed=seed, options=opts, first_id=first_id)
    rng = np.random.default_rng(seed)
    size_of = {}
    for im in data["images"]:  # COCO's sizes; boxes were drawn on 640x640 and are scaled to the image
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        size_of[im["id"]] = (w / im["width"], h / im["height"])
        im["width"], im["height"] = w, h
    for k, a in enumerate(data["annotations"]):
        sx, sy = size_of[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        a["bbox"] = [round(x * sx, 2), round(y * sy, 2), round(bw * sx, 2), round(bh * sy, 2)]
        if k % 9973 == 0 and not a["iscrowd"]:
            a["bbox"][2] = 0.5  # a sub-pixel box, as COCO has a few
    write_split(root, split, data, draw=False)
    sources = {}
    for w, h in SIZES:
        sources[(w, h)] = root / f"source_{w}x{h}.jpg"
        if not sources[(w, h)].exists():
            Image.new("RGB", (w, h), (90, 120, 160)).save(sources[(w, h)], quality=50)
    image_dir = root / f"{split}2017"
    for im in data["images"]:
        target = image_dir / im["file_name"]
        if not target.exists():
            os.link(sources[(im["width"], im["height"])], target)
    print(f"made {split}: {n_images} images, {len(data['annotations'])} boxes in {time.perf_counter() - t:.1f}s "
          f"({ann.stat().st_size / 1e6:.0f} MB)", flush=True)
    return ann


_PEAK = "import resource as _r, json as _j; print(_j.dumps({'peak_kib': _r.getrusage(_r.RUSAGE_SELF).ru_maxrss}))"


def _child(code: str) -> tuple[float, dict]:
    """Run code in a fresh interpreter; return (its own peak RSS in GiB, its JSON output)."""
    out = subprocess.run([sys.executable, "-c", code + "\n" + _PEAK], check=True, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    result, peak = json.loads(lines[-2]), json.loads(lines[-1])["peak_kib"]
    return peak / 2**20, result


def _build_code(root: Path, check_files: bool) -> str:
    return f"""
import json, time, tempfile
import datasets
import qwen_instruct_det
from qwen_instruct_det.data.images import decode_named, undecoded
from qwen_instruct_det.data.splits import build_configs
datasets.disable_progress_bars()
with tempfile.TemporaryDirectory() as cache:
    t = time.perf_counter()
    builders = build_configs("all", cache_dir=cache, data_dir={str(root)!r}, check_files={check_files})
    total = time.perf_counter() - t
    # what training adds once per data set: the images cast to undecoded, the mixture interleaved (training.build_mixture)
    columns = ["images", "prompt", "completion", "task", "width", "height"]
    parts = [b.as_dataset(split="train").select_columns(columns) for b in builders.values()]
    t = time.perf_counter()
    parts = [undecoded(p) for p in parts]
    cast = time.perf_counter() - t
    t = time.perf_counter()
    mixed = decode_named(datasets.interleave_datasets(parts, probabilities=[0.5, 0.125, 0.125, 0.125, 0.125], seed=0,
                                                      stopping_strategy="all_exhausted"))
    interleave = time.perf_counter() - t
    mixed_rows = len(mixed)
out = {{name: {{"rows": sum(s.num_examples for s in b.info.splits.values()), "seconds": b.seconds}} for name, b in builders.items()}}
print(json.dumps({{"total": total, "configs": out, "cast": cast, "interleave": interleave, "mixed_rows": mixed_rows,
                   "train_rows": sum(len(p) for p in parts)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES, help="train2017 images (val2017 gets 5,000 or fewer)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_build_bench"))
    args = parser.parse_args()
    root = Path(args.workdir) / f"coco{args.images}"
    train = make_split(root, "train", args.images, seed=0, first_id=1)
    make_split(root, "val", min(COCO_VAL_IMAGES, max(args.images // 20, 10)), seed=1, first_id=10_000_000)

    load_code = f"""
import json, time
from pycocotools.coco import COCO
t = time.perf_counter(); COCO({str(train)!r}); print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""
    parse_code = f"""
import json, time
raw = open({str(train)!r}, "rb").read()
t = time.perf_counter(); json.loads(raw); j = time.perf_counter() - t
try:
    import orjson
    t = time.perf_counter(); orjson.loads(raw); o = time.perf_counter() - t
except ImportError:
    o = None
print(json.dumps({{"json": j, "orjson": o}}))
"""
    header_code = f"""
import json, time, os
from qwen_instruct_det.data.images import read_headers
paths = [os.path.join({str(root)!r}, s, f) for s in ("train2017", "val2017") for f in os.listdir(os.path.join({str(root)!r}, s))]
t = time.perf_counter(); read_headers(paths, progress=False); print(json.dumps({{"seconds": time.perf_counter() - t, "images": len(paths)}}))
"""
    runs: dict[str, list] = {"load": [], "json": [], "orjson": [], "headers": [], "off": [], "on": [], "peak_off": [], "peak_on": [],
                             "cast": [], "interleave": []}
    per_config = []
    for r in range(args.repeats):
        _, load = _child(load_code)
        _, parse = _child(parse_code)
        _, headers = _child(header_code)
        peak_off, off = _child(_build_code(root, check_files=False))
        peak_on, on = _child(_build_code(root, check_files=True))
        for key, value in (("load", load["seconds"]), ("json", parse["json"]), ("orjson", parse["orjson"]), ("headers", headers["seconds"]),
                           ("off", off["total"]), ("on", on["total"]), ("peak_off", peak_off), ("peak_on", peak_on),
                           ("cast", on["cast"]), ("interleave", on["interleave"])):
            runs[key].append(value)
        per_config.append(on["configs"])
        print(f"run {r + 1}: load {load['seconds']:.2f}s, json {parse['json']:.2f}s, orjson {parse['orjson'] or float('nan'):.2f}s, "
              f"headers {headers['seconds']:.2f}s ({headers['images']} images), build off {off['total']:.2f}s, on {on['total']:.2f}s, "
              f"mixture cast {on['cast']:.2f}s + interleave {on['interleave']:.2f}s", flush=True)

    med = {k: statistics.median(v) for k, v in runs.items() if v and None not in v}
    print(f"\nCOCO 2017 layout: {args.images} train + val images; medians of {args.repeats} runs on {os.cpu_count()} cores")
    print(f"pycocotools COCO(train) load        {med['load']:8.2f} s")
    print(f"parse train json: json {med['json']:.2f} s, orjson " + (f"{med['orjson']:.2f} s" if "orjson" in med else "not installed"))
    print(f"image headers alone (train + val)   {med['headers']:8.2f} s")
    print(f"build all five, image checks off    {med['off']:8.2f} s = {med['off'] / med['load']:.2f}x the load (goal <= 3x), "
          f"peak {max(runs['peak_off']):.2f} GiB")
    print(f"build all five, headers read        {med['on']:8.2f} s = {med['on'] / med['load']:.2f}x the load (goal <= 5x), "
          f"peak {max(runs['peak_on']):.2f} GiB (goal < 4 GiB)")
    print(f"training's mixture, once per data set: images cast to undecoded {med['cast']:.2f} s ({on['train_rows']} train rows of the "
          f"five), interleaved {med['interleave']:.2f} s ({on['mixed_rows']} rows, detection 0.5 + 0.125 each)")
    print(f"{'config':<16}{'rows':>10}{'seconds':>10}{'rows/s':>12}   (headers read; the first config also loads the files)")
    for name in per_config[0]:
        rows = per_config[0][name]["rows"]
        secs = statistics.median(pc[name]["seconds"] for pc in per_config)
        print(f"{name:<16}{rows:>10}{secs:>10.2f}{rows / secs:>12.0f}")


if __name__ == "__main__":
    main()
