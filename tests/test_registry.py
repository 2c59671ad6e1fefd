"""Importing the package never breaks: the registration warns and skips, and the data and metric paths need no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from qwen_instruct_det.data import registry as _registry

ROOT = Path(__file__).resolve().parents[1]


def test_registration_warns_and_skips_when_the_table_is_gone(monkeypatch):
    import datasets.packaged_modules as packaged

    monkeypatch.delattr(packaged, "_PACKAGED_DATASETS_MODULES")
    with pytest.warns(UserWarning, match="QwenInstructDet"):
        assert _registry.register_builder() is False


def test_registration_warns_and_skips_on_another_datasets_major(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "__version__", "7.0.0")
    with pytest.warns(UserWarning, match="datasets 7.0.0"):
        assert _registry.register_builder() is False


def test_registration_succeeds_here():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _registry.register_builder() is True


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_hashed_sources_follow_imports_at_any_depth(tmp_path):
    """Nested packages, imports two levels up, absolute imports and imports inside functions all reach the key."""
    root = tmp_path / "pkg"
    _write(root, {
        "__init__.py": "from .hub import push\n",  # the package's own __init__ re-exports; it makes no rows
        "hub.py": "def push(): pass\n",
        "boxes.py": "X = 1\n",
        "formats/__init__.py": "from .qwen2 import Q\n",
        "formats/qwen2.py": "from ..boxes import X\nQ = X\n",
        "data/__init__.py": "",
        "data/builder.py": "from . import tasks\nfrom ..formats import Q\nimport pkg.data.coco\n",
        "data/tasks.py": "def f():\n    from .regions import r\n    return r\n",
        "data/regions.py": "r = 1\n",
        "data/coco.py": "c = 1\n",
    })
    found = {p.relative_to(root).as_posix() for p in _registry.builder_sources(root, "data/builder.py")}
    assert found == {"boxes.py", "formats/__init__.py", "formats/qwen2.py", "data/__init__.py", "data/builder.py", "data/tasks.py",
                     "data/regions.py", "data/coco.py"}


ROW_MAKERS = ("boxes.py", "budget.py", "formats/__init__.py", "formats/base.py", "formats/qwen2.py", "formats/json_boxes.py",
              "formats/qwen2_5.py", "formats/qwen3.py", "data/__init__.py", "data/builder.py", "data/coco.py", "data/images.py",
              "data/objects.py", "data/regions.py", "data/tasks.py", "data/registry.py", "data/records.py")


def test_hashed_sources_are_what_the_builder_imports():
    names = {p.relative_to(_registry._PACKAGE).as_posix() for p in _registry.builder_sources()}
    assert set(ROW_MAKERS) <= names
    assert not {n for n in names if n.startswith(("train/", "models/", "commands/", "eval/", "hub/")) or n == "__init__.py"}


def test_a_change_to_any_module_that_shapes_rows_changes_the_key(tmp_path):
    """A copy of the package with one module touched hashes differently when that module makes rows, and the same otherwise."""
    import shutil

    copy = tmp_path / "qwen_instruct_det"
    shutil.copytree(_registry._PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    entry = _registry.BUILDER_FILE
    before = _registry._source_hash(copy, entry)
    for name in ROW_MAKERS + ("hub/folders.py", "train/sft.py", "commands/cli.py"):
        path = copy / name
        text = path.read_text()
        path.write_text(text + "\n# touched\n")
        _registry._source_hash.cache_clear()
        changed = _registry._source_hash(copy, entry) != before
        path.write_text(text)
        assert changed == (name in ROW_MAKERS), name


def test_data_and_metric_paths_work_without_torch(tmp_path):
    code = textwrap.dedent(f"""
        import importlib.abc, importlib.machinery, sys

        class NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            # torch and the training stack fail to import, as on a machine without them

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "transformers", "trl", "peft"):
                    return importlib.machinery.ModuleSpec(name, self)
                return None

            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked by the test)")

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, NotInstalled())
        import datasets, evaluate
        import qwen_instruct_det as qid
        data = qid.make_synthetic_coco({str(tmp_path / 'shapes')!r}, train=6, val=2, seed=1)
        ds = datasets.load_dataset("qwen_instruct_det", "count", data_dir=str(data), cache_dir={str(tmp_path / 'cache')!r})
        det = evaluate.load({str(ROOT / 'metrics' / 'det_iou50')!r})
        truth = [{{"boxes": [o["bbox"] for o in r["objects"]], "labels": [o["category"] for o in r["objects"]]}} for r in ds["train"]]
        scores = det.compute(predictions=truth, references=truth)
        assert scores["f1"] == 1.0, scores
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("ok", len(ds["train"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")


def test_load_dataset_does_not_list_the_data_dir(shapes_dir, tmp_path, monkeypatch):
    import datasets
    from datasets import load

    monkeypatch.setattr(load, "get_data_patterns", lambda *a, **k: pytest.fail("listed every file under data_dir"))
    ds = datasets.load_dataset("qwen_instruct_det", "count", data_dir=str(shapes_dir), cache_dir=str(tmp_path))
    assert set(ds) == {"train", "validation"} and ds["train"].num_rows > 0


def test_other_packaged_builders_still_resolve_their_files(tmp_path):
    import json

    import datasets

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"a": i}) for i in range(3)))
    ds = datasets.load_dataset("json", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert ds["train"]["a"] == [0, 1, 2]


def test_the_builder_made_directly_caches_under_the_code_that_made_the_rows(shapes_dir, tmp_path, monkeypatch):
    """qid train, demo and predict build through QwenInstructDet(...), not load_dataset: a library upgrade that changes the
    rows must not read the old Arrow files back from the cache."""
    from qwen_instruct_det.data.builder import QwenInstructDet

    def cache_dir():
        return QwenInstructDet(config_name="count", data_dir=str(shapes_dir), cache_dir=str(tmp_path)).cache_dir

    before = cache_dir()
    assert _registry._source_hash() in before
    monkeypatch.setattr(_registry, "_source_hash", lambda: "0" * 64)  # as if tasks.py had changed
    assert cache_dir() != before
