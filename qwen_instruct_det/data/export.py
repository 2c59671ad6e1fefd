"""Rows as ms-swift JSONL: ``messages`` with an ``<image>`` tag, ``images`` as paths (``qid export-swift``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets


def write_swift_jsonl(datasets_: list[datasets.Dataset], path: str | os.PathLike) -> int:
    """Rows as ms-swift JSONL (``messages`` with an ``<image>`` tag, ``images`` as paths); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "w") as f:
        for ds in datasets_:
            ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
            for row in ds.select_columns(["images", "prompt", "completion"]):
                prompt = "".join("<image>" if c["type"] == "image" else c["text"] for c in row["prompt"][0]["content"])
                answer = "".join(c["text"] for c in row["completion"][0]["content"])
                record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                          "images": [im["path"] for im in row["images"]]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    return written
