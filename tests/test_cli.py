import json

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
