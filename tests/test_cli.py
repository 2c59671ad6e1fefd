import json
import re

import pytest

from qwen_instruct_det.commands.cli import main


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


def test_every_builder_option_is_a_flag_of_build_and_export_swift():
    from qwen_instruct_det.commands.cli import make_parser
    from qwen_instruct_det.data.builder import option_fields

    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    options = {f.name for f in option_fields()}
    assert {"box_format", "min_pixels", "max_pixels", "resize_factor", "subset", "categories", "annotation_files"} <= options
    for command in ("build", "export-swift"):
        flags = {a.dest for a in sub[command]._actions}
        assert options <= flags, options - flags


def test_pairs_and_budget_flags_reach_the_builder(tmp_path):
    from qwen_instruct_det import make_synthetic_coco

    data = make_synthetic_coco(tmp_path / "d", train=4, val=0, seed=2)
    jsonl = tmp_path / "q25.jsonl"
    args = ["export-swift", str(tmp_path), "--out", str(jsonl), "--annotation_files", f"train={data}/annotations/instances_train2017.json",
            "--image_dirs", f"train={data}/train2017", "--box_format", "qwen2_5", "--max_pixels", "12544", "--cache_dir", str(tmp_path / "c")]
    assert main(args) == 0
    from PIL import Image

    from qwen_instruct_det.budget import smart_resize

    checked = 0
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        w, h = Image.open(record["images"][0]).size
        rh, rw = smart_resize(h, w, max_pixels=12544)
        for item in json.loads(record["messages"][1]["content"]):
            x1, y1, x2, y2 = item["bbox_2d"]
            assert 0 <= x1 < x2 <= rw and 0 <= y1 < y2 <= rh  # pixels of the image resized to the 12544-pixel budget
            checked += 1
    assert checked >= 3 and rw * rh <= 12544


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["build", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no COCO annotation file found" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.jsonl" in err


def test_train_checks_the_data_before_any_model_loads(tmp_path, capsys):
    code = main(["train", "--model_name_or_path", str(tmp_path / "no-such-model"), "--data_dir", str(tmp_path),
                 "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no COCO annotation file found" in err  # the data's problem, found before the (missing) model is touched


COMMANDS = ["synth", "build", "export-swift", "evaluate", "visualize", "predict", "merge", "push", "demo", "train", "grpo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_for_every_command(command, capsys):
    """`qid demo --help` crashed on a '%' in a help string; train and grpo printed 'usage: qid' without --config; every
    flag without '_' was listed twice ('--out OUT, --out OUT'), and no help showed a default."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: qid {command} ") and "(default:" in text
    assert not re.search(r"(--[\w-]+) ([A-Z_]+), \1 \2", text)  # a flag listed twice under one spelling
    if command in ("train", "grpo"):
        assert "--config CONFIG" in text and "YAML recipe" in text


def test_the_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(command in text for command in COMMANDS) and "--log-level" in text


def test_global_options_work_in_any_position_and_prefixes_are_not_guessed(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--train", "2", "--val", "1", "--log-level", "WARNING"]) == 0
    assert main(["--log-level", "WARNING", "synth", str(tmp_path / "b"), "--train", "2", "--val", "1"]) == 0
    assert main(["synth", str(tmp_path / "c"), "--log_level=ERROR", "--train", "2", "--val", "1"]) == 0
    with pytest.raises(SystemExit):  # '--data' was "ambiguous" between --data_dir and --data-dir; now it is not a flag at all
        main(["predict", "model", "--data", str(tmp_path / "a")])
    assert "unrecognized arguments: --data" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "d"), "--log-level", "LOUD"]) == 2
    assert "'LOUD' is not a level" in capsys.readouterr().err


def test_the_download_script_without_a_network_says_so_and_leaves_nothing(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "dataset_scripts" / "download_coco.py"
    env = {**os.environ, "QID_COCO_MIRROR": "http://127.0.0.1:9"}  # a closed port: what an offline machine meets
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "coco"), "--parts", "annotations"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "cannot reach 127.0.0.1:9" in out.stderr and "needs the internet" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "coco").exists()


def test_one_category_name_given_as_a_string_is_one_name(shapes_dir, tmp_path):
    from qwen_instruct_det.data.builder import QwenInstructDet

    builder = QwenInstructDet(config_name="count", data_dir=str(shapes_dir), cache_dir=str(tmp_path), categories="circle")
    assert builder.config.categories == ["circle"]  # was ['c', 'i', 'r', 'c', 'l', 'e']
    builder.download_and_prepare()
    assert builder.categories["train"] == ["circle"]


def test_evaluate_writes_each_report_beside_its_predictions_and_replaces_no_other(tmp_path, capsys):
    record = '{"image_id": %d, "detections": {"boxes": [], "labels": []}, "truth": {"boxes": [[0, 0, 4, 4]], "labels": ["a"]}}\n'
    (tmp_path / "preds_a.jsonl").write_text(record % 1)
    (tmp_path / "preds_b.jsonl").write_text(record % 2 + record % 3)
    assert main(["evaluate", str(tmp_path / "preds_a.jsonl")]) == 0
    assert main(["evaluate", str(tmp_path / "preds_b.jsonl")]) == 0  # main wrote both to ./report.json, b over a
    a = json.loads((tmp_path / "preds_a.report.json").read_text())
    b = json.loads((tmp_path / "preds_b.report.json").read_text())
    assert (a["images"], b["images"]) == (1, 2) and (tmp_path / "preds_a.report.md").is_file()
    assert main(["evaluate", str(tmp_path / "preds_a.jsonl"), "--out", str(tmp_path / "r")]) == 0
    assert main(["evaluate", str(tmp_path / "preds_b.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "is the report of" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["images"] == 1


def test_a_model_that_is_neither_a_folder_here_nor_on_the_hub_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "tiny-lora").mkdir(parents=True)
    # a mistyped local folder (it was "We couldn't connect to 'https://huggingface.co'")
    assert main(["predict", "outputs/tiny-lor", "--images", str(tmp_path), "--out", "p.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "outputs/tiny-lor: no such folder" in err and "huggingface.co" not in err and err.count("\n") == 1
    # a Hub-style name, offline: said to be neither here nor reachable
    assert main(["predict", "someone/no-such-model", "--images", str(tmp_path), "--out", "p.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "someone/no-such-model: no such folder here, and the Hub could not give it" in err and "Traceback" not in err
    assert main(["merge", "outputs/tiny-lor", "--out", "merged"]) == 2
    assert "outputs/tiny-lor: no such folder" in capsys.readouterr().err and not (tmp_path / "merged").exists()
