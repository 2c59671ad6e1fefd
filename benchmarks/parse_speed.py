"""Parser speed: seconds to parse large adversarial and valid answers with each box format.

Every input is about ``--megabytes`` long (5 MB by default, far longer than any real answer): nested brackets,
unclosed braces, long runs of spaces and of digits, repeated partial boxes and objects, repeated
``<|object_ref_start|>`` without an end, and valid boxes (each format's own rendering; for qwen2 also the text
that ``skip_special_tokens=True`` leaves). A parser that is linear in the input takes well under a second on each;
one that backtracks or retries super-linearly takes minutes. Prints one table: the median of ``--repeats`` runs, wall and CPU time
(the machine may be shared).

    python benchmarks/parse_speed.py --megabytes 5 --repeats 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np

from qwen_instruct_det.formats import BOX_FORMATS, get_box_format

WIDTH, HEIGHT, INPUT_SIZE = 1280, 960, (1288, 952)
CATEGORIES = ["person", "traffic light", "box (1,2)", "No.", "dog"]


def adversarial_inputs(size: int) -> dict[str, str]:
    """Texts of about ``size`` characters that make naive parsers slow."""
    return {
        "nested brackets": '[{"bbox_2d": [' * (size // 14),
        "unclosed braces": "{" * size,
        "spaces after a corner": "(1,2)" + " " * size,
        "spaces in an object": '{"bbox_2d": [1, 2,' + " " * size,
        "digits in a corner": "cat(1,2),(3," + "9" * size,
        "digits in an object": '[{"bbox_2d": [1, 2, 3, ' + "9" * size,
        "partial boxes": "(1,2),(3," * (size // 9),
        "partial objects": '{"bbox_2d": [1, 2, 3,' * (size // 21),
        "refs without end": "<|object_ref_start|>" * (size // 20),
    }


def valid_input(fmt_name: str, size: int, seed: int = 0) -> str:
    """About ``size`` characters of valid answers in the format's own rendering, one per line, each of 8 boxes of up
    to 3 classes (so labels change every few boxes, as in real answers)."""
    fmt = get_box_format(fmt_name)
    rng = np.random.default_rng(seed)
    input_size = INPUT_SIZE if fmt.needs_input_size else None
    answers, length = [], 0
    while length < size:
        corner = rng.uniform(0, [WIDTH - 60, HEIGHT - 60], size=(8, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(10, 60, size=(8, 2))], axis=1)
        labels = [CATEGORIES[k] for k in rng.choice(len(CATEGORIES), 3, replace=False)[rng.integers(0, 3, 8)]]
        answers.append(fmt.render(boxes, labels, WIDTH, HEIGHT, input_size=input_size))
        length += len(answers[-1]) + 1
    return "\n".join(answers)


def time_parse(fmt_name: str, text: str, repeats: int) -> tuple[float, float, int, int]:
    """Median wall and CPU seconds over ``repeats`` parses, and the boxes and unparsed count of the last one.

    The CPU time of this process is reported beside the wall time because the machine may be shared."""
    fmt = get_box_format(fmt_name)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fmt.parse(text, WIDTH, HEIGHT, input_size=INPUT_SIZE, categories=CATEGORIES)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus), len(result.boxes), result.unparsed


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=5.0, help="Length of each input in millions of characters.")
    parser.add_argument("--repeats", type=int, default=3, help="Parses per input and format; the median is reported.")
    return parser


def main() -> None:
    args = make_parser().parse_args()
    size = int(args.megabytes * 1_000_000)
    names = sorted(BOX_FORMATS)
    rows: list[tuple[str, dict[str, str]]] = []
    for row, text in adversarial_inputs(size).items():
        rows.append((row, {f: text for f in names}))
    rows.append(("valid boxes (own format)", {f: valid_input(f, size) for f in names}))
    rows.append(("valid qwen2, tokens stripped", {"qwen2": re.sub(r"<\|[a-z_]+\|>", "", valid_input("qwen2", size))}))

    print(f"parse time in seconds, wall / CPU (median of {args.repeats}), inputs of {args.megabytes:g} MB; "
          "[boxes read, unparsed]")
    print(f"| {'input':30s} | " + " | ".join(f"{n:>28s}" for n in names) + " |")
    print(f"|{'-' * 32}|" + "|".join("-" * 30 for _ in names) + "|")
    worst_wall = worst_cpu = 0.0
    for row, texts in rows:
        cells = []
        for name in names:
            if name not in texts:
                cells.append(f"{'-':>28s}")
                continue
            wall, cpu, boxes, unparsed = time_parse(name, texts[name], args.repeats)
            worst_wall, worst_cpu = max(worst_wall, wall), max(worst_cpu, cpu)
            cells.append(f"{wall:6.3f} / {cpu:5.3f} [{boxes}, {unparsed}]".rjust(28))
        print(f"| {row:30s} | " + " | ".join(cells) + " |")
    print(f"slowest: {worst_wall:.3f} s wall, {worst_cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
