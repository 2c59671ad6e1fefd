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


def test_upload_sends_the_staged_card_not_the_source_readme(model_dir, tmp_path, monkeypatch):
    sent = {}
    monkeypatch.setattr(hub, "upload", lambda folder, repo_id, **k: sent.update(folder=folder, repo_id=repo_id, **k) or "url")
    assert cli.main(["push", "model", str(model_dir), "--repo_id", "me/tiny", "--folder", str(tmp_path / "stage")]) == 0
    assert sent["repo_id"] == "me/tiny" and sent["folder"] == model_dir
    assert "library_name: transformers" in sent["extra_files"]["README.md"].read_text()
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
