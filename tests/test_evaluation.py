"""COCO mAP against pycocotools itself, the evaluate module, the report and the pictures."""

from __future__ import annotations

import contextlib
import doctest
import functools
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen_instruct_det.commands.cli import main
from qwen_instruct_det.eval.coco_map import COCO_STATS, coco_map
from qwen_instruct_det.eval.coco_map import coco_map as _coco_map
from qwen_instruct_det.eval.report import evaluate_records

ROOT = Path(__file__).resolve().parents[1]


def _gt_and_detections(shapes_dir, seed=0):
    ann = shapes_dir / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    rng = np.random.default_rng(seed)
    results, references, predictions = [], [], []
    by_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    for image_id, anns in by_image.items():
        ref = {"image_id": image_id, "boxes": [], "labels": [], "iscrowd": [], "area": []}
        pred = {"boxes": [], "labels": [], "scores": []}
        for a in anns:
            x, y, w, h = a["bbox"]
            ref["boxes"].append([x, y, x + w, y + h])
            ref["labels"].append(names[a["category_id"]])
            ref["iscrowd"].append(bool(a["iscrowd"]))
            ref["area"].append(a["area"])
            if rng.random() < 0.8:  # found, with jitter; sometimes the wrong class
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                box = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
                cat = a["category_id"] if rng.random() < 0.9 else data["categories"][0]["id"]
                score = float(rng.random())
                results.append({"image_id": image_id, "category_id": cat, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
                pred["boxes"].append(box)
                pred["labels"].append(names[cat])
                pred["scores"].append(score)
        references.append(ref)
        predictions.append(pred)
    return ann, results, predictions, references


BACKENDS = ["pycocotools", pytest.param("faster_coco_eval", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("faster_coco_eval") is None, reason="faster-coco-eval is not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_map_equals_pycocotools(shapes_dir, backend):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, results, predictions, references = _gt_and_detections(shapes_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = [c["name"] for c in sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])]
    ours = coco_map(predictions, references, categories=names, backend=backend)
    assert list(ours) == list(COCO_STATS)
    assert 0.3 < ours["AP50"] < 1.0
    if backend == "pycocotools":
        assert [ours[k] for k in COCO_STATS] == [float(v) for v in ev.stats]  # to the last digit
    else:  # the same algorithm in C++: the same numbers but for the order of float sums
        assert [ours[k] for k in COCO_STATS] == pytest.approx([float(v) for v in ev.stats], abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_map_scores_rank_detections(backend):
    coco_map = functools.partial(_coco_map, backend=backend)
    ref = [{"boxes": [[0, 0, 10, 10]], "labels": ["a"]}]
    # a wrong box with a high score and the right one with a low score rank below the reverse
    good = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": ["a", "a"], "scores": [0.9, 0.1]}]
    bad = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": ["a", "a"], "scores": [0.1, 0.9]}]
    assert coco_map(good, ref)["AP50"] > coco_map(bad, ref)["AP50"]
    assert coco_map(good, ref)["AP50"] == pytest.approx(1.0)
    assert coco_map([{"boxes": [], "labels": []}], ref)["AP"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_map_with_nothing_to_find_is_zero_however_it_comes(backend):
    """No truth at all, or only crowd regions: nothing to find either way (COCOeval says -1 for the second: undefined)."""
    coco_map = functools.partial(_coco_map, backend=backend)
    pred = [{"boxes": [[0, 0, 10, 10]], "labels": ["a"]}]
    no_truth = coco_map(pred, [{"boxes": [], "labels": []}])
    only_crowd = coco_map(pred, [{"boxes": [[50, 50, 60, 60]], "labels": ["a"], "iscrowd": [1]}])
    assert no_truth == only_crowd == dict.fromkeys(no_truth, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_map_compares_labels_canonically_and_keeps_the_category_order(shapes_dir, backend):
    coco_map = functools.partial(_coco_map, backend=backend)
    _, _, predictions, references = _gt_and_detections(shapes_dir)
    names = [c["name"] for c in sorted(json.loads((shapes_dir / "annotations" / "instances_train2017.json").read_text())["categories"],
                                       key=lambda c: c["id"])]
    exact = coco_map(predictions, references, categories=names)
    respelled = [dict(p, labels=[f' "{label.upper()}" ' for label in p["labels"]]) for p in predictions]
    assert coco_map(respelled, references, categories=[name.title() for name in names]) == exact  # to the last digit
    ref = [{"boxes": [[0, 0, 10, 10]], "labels": ["Traffic Light"]}]
    assert coco_map([{"boxes": [[0, 0, 10, 10]], "labels": ["traffic light"]}], ref)["AP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"categories name 'cat' twice"):
        coco_map(ref, ref, categories=["Cat", "cat"])


def test_coco_map_names_wrong_inputs():
    good = [{"boxes": [[0, 0, 10, 10]], "labels": ["a"]}]
    with pytest.raises(ValueError, match=r"predictions\[0\] has no \['boxes', 'labels'\]"):
        coco_map([{"bbox": [[0, 0, 10, 10]], "label": ["a"]}], good)
    with pytest.raises(ValueError, match=r"predictions\[0\] has scores \[0.9, 0.1\] for 1 boxes"):
        coco_map([{"boxes": [[0, 0, 10, 10]], "labels": ["a"], "scores": [0.9, 0.1]}], good)
    with pytest.raises(ValueError, match=r"references\[0\] has a box that is not finite"):
        coco_map(good, [{"boxes": [[0, 0, float("inf"), 10]], "labels": ["a"]}])
    with pytest.raises(ValueError, match=r"references\[0\] has area"):
        coco_map(good, [{"boxes": [[0, 0, 10, 10]], "labels": ["a"], "area": []}])
    with pytest.raises(ValueError, match=r"references\[0\] has a box with x2 < x1 or y2 < y1"):
        coco_map(good, [{"boxes": [[100, 100, 20, 30]], "labels": ["a"]}])
    # numpy columns and an unknown image_id are read as they are
    crowd = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 90, 90]]), "labels": ["a", "a"], "iscrowd": np.array([0, 1]), "image_id": None}]
    on_crowd = [{"boxes": np.array([[0, 0, 10, 10], [30, 30, 40, 40]]), "labels": ["a", "a"], "scores": np.array([0.5, 0.9])}]
    assert coco_map(on_crowd, crowd)["AP50"] == pytest.approx(1.0)  # the box on the crowd region is ignored


def test_package_exports_coco_map_without_importing_torch():
    code = ("import sys, qwen_instruct_det as q; from qwen_instruct_det.eval.coco_map import coco_map; "
            "assert q.coco_map is coco_map and 'Detections' in q.__all__ and 'coco_map' in q.__all__; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)


def test_evaluate_module_offline(monkeypatch):
    import evaluate

    monkeypatch.chdir(ROOT)
    det = evaluate.load("./metrics/det_iou50")
    p = [{"boxes": [[0, 0, 10, 10]], "labels": ["a"], "unparsed": 2}]
    r = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": ["a", "a"]}]
    direct = det.compute(predictions=p, references=r)
    assert (direct["tp"], direct["fp"], direct["fn"]) == (1, 0, 1)
    det.add_batch(predictions=p, references=r)
    det.add_batch(predictions=p, references=[dict(r[0], iscrowd=[False, True])])
    batched = det.compute(matching="hungarian")
    assert (batched["tp"], batched["fn"]) == (2, 1)
    assert batched["per_class"]["a"]["recall"] == pytest.approx(2 / 3)


def test_evaluate_module_names_wrong_inputs(monkeypatch):
    import evaluate

    monkeypatch.chdir(ROOT)
    det = evaluate.load("./metrics/det_iou50")
    good = {"boxes": [[0, 0, 10, 10]], "labels": ["a"]}
    with pytest.raises(ValueError, match=r"predictions\[1\] has no \['boxes', 'labels'\].*'labels'.*'scores'"):
        det.compute(predictions=[good, {"bbox": [[0, 0, 10, 10]], "label": ["a"]}], references=[good, good])
    with pytest.raises(ValueError, match=r"references\[0\] is a list.*objects"):  # a data set row's own objects
        det.compute(predictions=[good], references=[[{"bbox": [0, 0, 10, 10], "category": "a"}]])
    with pytest.raises(ValueError, match=r"references\[0\] has no \['boxes'\]"):
        det.compute(predictions=[good], references=[{"labels": ["a"]}])
    with pytest.raises(ValueError, match=r"references\[0\] has a box that is not finite"):
        det.compute(predictions=[good], references=[{"boxes": [[0, 0, float("nan"), 10]], "labels": ["a"]}])
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \(0, 1\]"):
        det.compute(predictions=[good], references=[good], iou_threshold=0)
    with pytest.raises(ValueError, match=r"takes the options \['iou_threshold', 'matching'\], got \['iou_thresh'\]"):
        det.compute(predictions=[good], references=[good], iou_thresh=0.5)
    # errors store nothing, and batches count images across calls until compute
    det.add_batch(predictions=[good, good], references=[good, good])
    with pytest.raises(ValueError, match=r"predictions\[3\] has 1 boxes and 2 labels"):
        det.add_batch(predictions=[good, {"boxes": [[0, 0, 1, 1]], "labels": ["a", "b"]}], references=[good, good])
    with pytest.raises(ValueError, match=r"references\[2\] has iscrowd"):
        det.add(prediction=good, reference=dict(good, iscrowd=[True, True]))
    det.add(prediction=good, reference=dict(good, labels=["A"]))
    out = det.compute()
    assert (out["tp"], out["fp"], out["fn"], list(out["per_class"])) == (3, 0, 0, ["a"])
    with pytest.raises(ValueError, match=r"predictions\[0\]"):  # counting starts again after compute
        det.add(prediction={"boxes": None, "labels": []}, reference=good)


def test_metric_folder_lists_what_it_imports():
    from evaluate.loading import get_imports

    module = ROOT / "metrics" / "det_iou50" / "det_iou50.py"
    imports = {name for kind, name, *_ in get_imports(str(module)) if kind == "library"}
    assert imports == {"datasets", "evaluate", "qwen_instruct_det"}
    lines = [line.split("#")[0].strip() for line in (module.parent / "requirements.txt").read_text().splitlines()]
    required = {re.split(r"[<>=!~\[; ]", line)[0] for line in lines if line}
    assert imports <= required
    assert not [line for line in module.read_text().splitlines() if line.startswith("import ") and "," in line]


@pytest.mark.parametrize("source", ["metrics/det_iou50/det_iou50.py", "metrics/det_iou50/README.md"])
def test_documented_examples_run(monkeypatch, source):
    monkeypatch.chdir(ROOT)
    text = (ROOT / source).read_text()
    if source.endswith(".py"):
        text = text.split('_KWARGS_DESCRIPTION = """', 1)[1].split('"""', 1)[0]
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {}, source, source, 0)
    assert test.examples, f"{source} has no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0


def _predictions_file(shapes_dir, path):
    _, _, predictions, references = _gt_and_detections(shapes_dir, seed=1)
    data = json.loads((shapes_dir / "annotations" / "instances_train2017.json").read_text())
    files = {im["id"]: str(shapes_dir / "train2017" / im["file_name"]) for im in data["images"]}
    with open(path, "w") as f:
        for p, r in zip(predictions, references):
            f.write(json.dumps({"image_id": r["image_id"], "image": files[r["image_id"]], "text": "",
                                "detections": p, "truth": r, "unparsed": 1, "truncated": False}) + "\n")
    return predictions, references


def test_evaluate_command_writes_the_report(shapes_dir, tmp_path, capsys):
    preds, refs = _predictions_file(shapes_dir, tmp_path / "p.jsonl")
    assert main(["evaluate", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    expected = evaluate_records([{"detections": p, "truth": r} for p, r in zip(preds, refs)])
    assert report["det_iou50"]["f1"] == pytest.approx(expected["det_iou50"]["f1"])
    assert report["parsing"]["unparsed_fragments"] == len(refs)
    assert "| **all** |" in (tmp_path / "r" / "report.md").read_text()
    assert "COCO mAP" in capsys.readouterr().out


def test_evaluate_command_names_a_broken_line(tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"detections": {"boxes": [], "labels": []}, "truth": {"boxes": [], "labels": []}}\n{"detections": ')
    assert main(["evaluate", str(bad)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


def test_evaluate_command_names_a_repeated_image(tmp_path, capsys):
    record = '{"image_id": %d, "detections": {"boxes": [], "labels": []}, "truth": {"boxes": [], "labels": []}}\n'
    path = tmp_path / "p.jsonl"
    path.write_text(record % 7 + record % 8 + record % 7)
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 3 repeats image_id 7 of line 1" in err and "delete one of the two lines" in err


def test_visualize_draws_boxes_and_a_grid(shapes_dir, tmp_path):
    _predictions_file(shapes_dir, tmp_path / "p.jsonl")
    assert main(["visualize", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "pics"), "--limit", "4"]) == 0
    pngs = sorted((tmp_path / "pics").glob("*.png"))
    assert len(pngs) == 5
    grid = Image.open(tmp_path / "pics" / "grid.png")
    single = Image.open(pngs[0])
    assert grid.width > single.width and min(single.size) >= 384
    # truth boxes are drawn in green: the picture holds pixels of that colour
    arr = np.asarray(single.convert("RGB")).reshape(-1, 3)
    assert np.any(np.all(arr == (40, 220, 90), axis=1))
