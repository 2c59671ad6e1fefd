"""Session fixtures: a small synthetic COCO-format data set and a private datasets cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

try:  # CI runs the same examples every time (a failure there reproduces); HYPOTHESIS_PROFILE=explore searches anew
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.register_profile("explore", derandomize=False, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:
    pass


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny models gain nothing from a second thread, and two threads per process oversubscribe a busy 2-core machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _private_hf_cache(tmp_path_factory):
    """Send every datasets/evaluate cache to a temporary folder for the whole session."""
    cache = tmp_path_factory.mktemp("hf_cache")
    import datasets

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache / "datasets"
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    os.environ["HF_EVALUATE_CACHE"] = str(cache / "evaluate")
    os.environ["HF_MODULES_CACHE"] = str(cache / "modules")
    yield cache
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """The synthetic data set: 60 train and 20 val images in the COCO 2017 layout."""
    from qwen_instruct_det import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), train=60, val=20, seed=3)


@pytest.fixture(scope="session")
def built(shapes_dir, tmp_path_factory):
    """All five configurations of the synthetic data set, loaded through load_dataset."""
    import datasets

    import qwen_instruct_det  # noqa: F401  (registers the builder)

    cache = tmp_path_factory.mktemp("built_cache")
    return {
        name: datasets.load_dataset("qwen_instruct_det", name, data_dir=str(shapes_dir), cache_dir=str(cache))
        for name in ("detection", "count", "full_region", "partial_region", "none_region")
    }


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tiny filesystem (a tmpfs of 64 KiB): writing more fills the disk for real. Needs mount rights."""
    import shutil
    import subprocess

    folder = tmp_path / "small_disk"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk path is not exercised")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
