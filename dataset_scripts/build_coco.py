"""Build all five configurations of a COCO-layout folder (Arrow, or Parquet with image bytes for sharing).

    python dataset_scripts/build_coco.py data/coco --out data/coco_built [--format parquet] [--subset 20000]

A thin wrapper over ``qid build`` with COCO's defaults; every ``qid build`` flag works here too.
"""

from __future__ import annotations

import sys

from qwen_instruct_det.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
