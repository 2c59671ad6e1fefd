"""Images per second of ``predict_to_file``, this checkout against another (``--before DIR``), same model and images, one run.

The images are ``--images`` synthetic JPEGs of 56 to 1,000 px a side in COCO's layout (val2017),
so that a model with Qwen2-VL's budget up to 1,280 image tokens sees 4 to about 1,280 tokens per
image: batches in dataset order pad to their largest image, batches grouped by size do not. The
model is a tiny Qwen2-VL checkpoint (random weights: every answer runs to ``--new-tokens``).
Each timed run is a process of its own that loads the model and the split, then times
``predict_to_file`` over the split alone; the two checkouts alternate, ``--repeats`` times each.

Run: python benchmarks/predict_throughput.py --before ../before_checkout [--images 200] [--repeats 3] [--hidden 64 --layers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import inspect, sys, time
sys.path.insert(0, {code!r})
import torch
from qwen_instruct_det.data.splits import load_split
from qwen_instruct_det.models import inference
from qwen_instruct_det.models.loading import load_for_inference
from qwen_instruct_det.train.sft import target_options
model, processor, qc = load_for_inference({model!r})
rows = load_split("detection", "validation", cache_dir={cache!r}, data_dir={data!r}, **target_options(processor, qc.box_format))
extra = {{"workers": {workers}}} if "workers" in inspect.signature(inference.predict_to_file).parameters else {{}}
start = time.perf_counter()
inference.predict_to_file(model, processor, rows, {out!r}, box_format=qc.box_format, batch_size={batch}, max_new_tokens={tokens},
                          progress=False, **extra)
print("RESULT", len(rows) / (time.perf_counter() - start), inference.__file__)
"""


def make_inputs(work: Path, images: int, hidden: int = 64, layers: int = 2) -> tuple[Path, Path]:
    from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
    from qwen_instruct_det.models import tiny

    data, model = work / f"data{images}", work / (f"model_h{hidden}_l{layers}" if (hidden, layers) != (64, 2) else "model")
    if not (data / "annotations" / "instances_val2017.json").is_file():
        make_synthetic_coco(data, train=1, val=images, seed=7, options=SynthOptions(min_size=56, max_size=1000, textured_fraction=0))
    if not (model / "config.json").is_file():
        cfg = tiny.TinyModelConfig(family="qwen2_vl", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, vision_depth=1,
                                   vision_embed_dim=64, min_pixels=56 * 56, max_pixels=1280 * 28 * 28)
        processor = tiny.build_processor(["circle square triangle (10,20),(30,40)"], cfg)
        tiny.build_model(processor, cfg).save_pretrained(model)
        processor.save_pretrained(model)
    return data, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier code (e.g. a git worktree)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64, help="the language model's hidden size (its share of the time grows with it)")
    parser.add_argument("--layers", type=int, default=2, help="the language model's layers")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_predict_throughput"))
    args = parser.parse_args()
    work = Path(args.workdir)
    data, model = make_inputs(work, args.images, args.hidden, args.layers)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    speeds: dict[str, list[float]] = {"before": [], "after": []}
    for k in range(args.repeats):
        for name, code in (("before", args.before.resolve()), ("after", ROOT)):
            out = work / f"{name}.jsonl"
            out.unlink(missing_ok=True)
            script = CHILD.format(code=str(code), model=str(model), cache=str(work / f"cache_{name}"), data=str(data), out=str(out),
                                  workers=args.workers, batch=args.batch, tokens=args.new_tokens)
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=work)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
            if done.returncode or line is None:
                raise SystemExit(done.stderr[-3000:])
            speed, source = float(line.split()[1]), line.split()[2]
            assert source.startswith(str(code)), (source, code)
            speeds[name].append(speed)
            print(f"run {k + 1} {name}: {speed:.2f} images/s ({source})", flush=True)
    print(f"\npredict_to_file on {args.images} images of 56-1000 px, batch {args.batch}, {args.new_tokens} new tokens, "
          f"{args.workers} decode workers (after), language model {args.hidden} wide x {args.layers} layers, {os.cpu_count()} cores")
    for name in ("before", "after"):
        s = speeds[name]
        print(f"{name:>7}: median {statistics.median(s):.2f} images/s (min {min(s):.2f}, max {max(s):.2f})")
    print(f"speed-up: {statistics.median(speeds['after']) / statistics.median(speeds['before']):.2f}x")


if __name__ == "__main__":
    main()
