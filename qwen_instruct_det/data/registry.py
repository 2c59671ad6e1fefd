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
import importlib.util
import warnings
from pathlib import Path

NAME = "qwen_instruct_det"
MODULE = "qwen_instruct_det.data.builder"
SUPPORTED_DATASETS_MAJOR = (5,)
_PACKAGE = Path(__file__).parents[1]
BUILDER_FILE = "data/builder.py"


def builder_sources(root: Path = _PACKAGE, entry: str = BUILDER_FILE) -> list[Path]:
    """The package's source files that ``entry`` imports, directly or through each other, at any depth (sorted).

    Every import of a module of the package counts: relative at any level (``from ..formats import x``), absolute
    (``import qwen_instruct_det.data.coco``) and inside functions; a sub-package's ``__init__.py`` counts as it runs
    on import. The package's own ``__init__.py`` (the public names) is left out: it makes no rows.
    """
    package = root.name
    seen: set[Path] = set()
    todo = [root / entry]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        parts = list(path.relative_to(root).with_suffix("").parts)
        here = ".".join([package] + (parts[:-1] if parts[-1] == "__init__" else parts[:-1]))  # the package the file is in
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), here) if node.level else node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                todo += _module_files(root, name)
    return sorted(seen)


def _module_files(root: Path, name: str) -> list[Path]:
    """The files that importing ``name`` runs, when it is a module of the package at ``root`` (its parents' __init__ too)."""
    parts = name.split(".")
    if parts[0] != root.name:
        return []
    files = [root.joinpath(*parts[1:k], "__init__.py") for k in range(2, len(parts))]  # the sub-packages on the way
    files += [root.joinpath(*parts[1:]).with_suffix(".py"), root.joinpath(*parts[1:], "__init__.py")] if len(parts) > 1 else []
    return [f for f in files if f.is_file()]


@functools.cache
def _source_hash(root: Path = _PACKAGE, entry: str = BUILDER_FILE) -> str:
    """Hash of the code that decides the rows, so the datasets cache is rebuilt when it changes (once per process)."""
    digest = hashlib.sha256()
    for path in builder_sources(root, entry):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
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
