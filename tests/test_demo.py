"""`qid demo`: per-family defaults, and the whole path (data -> build -> tiny model -> train -> predict -> report) at a small size."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from qwen_instruct_det.commands import cli  # noqa: E402
from qwen_instruct_det.commands.demo import FAMILY_STEPS, DemoArguments  # noqa: E402


def test_steps_default_to_the_family_and_an_explicit_value_wins():
    assert {f: DemoArguments(family=f).max_steps for f in FAMILY_STEPS} == {"qwen2_vl": 1500, "qwen2_5_vl": 1200, "qwen3_vl": 1200}
    assert DemoArguments(family="qwen3_vl", max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="qwen2_vl"):
        DemoArguments(family="qwen4_vl")
    with pytest.raises(ValueError, match="curve_points"):
        DemoArguments(max_steps=5, curve_points=6)


def test_qid_demo_runs_the_whole_path_and_writes_its_report(tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="qwen_instruct_det")
    out = tmp_path / "demo"
    rc = cli.main(["demo", "--out", str(out), "--family", "qwen2_5_vl", "--train_images", "24", "--val_images", "6", "--max_steps", "6",
                   "--batch_size", "4", "--hidden_size", "32", "--layers", "1", "--vision_depth", "1", "--curve_points", "3"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 6 and set(report["det_iou50"]) >= {"f1", "precision", "recall", "mean_iou"}
    assert report["demo"]["arguments"]["max_steps"] == 6 and report["demo"]["arguments"]["family"] == "qwen2_5_vl"
    assert report["demo"]["train_rows"] == 24
    curve = report["demo"]["curve"]  # held-out scores at steps 2, 4 and 6; the last is the final model's
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"] < curve[2]["train_seconds"] <= report["demo"]["seconds"]["train"]
    assert curve[-1]["f1"] == pytest.approx(report["det_iou50"]["f1"]) and curve[-1]["AP50"] == pytest.approx(report["coco_map"]["AP50"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all("detections" in r for r in records)
    assert (out / "pictures" / "grid.png").is_file() and (out / "model" / "qid_config.json").is_file()
    assert "F1@50 on 6 held-out images" in capsys.readouterr().out
    built = [r.getMessage() for r in caplog.records if "rows from" in r.getMessage()]
    assert [m.split(":")[0] for m in built] == ["detection/train", "detection/validation"]  # one build, each split once (was three)
    assert all("left out or changed: nothing" in m for m in built)  # not a line of mostly-zero counts
