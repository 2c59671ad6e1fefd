"""The built data sets, checked row by row against DESIGN.md's contracts."""

from __future__ import annotations

import json
import os
from collections import Counter

import datasets
import numpy as np
import pytest
from PIL import Image

from qwen_instruct_det import boxes as B
from qwen_instruct_det import parse_detections
from qwen_instruct_det.budget import smart_resize
from qwen_instruct_det.data import builder as builder_module
from qwen_instruct_det.data import splits
from qwen_instruct_det.data.builder import QwenInstructDet
from qwen_instruct_det.data.objects import TASKS

CONFIGS = ("detection", "count", "full_region", "partial_region", "none_region")


def _text(messages):
    return "".join(c["text"] or "" for m in messages for c in m["content"])


def _truth(shapes_dir, split="train"):
    data = json.loads((shapes_dir / "annotations" / f"instances_{split}2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image = {im["id"]: {"crowd": [], "objects": []} for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        key = "crowd" if a["iscrowd"] else "objects"
        by_image[a["image_id"]][key].append(([x, y, x + w, y + h], names[a["category_id"]]))
    return by_image


def test_registered_name_resolves_to_the_builder():
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    assert _PACKAGED_DATASETS_MODULES["qwen_instruct_det"][0] == "qwen_instruct_det.data.builder"


@pytest.mark.parametrize("name", CONFIGS)
def test_columns_and_types(built, name):
    ds = built[name]
    assert set(ds) == {"train", "validation"}
    assert ds["train"].features == builder_module.FEATURES
    row = ds["train"][0]
    assert row["task"] == name
    assert isinstance(row["images"][0], Image.Image)
    assert row["images"][0].size == (row["width"], row["height"])
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
    assert row["completion"][0]["role"] == "assistant"
    assert (row["region"] is None) == (name in ("detection", "count"))


def test_local_build_stores_paths_not_bytes(built, shapes_dir):
    ds = built["detection"]["train"].cast_column("images", datasets.List(datasets.Image(decode=False)))
    for image in ds[:5]["images"]:
        assert image[0]["bytes"] is None
        assert image[0]["path"].startswith(str(shapes_dir.resolve()))


def test_detection_parses_back_to_every_object(built, shapes_dir):
    truth = _truth(shapes_dir)
    ds = built["detection"]["train"]
    assert len(ds) == len(truth)
    for row in ds:
        parsed = parse_detections(_text(row["completion"]), width=row["width"], height=row["height"])
        want = truth[row["image_id"]]["objects"]
        assert sorted(parsed["labels"]) == sorted(label for _, label in want)
        assert len(row["objects"]) == len(want)
        step = np.array([row["width"], row["height"]] * 2) / 1000
        got = np.array(parsed["boxes"]).reshape(-1, 4)
        for box, label in want:
            same = [g for g, lab in zip(got, parsed["labels"]) if lab == label]
            assert min(np.abs(np.array(same) - box).max(axis=1) / step.max()) <= 1.0 + 1e-6


def test_detection_groups_categories_in_id_order_and_boxes_in_reading_order(built):
    order = {n: i for i, n in enumerate(["circle", "square", "triangle", "diamond", "plus sign"])}
    for row in built["detection"]["train"]:
        parsed = parse_detections(_text(row["completion"]), width=row["width"], height=row["height"])
        ranks = [order[label] for label in parsed["labels"]]
        assert ranks == sorted(ranks)
        for label in set(parsed["labels"]):
            tops = [(b[1], b[0]) for b, lab in zip(parsed["boxes"], parsed["labels"]) if lab == label]
            assert tops == sorted(tops)


def test_empty_images_say_there_are_none(built, shapes_dir):
    truth = _truth(shapes_dir)
    empty = [r for r in built["detection"]["train"] if not truth[r["image_id"]]["objects"]]
    assert empty, "the synthetic data set should hold images without objects"
    for row in empty:
        assert _text(row["completion"]) == "There are no objects from the COCO categories in the image."


def test_count_matches_objects_and_leaves_out_crowd_images(built, shapes_dir):
    truth = _truth(shapes_dir)
    ds = built["count"]["train"]
    crowd_images = {i for i, t in truth.items() if t["crowd"]}
    assert crowd_images, "the synthetic data set should hold crowd regions"
    assert {r["image_id"] for r in ds} == set(truth) - crowd_images
    for row in ds:
        want = Counter(label for _, label in truth[row["image_id"]]["objects"])
        text = _text(row["completion"])
        if not want:
            assert "no objects" in text
            continue
        got = dict(line.rsplit(": ", 1) for line in text.splitlines())
        assert {k: int(v) for k, v in got.items()} == dict(want)


def _region_rows(built, name):
    for row in built[name]["train"]:
        objects = np.array([o["bbox"] for o in row["objects"]], dtype=np.float64).reshape(-1, 4)
        region = np.array(row["region"], dtype=np.float64)
        yield row, objects, region, B.visible_fraction(objects, region[None])[:, 0]


def _answer_object(row, text):
    name = text.split('contains a "', 1)[1].split('"', 1)[0]
    return name


def test_full_region_contains_its_object_and_little_else(built):
    n = 0
    for row, _objects, _region, frac in _region_rows(built, "full_region"):
        text = _text(row["completion"])
        assert "fully contains" in text
        name = _answer_object(row, text)
        owner = int(np.argmax(frac))
        assert frac[owner] == pytest.approx(1.0, abs=1e-6)
        assert row["objects"][owner]["category"] == name
        others = np.delete(frac, owner)
        assert np.all(others <= 0.05 + 1e-6)
        assert row["visible_fraction"] == pytest.approx(1.0)
        n += 1
    assert n > 20


def test_partial_region_states_the_true_fraction(built):
    n = 0
    for row, _objects, _region, frac in _region_rows(built, "partial_region"):
        text = _text(row["completion"])
        percent = int(text.split("about ", 1)[1].split("%", 1)[0])
        owner = int(np.argmin(np.abs(frac - row["visible_fraction"])))
        true = frac[owner]
        assert 0.2 - 1e-6 <= true <= 0.8 + 1e-6
        assert percent == int(np.floor(true * 10 + 0.5)) * 10
        assert 20 <= percent <= 80
        assert row["objects"][owner]["category"] == _answer_object(row, text)
        assert np.all(np.delete(frac, owner) <= 0.05 + 1e-6)
        n += 1
    assert n > 20


def test_none_region_overlaps_no_box_crowd_included(built, shapes_dir):
    truth = _truth(shapes_dir)
    n = 0
    for row in built["none_region"]["train"]:
        region = np.array(row["region"], dtype=np.float64)[None]
        every = [b for b, _ in truth[row["image_id"]]["objects"] + truth[row["image_id"]]["crowd"]]
        if every:
            assert B.intersection(np.array(every), region).max() <= 1e-4
        assert "does not contain any object from the COCO categories" in _text(row["completion"])
        assert region[0, 2] > region[0, 0] and region[0, 3] > region[0, 1]
        n += 1
    assert n >= 50


def test_none_region_keeps_off_the_categories_a_filter_leaves_out(shapes_dir, tmp_path):
    """"No object from the COCO categories" must hold for every category of the file, not only the ones kept."""
    truth = _truth(shapes_dir)
    _, ds = _build(shapes_dir, tmp_path, "none_region", categories=["circle"], regions_per_object=3)
    n = 0
    for row in ds:
        region = np.array(row["region"], dtype=np.float64)[None]
        every = [b for b, _ in truth[row["image_id"]]["objects"] + truth[row["image_id"]]["crowd"]]
        if every:
            assert B.intersection(np.array(every), region).max() <= 1e-4, (row["image_id"], row["region"])
        n += 1
    assert n >= 50


@pytest.mark.parametrize("split, stem", [("train", "train"), ("validation", "val")])
def test_crowd_regions_are_the_files_crowd_annotations(shapes_dir, split, stem):
    """Rows leave crowd regions out (never targets); scoring reads them here, in the rows' frame."""
    truth = _truth(shapes_dir, stem)
    crowd = splits.crowd_regions(split, data_dir=str(shapes_dir))
    expected = {image_id: t["crowd"] for image_id, t in truth.items() if t["crowd"]}
    assert expected and set(crowd) == set(expected)
    for image_id, regions in expected.items():
        assert sorted(crowd[image_id]["labels"]) == sorted(name for _, name in regions)
        assert np.allclose(sorted(crowd[image_id]["boxes"]), sorted(box for box, _ in regions), atol=1e-3)
    circles = splits.crowd_regions(split, data_dir=str(shapes_dir), categories=["circle"])  # a filter keeps its own
    assert all(set(c["labels"]) == {"circle"} for c in circles.values())
    assert sum(len(c["labels"]) for c in circles.values()) == sum(name == "circle" for r in expected.values() for _, name in r)


def test_crowd_regions_are_in_the_frame_of_the_rows(tmp_path):
    """On photos stored turned (EXIF 6) the JSON's crowd boxes are on the stored pixels; the rows' boxes, and so the crowd
    regions scored against them, are on the displayed picture."""
    from qwen_instruct_det.data.synthetic import SynthOptions, make_synthetic_coco

    opts = SynthOptions(min_size=96, max_size=128, crowd_fraction=0.5, exif_fraction=1.0, exif_orientations=(6,))
    root = make_synthetic_coco(tmp_path / "turned", train=4, val=12, seed=2, options=opts)
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    crowd = splits.crowd_regions("validation", data_dir=str(root))
    stored = [a for a in data["annotations"] if a["iscrowd"]]
    assert stored and sum(len(c["boxes"]) for c in crowd.values()) == len(stored)
    for a in stored:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        shown = B.orient_boxes(np.array([[x, y, x + w, y + h]]), 6, width, height)[0].tolist()
        assert any(np.allclose(shown, box, atol=1e-3) for box in crowd[a["image_id"]]["boxes"]), (a["image_id"], shown)
        assert not np.allclose(shown, [x, y, x + w, y + h])  # turned: the two frames differ


@pytest.mark.parametrize("name", ["full_region", "partial_region", "none_region"])
def test_region_text_states_the_stored_region(built, name):
    for row in built[name]["train"]:
        grid = B.to_grid(np.array(row["region"], dtype=np.float64), row["width"], row["height"]).tolist()
        assert f"({grid[0]},{grid[1]}),({grid[2]},{grid[3]})" in _text(row["completion"])
        assert f"({grid[0]},{grid[1]}),({grid[2]},{grid[3]})" in _text(row["prompt"])


def _build(shapes_dir, tmp_path, name, **kwargs):
    builder = QwenInstructDet(config_name=name, data_dir=str(shapes_dir), cache_dir=str(tmp_path), **kwargs)
    builder.download_and_prepare()
    return builder, builder.as_dataset(split="train")


def test_same_seed_same_rows_other_seed_other_regions(shapes_dir, tmp_path):
    _, a = _build(shapes_dir, tmp_path / "a", "partial_region", seed=1)
    _, b = _build(shapes_dir, tmp_path / "b", "partial_region", seed=1)
    _, c = _build(shapes_dir, tmp_path / "c", "partial_region", seed=2)
    assert a.data.table.equals(b.data.table)
    assert a["region"] != c["region"]


def test_skips_are_counted(shapes_dir, tmp_path):
    builder, ds = _build(shapes_dir, tmp_path, "count")
    skipped = builder.skipped["train"]
    truth = _truth(shapes_dir)
    assert skipped["images_with_crowd"] == sum(1 for t in truth.values() if t["crowd"]) > 0
    assert skipped["crowd_annotations"] == sum(len(t["crowd"]) for t in truth.values())
    builder, ds = _build(shapes_dir, tmp_path, "full_region")
    n_objects = sum(len(t["objects"]) for t in truth.values())
    assert len(ds) + builder.skipped["train"]["objects_without_region"] == n_objects


def test_skip_counts_and_category_names_survive_the_cache(shapes_dir, tmp_path):
    """A configuration read back from the cache reports what its build left out and which classes its rows are about
    (main printed '-' for every skip column of a cached build, and the card said nothing was skipped)."""
    first, _ = _build(shapes_dir, tmp_path, "count", categories=["plus sign", "circle"])
    again, _ = _build(shapes_dir, tmp_path, "count", categories=["plus sign", "circle"])  # a new builder: read from the cache
    assert again.skipped == first.skipped and again.skipped["train"]["images_with_crowd"] > 0
    assert again.categories == first.categories == {"train": ["circle", "plus sign"], "validation": ["circle", "plus sign"]}
    assert splits.category_names("train", data_dir=str(shapes_dir), categories=["plus sign", "circle"]) == ["circle", "plus sign"]


def test_options_subset_categories_keep_empty_name_regions(shapes_dir, tmp_path):
    _, ds = _build(shapes_dir, tmp_path / "s", "detection", subset=10, seed=5)
    assert len(ds) == 10
    _, ds = _build(shapes_dir, tmp_path / "c", "detection", categories=["circle", "plus sign"], keep_empty=False)
    assert all(o["category"] in ("circle", "plus sign") for r in ds for o in r["objects"])
    assert all(r["objects"] for r in ds)
    _, ds = _build(shapes_dir, tmp_path / "n", "none_region", display_name="Shapes", regions_per_object=3)
    assert "from the Shapes categories" in _text(ds[0]["completion"])
    assert Counter(ds["image_id"]).most_common(1)[0][1] == 3


@pytest.mark.parametrize("fmt", ["qwen2", "qwen2_5"])
def test_a_filtered_detection_prompt_names_only_the_kept_categories(shapes_dir, tmp_path, fmt):
    """The prompt listed all five names while the targets held two: the model was taught to ignore what it was asked for."""
    _, ds = _build(shapes_dir, tmp_path, "detection", categories=["plus sign", "circle"], list_categories=True, box_format=fmt)
    prompt = ds[0]["prompt"][0]["content"][1]["text"]
    assert ("circle, plus sign" in prompt) and "square" not in prompt and "triangle" not in prompt


@pytest.mark.parametrize("fmt", ["qwen2_5", "qwen3"])
def test_json_box_formats_round_trip(shapes_dir, tmp_path, fmt):
    _, ds = _build(shapes_dir, tmp_path, "detection", box_format=fmt, subset=15)
    for row in ds:
        w, h = row["width"], row["height"]
        text = _text(row["completion"])
        if not row["objects"]:
            continue
        assert text.startswith('[{"bbox_2d": [')
        input_size = smart_resize(h, w)[::-1] if fmt == "qwen2_5" else None
        parsed = parse_detections(text, width=w, height=h, box_format=fmt, input_size=input_size)
        truth = np.array([o["bbox"] for o in row["objects"]])
        step = (np.array([w / input_size[0], h / input_size[1]] * 2) if input_size else np.array([w, h] * 2) / 1000)
        got = np.array(parsed["boxes"])
        assert len(got) == len(truth)
        for box in truth:
            assert (np.abs(got - box) / step).max(axis=1).min() <= 1.0 + 1e-4


def test_unknown_config_lists_the_valid_ones(shapes_dir):
    with pytest.raises(ValueError, match="detection"):
        QwenInstructDet(config_name="boxes", data_dir=str(shapes_dir))


def test_an_edited_annotation_file_is_rebuilt_not_read_from_cache(shapes_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    _, before = _build(data, tmp_path / "cache", "detection")
    ann = data / "annotations" / "instances_train2017.json"
    content = json.loads(ann.read_text())
    content["images"] = content["images"][:10]
    keep = {im["id"] for im in content["images"]}
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] in keep]
    ann.write_text(json.dumps(content))
    _, after = _build(data, tmp_path / "cache", "detection")
    assert len(before) == 60 and len(after) == 10


def test_a_same_size_edit_with_the_time_restored_is_rebuilt(shapes_dir, tmp_path):
    import os
    import shutil

    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    ann = root / "annotations" / "instances_train2017.json"
    cache = str(tmp_path / "cache")
    first = splits.load_split("count", "train", cache_dir=cache, data_dir=str(root))
    stat = os.stat(ann)
    text = ann.read_text()
    edited = text.replace('"name": "circle"', '"name": "elcric"')  # same size, other content
    assert len(edited) == len(text) and edited != text
    ann.write_text(edited)
    os.utime(ann, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(ann).st_mtime_ns == stat.st_mtime_ns
    second = splits.load_split("count", "train", cache_dir=cache, data_dir=str(root))
    first_text, second_text = (" ".join(_text(m) for m in ds["completion"]) for ds in (first, second))
    assert "circle" in first_text and "circle" not in second_text and "elcric" in second_text


def test_each_annotation_file_is_read_once_per_build(shapes_dir, tmp_path, monkeypatch):
    from qwen_instruct_det.data import coco

    builder_module.clear_cache()
    calls = []
    real = coco.load_coco
    monkeypatch.setattr(coco, "load_coco", lambda path, *a, **k: calls.append(os.path.basename(path)) or real(path, *a, **k))
    for name in TASKS:
        b = QwenInstructDet(config_name=name, data_dir=str(shapes_dir), cache_dir=str(tmp_path))
        b.download_and_prepare()
    assert sorted(calls) == ["instances_train2017.json", "instances_val2017.json"]


@pytest.mark.parametrize("json_frame", ["stored", "displayed"])
def test_rows_describe_the_decoded_image_of_exif_photos(tmp_path, json_frame):
    """Photos with an EXIF orientation: width/height are the decoded size and each box covers its drawn shape there."""
    from qwen_instruct_det import make_synthetic_coco
    from qwen_instruct_det.data.synthetic import SynthOptions

    opts = SynthOptions(min_size=90, max_size=150, empty_fraction=0, crowd_fraction=0, textured_fraction=0, colour_by_class=True,
                        exif_fraction=0.7, exif_json_frame=json_frame)
    data = make_synthetic_coco(tmp_path / "exif", train=24, val=0, seed=5, options=opts)
    builder = QwenInstructDet(config_name="detection", data_dir=str(data), cache_dir=str(tmp_path / "c"), exif_frame=json_frame)
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    turned = 0
    for row in ds:
        image = row["images"][0]
        assert image.size == (row["width"], row["height"])
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        for obj in row["objects"]:
            x1, y1, x2, y2 = (int(round(v)) for v in obj["bbox"])
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            inside = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(inside - pixels[0, 0]).sum() > 60, (row["image_id"], obj)  # the shape's colour, not the background
    counts = builder.skipped["train"]
    turned = sum(v for k, v in counts.items() if k.startswith("exif_"))
    assert turned >= 8, counts


def test_an_image_whose_size_matches_neither_frame_stops_the_build(shapes_dir, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(shapes_dir, root)
    ann = root / "annotations" / "instances_train2017.json"
    content = json.loads(ann.read_text())
    content["images"][2]["width"] += 7
    ann.write_text(json.dumps(content))
    builder = QwenInstructDet(config_name="count", data_dir=str(root), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=content["images"][2]["file_name"]):
        builder.download_and_prepare()
    rescaled = QwenInstructDet(config_name="count", data_dir=str(root), cache_dir=str(tmp_path / "c"), on_size_mismatch="rescale")
    rescaled.download_and_prepare()
    assert rescaled.skipped["train"]["size_rescaled"] == 1


def test_a_full_disk_during_a_build_says_so_with_the_path_and_leaves_nothing_to_trust(shapes_dir, small_disk, capsys):
    from qwen_instruct_det.commands.cli import main

    out = small_disk / "built"
    assert main(["build", str(shapes_dir), "--config", "partial_region", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing partial_region into" in err and str(out) in err
    assert "unexpected" not in err and "please report" not in err
    assert not list(out.rglob("dataset_info.json")) and not (out / "summary.json").exists()  # nothing reads as a finished build
