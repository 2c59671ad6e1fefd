import json

from qwen_instruct_det.cli import main


def test_synth_build_export(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert main(["synth", str(data), "--train", "12", "--val", "4"]) == 0
    assert (data / "annotations" / "instances_val2017.json").is_file()
    assert len(list((data / "train2017").glob("*.jpg"))) == 12

    out = tmp_path / "built"
    assert main(["build", str(data), "--config", "count,none_region", "--out", str(out), "--cache_dir", str(tmp_path / "c")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["configs"]) == {"count", "none_region"}
    assert summary["configs"]["none_region"]["rows"]["validation"] >= 3
    assert list((out / "count").glob("*.arrow"))
    printed = capsys.readouterr().out
    assert "none_region" in printed and "rows/s" in printed

    jsonl = tmp_path / "det.jsonl"
    assert main(["export-swift", str(data), "--config", "detection", "--out", str(jsonl)]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 12
    assert records[0]["messages"][0]["content"].startswith("<image>Draw the bounding box")
    assert records[0]["images"][0].endswith(".jpg")


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["build", str(tmp_path), "--config", "boxes"]) == 2
    assert "Unknown configuration" in capsys.readouterr().err
