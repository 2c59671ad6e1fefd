"""Do the boxes' confidences rank? COCO AP of the demo model's held-out predictions under each way of scoring a box.

The demo's model (``qid demo --max_steps 800``: tiny Qwen2-VL, 800 steps; it runs first when
``--demo-out``/model is missing) answers its 100 held-out images once (greedy, the library's
``generate``: answers and each token's probability). The same boxes are then scored several ways
and COCO AP / AP50 computed for each (``eval.coco_map``), against every score equal and random
scores (the median of ``--random`` draws):

- ``decisive`` (the library's default): the product of the probabilities of the tokens from the
  end of the previous box to the end of this one (whether a box comes at all, its label, its digits);
- ``mean`` (the score before): the mean probability of the box's own tokens;
- candidates weighed for the design: ``box product`` (the box's own tokens only), ``least certain``
  (their minimum) and ``opening`` (only the tokens before the box's first character: whether it comes and its label).

Run: python benchmarks/confidence_ap.py [--demo-out demo_800] [--max-steps 800]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np


def _scores(gen, spans: list[tuple[int, int]], method: str) -> list[float]:
    from qwen_instruct_det.models.generate import box_confidences

    if method in ("decisive", "mean"):
        return box_confidences(gen, spans, method)
    ends = gen.token_ends
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    out, previous = [], 0
    for s, e in spans:
        own = (starts < e) & (ends > s)
        lead = (starts < s) & (ends > previous) & ~own
        p = gen.token_probs
        if method == "box product":
            out.append(float(np.prod(p[own])) if own.any() else 1.0)
        elif method == "least certain":
            out.append(float(p[own].min()) if own.any() else 1.0)
        elif method == "opening":
            out.append(float(np.prod(p[lead])) if lead.any() else 1.0)
        previous = e
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", default="demo_800", help="The demo's folder (model/ and data/); the demo runs first if model/ is missing.")
    parser.add_argument("--max-steps", type=int, default=800, help="Training steps of the demo run (when it runs).")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--random", type=int, default=20, help="Random-score draws (their median AP is reported).")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from qwen_instruct_det.commands.demo import DemoArguments, run_demo
    from qwen_instruct_det.data.images import undecoded
    from qwen_instruct_det.data.splits import load_split
    from qwen_instruct_det.eval.coco_map import coco_map
    from qwen_instruct_det.eval.detections import objects_as_detections
    from qwen_instruct_det.formats import get_box_format
    from qwen_instruct_det.models import inference
    from qwen_instruct_det.models.generate import generate
    from qwen_instruct_det.models.loading import load_for_inference

    out = Path(args.demo_out)
    if not (out / "model" / "qid_config.json").is_file():
        run_demo(DemoArguments(out=str(out), max_steps=args.max_steps, train_images=args.train_images, val_images=args.val_images),
                 progress=print)
    model, processor, qc = load_for_inference(str(out / "model"))
    rows = undecoded(load_split("detection", "validation", cache_dir=str(out / "hf_cache"), **qc.row_options(data_dir=str(out / "data"))))
    fmt = get_box_format(qc.box_format)
    budget = inference.default_max_new_tokens(qc.max_answer_tokens)
    gens, parsed, truth = [], [], []
    for k in range(0, len(rows), args.batch):
        batch = [rows[i] for i in range(k, min(k + args.batch, len(rows)))]
        images = [[inference._open(im)[0] for im in row["images"]] for row in batch]
        for row, gen in zip(batch, generate(model, processor, images, [row["prompt"] for row in batch], budget)):
            gens.append(gen)
            parsed.append(fmt.parse(gen.text, row["width"], row["height"], input_size=qc.budget.resized_size(row["width"], row["height"])
                                    if fmt.needs_input_size else None, categories=qc.categories))
            truth.append({**objects_as_detections(row["objects"]), "image_id": row["image_id"]})
    boxes = sum(len(p.labels) for p in parsed)

    def ap(score_lists: list[list[float]]) -> tuple[float, float]:
        preds = [{"boxes": p.boxes.tolist(), "labels": p.labels, "scores": s}
                 for p, s in zip(parsed, score_lists)]
        m = coco_map(preds, truth, categories=qc.categories)
        return m["AP"], m["AP50"]

    results = {}
    for method in ("decisive", "mean", "box product", "least certain", "opening"):
        lists = [_scores(g, p.spans, method) for g, p in zip(gens, parsed)]
        flat = [s for scores in lists for s in scores]
        results[method] = (*ap(lists), min(flat, default=0), max(flat, default=0), len({float(f'{v:.4g}') for v in flat}))
    results["equal"] = (*ap([[1.0] * len(p.labels) for p in parsed]), 1.0, 1.0, 1)
    rng = np.random.default_rng(0)
    draws = [ap([rng.random(len(p.labels)).tolist() for p in parsed]) for _ in range(args.random)]
    results[f"random (median of {args.random})"] = (statistics.median(d[0] for d in draws), statistics.median(d[1] for d in draws), 0, 1,
                                                     boxes)
    print(f"\n{len(rows)} held-out images, {boxes} predicted boxes; model {out / 'model'} ({qc.box_format})")
    print(f"{'scores':<24}{'AP':>8}{'AP50':>8}{'lowest':>11}{'highest':>11}{'distinct':>10}")
    for name, (a, a50, lo, hi, distinct) in results.items():
        print(f"{name:<24}{a:>8.3f}{a50:>8.3f}{lo:>11.3g}{hi:>11.3g}{distinct:>10}")


if __name__ == "__main__":
    main()
