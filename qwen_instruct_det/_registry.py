"""Registration of the builder with ``datasets`` under the name ``qwen_instruct_det``.

datasets 5 runs no dataset scripts; ``load_dataset(name)`` first looks the name up in
``datasets.packaged_modules._PACKAGED_DATASETS_MODULES`` (name -> module path and hash).
That table is private, so this module checks the datasets major version and fails with a
clear message if the table is gone.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

NAME = "qwen_instruct_det"
MODULE = "qwen_instruct_det.builder"
SUPPORTED_DATASETS_MAJOR = (5,)
_HASHED = ("builder.py", "tasks.py", "formats.py", "coco.py", "boxes.py")


def _source_hash() -> str:
    """Hash of the code that decides the rows, so the datasets cache is rebuilt when it changes."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _HASHED:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def register_builder() -> None:
    """Make ``datasets.load_dataset("qwen_instruct_det", ...)`` resolve to this package's builder."""
    import datasets

    major = int(datasets.__version__.split(".")[0])
    if major not in SUPPORTED_DATASETS_MAJOR:
        raise ImportError(
            f"qwen_instruct_det registers its builder through datasets {SUPPORTED_DATASETS_MAJOR} internals, "
            f"but datasets {datasets.__version__} is installed; install a supported release "
            "(pip install 'datasets>=5,<6') or use QwenInstructDet(...) directly."
        )
    try:
        packaged = importlib.import_module("datasets.packaged_modules")
        table = packaged._PACKAGED_DATASETS_MODULES
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"datasets {datasets.__version__} no longer has packaged_modules._PACKAGED_DATASETS_MODULES, "
            "so load_dataset('qwen_instruct_det', ...) cannot be registered; use "
            "qwen_instruct_det.QwenInstructDet(config_name=..., data_dir=...) directly and report this."
        ) from e
    table[NAME] = (MODULE, _source_hash())
