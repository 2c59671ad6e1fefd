"""Images per second of ``qid predict`` with transformers against vLLM: the same model, images and options, one run.

The model is a tiny Qwen-VL checkpoint (random weights, attention head size 32, which vLLM's CPU backend supports), so
every answer runs to ``--new-tokens`` on both engines unless it closes its turn by chance; the mean answer length of
each engine is printed beside its speed. The images are ``--images`` synthetic JPEGs of 56 to 400 px a side. Each
engine is started (its start-up timed: loading, and for vLLM its engine process, warm-up and KV cache) and then
``predict_to_file`` is timed over the split twice, as ``qid predict`` runs it: the first pass (vLLM compiles for each new
batch shape then) and the second, steady one, the figure compared. Without vLLM (the main venv) only transformers
is measured; ``make test-vllm`` builds ``.venv-vllm`` that has both.

Run: .venv-vllm/bin/python benchmarks/predict_engines.py [--images 64] [--batch 8] [--new-tokens 32] [--family qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path


def make_inputs(work: Path, images: int, family: str, hidden: int) -> tuple[Path, Path]:
    from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco
    from qwen_instruct_det.models import tiny

    data, model = work / f"data{images}", work / f"{family}_h{hidden}"
    if not (data / "annotations" / "instances_val2017.json").is_file():
        make_synthetic_coco(data, train=1, val=images, seed=7, options=SynthOptions(min_size=56, max_size=400, textured_fraction=0))
    if not (model / "config.json").is_file():
        cfg = tiny.TinyModelConfig(family=family, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                   num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, vision_depth=1, vision_embed_dim=64,
                                   vision_heads=2, min_pixels=56 * 56, max_pixels=400 * 400)
        processor = tiny.build_processor(["circle square triangle (10,20),(30,40)"], cfg)
        tiny.build_model(processor, cfg).save_pretrained(model)
        processor.save_pretrained(model)
    return data, model


def run(engine: str, model: Path, data: Path, work: Path, args) -> dict:
    """Start ``engine`` on ``model`` and predict the split; start-up seconds, images/s and mean answer tokens."""
    from qwen_instruct_det.data.splits import load_split
    from qwen_instruct_det.models import inference
    from qwen_instruct_det.train.sft import target_options

    start = time.perf_counter()
    if engine == "vllm":
        from qwen_instruct_det.models.vllm_engine import load_vllm

        model_or_engine, processor, qc = load_vllm(str(model), max_num_seqs=args.batch)
    else:
        from qwen_instruct_det.models.loading import load_for_inference

        model_or_engine, processor, qc = load_for_inference(str(model))
    startup = time.perf_counter() - start
    rows = load_split("detection", "validation", cache_dir=str(work / "cache"), data_dir=str(data), **target_options(processor, qc.box_format))
    out = work / f"{engine}.jsonl"
    speeds = []
    for _ in range(2):  # the first pass also warms up (vLLM captures and compiles for each new batch shape), the second is steady
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        inference.predict_to_file(model_or_engine, processor, rows, out, box_format=qc.box_format, batch_size=args.batch,
                                  max_new_tokens=args.new_tokens, progress=False, workers=args.workers)
        speeds.append(len(rows) / (time.perf_counter() - start))
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    tokens = sum(len(processor.tokenizer(r["text"])["input_ids"]) for r in records) / max(len(records), 1)
    if engine == "vllm":
        model_or_engine.close()
    return {"startup": startup, "first": speeds[0], "speed": speeds[1], "tokens": tokens, "texts": [r["text"] for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="images per generate call (vLLM: at most this many sequences at once)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes (0: in the main process)")
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))
    parser.add_argument("--hidden", type=int, default=64, help="the language model's width (a multiple of 32: heads of 32)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_predict_engines"))
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    work = Path(args.workdir)
    data, model = make_inputs(work, args.images, args.family, args.hidden)
    engines = ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    results = {engine: run(engine, model, data, work, args) for engine in engines}
    import torch

    print(f"\nqid predict on {args.images} images of 56-400 px, tiny {args.family} ({args.hidden} wide, random weights), batch {args.batch}, "
          f"up to {args.new_tokens} new tokens, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    for engine, r in results.items():
        print(f"{engine:>12}: start-up {r['startup']:.1f} s, {r['speed']:.2f} images/s (first pass {r['first']:.2f}), "
              f"{r['tokens']:.1f} answer tokens per image")
    if "vllm" not in results:
        print("        vllm: not installed in this Python; make test-vllm builds .venv-vllm, then run this script with .venv-vllm/bin/python")
    else:
        same = sum(a == b for a, b in zip(results["transformers"]["texts"], results["vllm"]["texts"]))
        print(f"vLLM / transformers: {results['vllm']['speed'] / results['transformers']['speed']:.2f}x images/s; "
              f"answers equal on {same}/{args.images} images")


if __name__ == "__main__":
    main()
