"""Peak memory of generation against batch size and answer length, at Qwen's real vocabulary of 151,936 tokens.

A tiny Qwen2-VL (hidden size 64) with its vocabulary resized to 151,936 tokens answers one 56x56
image per prompt, greedy, forced to exactly LENGTH new tokens (``min_new_tokens``). Each case runs
in a process of its own; its figure is the peak RSS during generation above the RSS just before
it (libraries, model and inputs loaded):

- ``before``: ``output_scores=True`` and ``compute_transition_scores(normalize_logits=True)``, the
  path ``qid predict`` took (every step's logits kept, then normalised copies);
- ``after``: ``qwen_instruct_det.models.generate.generate_ids`` (a logits processor keeps the
  chosen tokens' log-probabilities, one step at a time).

The model runs in float32 on the CPU; in bfloat16 on a GPU ``before``'s kept logits take half as
much. A ``before`` case whose logits alone (steps x batch x vocabulary x 4 bytes, kept three
times over) would pass ``--max-gib`` is not run: its estimate is printed instead.

Run: python benchmarks/generate_memory.py [--batches 1 4 16] [--lengths 100 300 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCABULARY = 151_936


def _rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def make_model(folder: Path) -> Path:
    from qwen_instruct_det.models import tiny

    if (folder / "config.json").is_file():
        return folder
    cfg = tiny.TinyModelConfig(family="qwen2_vl", hidden_size=64, intermediate_size=128, num_hidden_layers=2, vision_depth=1,
                               vision_embed_dim=32, min_pixels=56 * 56, max_pixels=56 * 56)
    processor = tiny.build_processor(["circle square triangle (10,20),(30,40)"], cfg)
    model = tiny.build_model(processor, cfg)
    model.resize_token_embeddings(VOCABULARY)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_case(folder: Path, method: str, batch: int, length: int) -> None:
    """In a process of its own: generate, then print peak GiB above the start and seconds."""
    import resource

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from qwen_instruct_det.models.generate import _processor_call, generate_ids

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw the bounding box of objects"}]}]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = _processor_call(processor, [[Image.new("RGB", (56, 56), (k * 9 % 255, 80, 160))] for k in range(batch)], [text] * batch, "cpu")
    start_rss = _rss_gib()
    start = time.perf_counter()
    if method == "after":
        new, logprobs = generate_ids(model, inputs, length, min_new_tokens=length)
    else:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=length, min_new_tokens=length, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
            logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    seconds = time.perf_counter() - start
    assert logprobs.shape == (batch, length), logprobs.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"RESULT {max(peak - start_rss, 0.0):.3f} {seconds:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--max-gib", type=float, default=12.0, help="skip a 'before' case whose estimate passes this")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qid_generate_memory"))
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir) / "model"
    if args.case:
        method, batch, length = args.case
        run_case(folder, method, int(batch), int(length))
        return
    make_model(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for batch in args.batches:
        for length in args.lengths:
            row = [batch, length]
            for method in ("before", "after"):
                estimate = 3 * length * batch * VOCABULARY * 4 / 2**30
                if method == "before" and estimate > args.max_gib:
                    row += [f"~{estimate:.1f} (est.)", "-"]
                    continue
                done = subprocess.run([sys.executable, __file__, "--workdir", args.workdir, "--case", method, str(batch), str(length)],
                                      env=env, capture_output=True, text=True)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
                if done.returncode or line is None:
                    raise SystemExit(done.stderr[-3000:])
                peak, seconds = line.split()[1:]
                row += [f"{float(peak):.2f}", seconds]
            rows.append(row)
            print(f"batch {batch}, {length} tokens: before {row[2]} GiB ({row[3]} s), after {row[4]} GiB ({row[5]} s)", flush=True)
    print(f"\npeak memory of generation above its start (GiB), vocabulary {VOCABULARY:,}, float32 on the CPU, {os.cpu_count()} cores")
    print(f"{'batch':>6}{'new tokens':>12}{'before GiB':>18}{'before s':>10}{'after GiB':>11}{'after s':>9}")
    for batch, length, before, before_s, after, after_s in rows:
        print(f"{batch:>6}{length:>12}{before:>18}{before_s:>10}{after:>11}{after_s:>9}")


if __name__ == "__main__":
    main()
