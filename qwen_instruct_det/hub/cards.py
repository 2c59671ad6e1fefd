"""The dataset card: YAML that makes every configuration loadable by name, and what was done.

It says the repo to load, the source, the categories, the box format and the image budget the
coordinates depend on (and how to give a stock processor that budget), the build options, and what
was skipped and counted. A model's card is ``models/card.py``'s.
"""

from __future__ import annotations

import json

from ..data.tasks import TASK_DESCRIPTIONS


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def dataset_card(summary: dict[str, dict], pretty_name: str, options: dict, repo_id: str | None = None,
                 categories: list[str] | None = None, source: str | None = None) -> str:
    """A dataset card: YAML ``configs`` (``CONFIG/SPLIT-*`` patterns) and what the rows hold, how they were built and skipped."""
    repo = repo_id or "USER/REPO"
    first = next(iter(summary))
    splits = list(dict.fromkeys(split for info in summary.values() for split in info["rows"]))
    yaml = ["---", f"pretty_name: {pretty_name}", "task_categories:", "- image-text-to-text", "- object-detection",
            "tags:", "- qwen-vl", "- grounding", "- instruction-tuning", "configs:"]
    for i, (name, info) in enumerate(summary.items()):
        yaml += [f"- config_name: {name}"] + (["  default: true"] if i == 0 else []) + ["  data_files:"]
        for split in info["rows"]:
            yaml += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    yaml.append("---")
    fmt = options.get("box_format", "qwen2")
    budget = (options.get("min_pixels"), options.get("max_pixels"), options.get("resize_factor"))
    body = [
        f"# {pretty_name}", "",
        "Instruction-tuning data for Qwen-VL detection, built with qwen_instruct_det"
        + (f" from `{source}`" if source else "") + ". Load a configuration without any library:", "",
        "```python", "from datasets import load_dataset", f'ds = load_dataset("{repo}", "{first}")',
        f'ds = load_dataset("{repo}", "{first}", streaming=True)  # or read it as it downloads', "```", "",
        "Rows are TRL prompt-completion conversations with one image (`images`, `prompt`, `completion`) plus the truth "
        "(`objects` as pixel `[x1, y1, x2, y2]` with category names, `width`, `height`, `image_id`) and, for region "
        "configurations, the probed `region` and the answer object's `visible_fraction`.", "",
        "| configuration | what the answer states | " + " | ".join(f"{s} rows" for s in splits) + " | size | skipped |",
        "| --- | --- | " + " | ".join("---:" for _ in splits) + " | ---: | --- |",
    ]
    for name, info in summary.items():
        skipped = "; ".join(f"{split}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                            for split, counts in info.get("skipped", {}).items() if any(counts.values()))
        rows = " | ".join(f"{info['rows'].get(s, 0):,}" for s in splits)
        body.append(f"| `{name}` | {TASK_DESCRIPTIONS.get(name, '')} | {rows} | {_size(sum(info.get('bytes', {}).values()))} | {skipped or '-'} |")
    body += ["", f"Categories ({len(categories or [])}, in id order): " + ", ".join(f"`{c}`" for c in categories or []) + ".", ""]
    body += ["## Coordinates and the image budget", "",
             f"Box format `{fmt}`: " + {"qwen2": "Qwen2-VL grounding tokens, coordinates on the 0-1000 grid.",
                                        "qwen2_5": "Qwen2.5-VL JSON, coordinates in **pixels of the image as the processor resized it**.",
                                        "qwen3": "Qwen3-VL JSON, coordinates on the 0-1000 grid."}.get(fmt, fmt),
             f"The processor's image budget the rows were built for: `min_pixels={budget[0]}`, `max_pixels={budget[1]}` "
             f"(resize factor {budget[2]}: patch size x merge size). Train and predict with the same budget"
             + (" - the coordinates are only right for that resize:" if fmt == "qwen2_5" else ":"), "",
             "```python", "from transformers import AutoProcessor",
             f'processor = AutoProcessor.from_pretrained("MODEL", min_pixels={budget[0]}, max_pixels={budget[1]})',
             "# then SFTTrainer(..., processing_class=processor); stock `trl sft` has no flag for this budget", "```", ""]
    body += ["## Build options", "", "```json", json.dumps(options, indent=2, default=str), "```", "",
             "Skipped records are counted above, never dropped silently. The images keep the license of the source data set.", ""]
    return "\n".join(yaml + [""] + body)
