"""Registration of the builder with ``datasets`` under the name ``qwen_instruct_det``.

datasets 5 runs no dataset scripts; ``load_dataset(name)`` first looks the name up in
``datasets.packaged_modules._PACKAGED_DATASETS_MODULES`` (name -> module path and hash).
That table is private, so the registration checks the datasets major version and, when
it cannot register, warns and skips: importing the package never breaks, and
``QwenInstructDet(config_name=..., data_dir=...)`` works whatever datasets does.

For a packaged name, ``load_dataset`` also lists every file under ``data_dir`` to guess data
files before the builder runs (``PackagedDatasetModuleFactory.get_module``); on COCO's 123k
images that took minutes here, for a list this builder never reads (it reads the COCO layout
itself). So the registration also wraps that method for this one name: with no
``data_files`` it hands the builder an empty list instead. Other names are untouched.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import warnings
from pathlib import Path

NAME = "qwen_instruct_det"
MODULE = "qwen_instruct_det.builder"
SUPPORTED_DATASETS_MAJOR = (5,)
_PACKAGE = Path(__file__).parent


def builder_sources() -> list[Path]:
    """The package's source files that the builder imports, directly or through each other (sorted)."""
    seen: set[Path] = set()
    todo = [_PACKAGE / "builder.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                todo += [p for p in (_PACKAGE / f"{n.split('.')[0]}.py" for n in names) if p.is_file()]
    return sorted(seen)


@functools.cache
def _source_hash() -> str:
    """Hash of the code that decides the rows, so the datasets cache is rebuilt when it changes (once per process)."""
    digest = hashlib.sha256()
    for path in builder_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def register_builder() -> bool:
    """Make ``datasets.load_dataset("qwen_instruct_det", ...)`` resolve to this package's builder; False if it cannot."""
    import datasets

    fallback = "use qwen_instruct_det.QwenInstructDet(config_name=..., data_dir=...) directly"
    major = int(datasets.__version__.split(".")[0])
    if major not in SUPPORTED_DATASETS_MAJOR:
        warnings.warn(
            f"qwen_instruct_det registers load_dataset('qwen_instruct_det', ...) through datasets {SUPPORTED_DATASETS_MAJOR} "
            f"internals, but datasets {datasets.__version__} is installed; the name is not registered: {fallback}, "
            "or install a supported release (pip install 'datasets>=5,<6').",
            stacklevel=2,
        )
        return False
    try:
        table = importlib.import_module("datasets.packaged_modules")._PACKAGED_DATASETS_MODULES
    except (ImportError, AttributeError):
        warnings.warn(
            f"datasets {datasets.__version__} has no packaged_modules._PACKAGED_DATASETS_MODULES, so "
            f"load_dataset('qwen_instruct_det', ...) is not registered: {fallback}.",
            stacklevel=2,
        )
        return False
    table[NAME] = (MODULE, _source_hash())
    _skip_file_listing()
    return True


def _skip_file_listing() -> None:
    """Let ``load_dataset("qwen_instruct_det", data_dir=...)`` skip datasets' listing of every file under ``data_dir``."""
    try:
        from datasets import load
        from datasets.data_files import DataFilesDict

        factory = load.PackagedDatasetModuleFactory
        original = factory.get_module
    except (ImportError, AttributeError):  # the listing stays: slower on big folders, still correct
        return
    if getattr(original, "_qid_wrapped", False):
        return

    def get_module(self):
        if self.name != NAME or self.data_files is not None:
            return original(self)
        module_path, module_hash = load._PACKAGED_DATASETS_MODULES[NAME]
        return load.DatasetModule(module_path, module_hash, {"data_files": DataFilesDict(), "dataset_name": NAME})

    get_module._qid_wrapped = True
    factory.get_module = get_module
