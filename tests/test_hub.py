"""Publishing: the folder that would be uploaded is built locally, and nothing the user has is changed."""

from __future__ import annotations

import hashlib

import pytest

from qwen_instruct_det import hub
from qwen_instruct_det.commands import cli
from qwen_instruct_det.models import tiny as tiny_model
from qwen_instruct_det.models.config import QidModelConfig

pytest.importorskip("transformers")


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model saved as a plain folder, with a qid config and a README of the user's own."""
    out = tmp_path_factory.mktemp("model")
    cfg = tiny_model.TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vision_depth=1, vision_embed_dim=32)
    processor = tiny_model.build_processor(["circle square"], cfg)
    tiny_model.build_model(processor, cfg).save_pretrained(out)
    processor.save_pretrained(out)
    QidModelConfig(base_model="tiny", categories=["Traffic Light"]).save(out)
    (out / "README.md").write_text("my own notes\n")
    return out


def test_dry_run_writes_nothing_into_the_source_folder(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "upload", lambda *a, **k: pytest.fail("a dry run must not upload"))
    before = _tree(model_dir)
    assert cli.main(["push", "model", str(model_dir), "--dry_run", "--folder", str(tmp_path / "stage")]) == 0
    assert _tree(model_dir) == before
    card = (tmp_path / "stage" / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model: tiny" in card
    assert "nothing uploaded" in capsys.readouterr().out


def test_upload_sends_the_staged_folder_with_the_library_card(model_dir, tmp_path, monkeypatch):
    sent = {}
    monkeypatch.setattr(hub, "upload", lambda folder, repo_id, **k: sent.update(folder=folder, repo_id=repo_id, **k) or "url")
    assert cli.main(["push", "model", str(model_dir), "--repo_id", "me/tiny", "--folder", str(tmp_path / "stage")]) == 0
    assert sent["repo_id"] == "me/tiny" and sent["folder"] == tmp_path / "stage"
    assert "library_name: transformers" in (tmp_path / "stage" / "README.md").read_text()
    assert (model_dir / "README.md").read_text() == "my own notes\n"


@pytest.mark.parametrize("kind", ["adapter", "model"])
def test_push_refuses_a_folder_that_is_not_a_model_or_an_adapter(tmp_path, capsys, kind):
    (tmp_path / "notes.txt").write_text("x")
    assert cli.main(["push", kind, str(tmp_path), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert f"not a {kind} folder" in err and ("adapter_config.json" if kind == "adapter" else "config.json") in err


def test_push_adapter_refuses_a_model_folder(model_dir, capsys):
    assert cli.main(["push", "adapter", str(model_dir), "--dry_run"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_resume_keeps_every_good_record_and_sets_bad_lines_aside(tmp_path):
    import json

    from qwen_instruct_det.models.inference import done_ids

    path = tmp_path / "preds.jsonl"
    good = [{"image_id": i, "detections": {"boxes": [], "labels": []}} for i in (1, 2, 3)]
    path.write_text(json.dumps(good[0]) + "\n" + '{"image_id": 9, "detec\n' + "\n" + json.dumps(good[1]) + "\n" + json.dumps(good[2]))
    assert done_ids(path) == {1, 2, 3}
    assert [json.loads(line)["image_id"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert path.read_text().endswith("\n")  # the next record starts on its own line
    rejected = [json.loads(line) for line in (tmp_path / "preds.jsonl.rejected").read_text().splitlines()]
    assert rejected == [{"line": 2, "text": '{"image_id": 9, "detec'}]
    assert done_ids(path) == {1, 2, 3}  # a second resume finds a clean file


def test_predict_refuses_an_out_file_that_is_not_predictions(tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\nimportant\n")
    code = cli.main(["predict", str(tmp_path / "no-model"), "--data_dir", str(tmp_path), "--out", str(notes)])
    assert code == 2 and "no prediction record" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\nimportant\n"


# ---------------------------------------------------------------- what a model repo receives


@pytest.fixture
def training_output(model_dir, tmp_path):
    """A training output as the trainer leaves it: the model, its pickled arguments, and a checkpoint with optimizer state."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(model_dir, out)
    (out / "training_args.bin").write_bytes(b"pickled arguments")
    (out / "training_args.json").write_text("{}")
    checkpoint = out / "checkpoint-6"
    checkpoint.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"):
        (checkpoint / name).write_bytes(b"x")
    return out


def test_a_model_push_sends_only_what_a_model_repo_holds(training_output, tmp_path, capsys):
    assert cli.main(["push", "model", str(training_output), "--dry_run", "--folder", str(tmp_path / "stage")]) == 0
    printed = capsys.readouterr().out
    files = hub.upload_plan(tmp_path / "stage")  # the commit huggingface_hub would make of the staged folder, offline
    assert files == sorted(files) and "README.md" in files and "qid_config.json" in files and "training_args.json" in files
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith(".bin") or f.startswith("checkpoint-") or f.endswith((".pt", ".pth"))]
    assert all(f"  {name}" in printed for name in files) and f"{len(files)} files would be sent" in printed
    assert (tmp_path / "stage" / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    with_checkpoints = hub.model_files(training_output, include_checkpoints=True)
    assert "checkpoint-6/optimizer.pt" in with_checkpoints and not [f for f in with_checkpoints if f.endswith("training_args.bin")]


def test_an_adapter_push_lists_the_adapter_files(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "qid_config.json", "training_args.json", "tokenizer.json",
                 "processor_config.json", "chat_template.jinja", "training_args.bin"):
        (adapter / name).write_text("{}")
    assert cli.main(["push", "adapter", str(adapter), "--dry_run", "--folder", str(tmp_path / "stage")]) == 0
    assert hub.upload_plan(tmp_path / "stage") == ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                                                   "processor_config.json", "qid_config.json", "tokenizer.json", "training_args.json"]


# ---------------------------------------------------------------- the dataset folder


def _rows(ds):
    return [{k: v for k, v in row.items() if k != "images"} for row in ds]


def test_the_dataset_folder_is_sharded_and_loads_exactly_the_built_rows(shapes_dir, tmp_path):
    import datasets

    from qwen_instruct_det.data.splits import load_split

    folder = hub.dataset_folder(tmp_path / "repo", configs=["partial_region", "count"], data_dir=str(shapes_dir), cache_dir=str(tmp_path / "c"),
                                repo_id="me/shapes", max_shard_bytes=100_000, batch_rows=16)
    shards = sorted(p.name for p in (folder / "partial_region").glob("train-*.parquet"))
    assert len(shards) > 1 and shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    assert all(p.stat().st_size < 100_000 * 2 for p in (folder / "partial_region").glob("*.parquet"))  # a shard: the limit plus a batch
    built = load_split("partial_region", "train", cache_dir=str(tmp_path / "c"), data_dir=str(shapes_dir))
    loaded = datasets.load_dataset(str(folder), "partial_region", split="train", cache_dir=str(tmp_path / "c2"))
    assert _rows(loaded) == _rows(built)
    streamed = datasets.load_dataset(str(folder), "partial_region", split="train", streaming=True)
    assert _rows(streamed) == _rows(built)
    raw = loaded.cast_column("images", datasets.List(datasets.Image(decode=False)))
    on_disk = built.cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert [r["images"][0]["bytes"] for r in raw.select(range(5))] == [open(r["images"][0]["path"], "rb").read() for r in on_disk.select(range(5))]
    assert all("/" not in r["images"][0]["path"] for r in raw.select(range(5)))  # file names only: no local folder is published
    sizes = hub.folder_summary(folder)
    assert sizes["configs"]["partial_region"]["rows"]["train"] == len(built)
    assert sizes["total_bytes"] == sum(p.stat().st_size for p in folder.rglob("*.parquet"))
    card = (folder / "README.md").read_text()
    assert 'load_dataset("me/shapes", "partial_region")' in card and "path: partial_region/train-*.parquet" in card
    assert "`circle`" in card and "min_pixels=3136" in card and '"box_format": "qwen2"' in card and "images_with_crowd" in card


def test_a_folder_that_is_not_ours_is_not_replaced(shapes_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="is not a folder qid wrote"):
        hub.dataset_folder(mine, configs=["count"], data_dir=str(shapes_dir), cache_dir=str(tmp_path / "c"))
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_rerun_leaves_no_stale_file(shapes_dir, tmp_path):
    folder = hub.dataset_folder(tmp_path / "repo", configs=["count", "none_region"], data_dir=str(shapes_dir), cache_dir=str(tmp_path / "c"))
    assert (folder / "none_region").is_dir()
    hub.dataset_folder(folder, configs=["count"], data_dir=str(shapes_dir), cache_dir=str(tmp_path / "c"))
    assert not (folder / "none_region").exists() and "none_region" not in (folder / "README.md").read_text()
    assert not list(tmp_path.glob(".repo.incomplete-*"))


def test_a_full_disk_during_a_push_says_so_with_the_folder_and_leaves_nothing_to_upload(shapes_dir, small_disk, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # the build fits; the Parquet folder does not
    folder = small_disk / "repo"
    assert cli.main(["push", "dataset", str(shapes_dir), "--dry_run", "--folder", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and str(folder) in err
    assert "unexpected" not in err and "Errno" not in err
    assert not folder.exists() or not (folder / "README.md").exists()  # no card: nothing reads as a folder to upload
    assert not list(small_disk.rglob("*.parquet"))  # no torn shard left behind


@pytest.mark.parametrize("command", ["push", "build"])
def test_a_killed_run_leaves_the_old_folder_whole(shapes_dir, tmp_path, command):
    """A kill mid-write left the old card, new Parquet for some configurations, a torn file and old files for the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "folder"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    argv = {"push": ["push", "dataset", str(shapes_dir), "--dry_run", "--folder", str(target), "--max_shard_mb", "0"],
            "build": ["build", str(shapes_dir), "--out", str(target)]}[command]
    first = subprocess.run([sys.executable, "-m", "qwen_instruct_det", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(target)
    proc = subprocess.Popen([sys.executable, "-m", "qwen_instruct_det", *argv, *(["--subset", "30"] if command == "build" else [])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.suffix in (".parquet", ".arrow") for p in tmp_path.glob(".folder.incomplete-*/**/*")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".folder.incomplete-*")), "killed before it wrote anything: the test proves nothing"
    assert _tree(target) == before  # the previous folder, whole
    again = subprocess.run([sys.executable, "-m", "qwen_instruct_det", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(tmp_path.glob(".folder.incomplete-*"))  # the leftovers of the killed run are gone


def test_check_files_false_never_embeds_a_file_that_is_not_an_image_of_the_folder(shapes_dir, tmp_path):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    ann = data / "annotations" / "instances_train2017.json"
    coco = json.loads(ann.read_text())
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    (data / "train2017" / coco["images"][0]["file_name"]).unlink()
    (data / "train2017" / coco["images"][0]["file_name"]).symlink_to(secret)  # inside by name, elsewhere in fact
    ann.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"resolves to .*secret\.txt, outside the image folder"):
        hub.dataset_folder(tmp_path / "repo", configs=["count"], data_dir=str(data), cache_dir=str(tmp_path / "c"), check_files=False)
    (data / "train2017" / coco["images"][0]["file_name"]).unlink()
    (data / "train2017" / coco["images"][0]["file_name"]).write_text("not an image at all")
    with pytest.raises(ValueError, match="is not an image file"):
        hub.dataset_folder(tmp_path / "repo", configs=["count"], data_dir=str(data), cache_dir=str(tmp_path / "c2"), check_files=False)
    assert not (tmp_path / "repo").exists()
