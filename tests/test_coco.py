"""Bad input stops with an error that names the file, the record and the fix."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from qwen_instruct_det import CocoFormatError, load_coco
from qwen_instruct_det.data.builder import QwenInstructDet


@pytest.fixture
def copy(shapes_dir, tmp_path):
    """A writable copy of the train split: (annotation path, image dir, data)."""
    ann = tmp_path / "instances.json"
    shutil.copy(shapes_dir / "annotations" / "instances_train2017.json", ann)
    return ann, shapes_dir / "train2017", json.loads(ann.read_text())


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_loads_the_real_layout(copy):
    ann, images, data = copy
    index = load_coco(ann, images)
    assert index.num_images == len(data["images"])
    assert index.num_annotations == len(data["annotations"])
    assert index.category_ids.tolist() == sorted(c["id"] for c in data["categories"])
    first = data["annotations"][0]
    i = int(np.flatnonzero(index.image_ids == first["image_id"])[0])
    x, y, w, h = first["bbox"]
    assert [x, y, x + w, y + h] in index.ann_xyxy[index.ann_start[i] : index.ann_start[i + 1]].tolist()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: annotation file not found"):
        load_coco(tmp_path / "nope.json", tmp_path)


def test_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match=r"bad.json: not valid JSON .*line 1"):
        load_coco(bad, tmp_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), "no top-level 'annotations'"),
        (lambda d: d["images"][3].pop("width"), r"image record #3 \(id \d+\) has no 'width'"),
        (lambda d: d["annotations"][2].pop("bbox"), r"annotation record #2 \(id \d+\) has no 'bbox'"),
        (lambda d: d["annotations"][1].update(image_id=999999), r"annotation record #1 .* image_id 999999, which is not in 'images'"),
        (lambda d: d["annotations"][4].update(category_id=77), r"annotation record #4 .* category_id 77, which is not in 'categories'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation record #0 .* bbox=\[1, 2, 3\]"),
        (lambda d: d["images"].clear(), "'images' is empty"),
        (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "appears twice"),
        # an id that is not a whole number was truncated: 1.5 silently became category 1
        (lambda d: d["annotations"][1].update(category_id=d["annotations"][1]["category_id"] + 0.5), r"annotation record #1 \(id \d+\) has category_id=\d+\.5.*whole number"),
        (lambda d: d["images"][2].update(id=d["images"][2]["id"] + 0.7), r"image record #2 \(id [\d.]+\) has id=[\d.]+.*whole number"),
        (lambda d: d["annotations"][3].update(image_id=1e300), r"annotation record #3 \(id \d+\) has image_id=1e\+?300.*must be a number"),
        # merged exports list one file under two ids: each row would hold half its objects, the other half unmarked
        (lambda d: d["images"][4].update(file_name="./" + d["images"][2]["file_name"]),
         r"image ids \d+ and \d+ are both the file .*merge the two image records"),
    ],
)
def test_bad_records_are_named(copy, mutate, message):
    ann, images, data = copy
    mutate(data)
    with pytest.raises(CocoFormatError, match=message) as info:
        load_coco(_write(ann, data), images)
    assert str(ann) in str(info.value)


def test_missing_image_file(copy, tmp_path):
    ann, images, data = copy
    folder = tmp_path / "imgs"
    shutil.copytree(images, folder)
    (folder / data["images"][5]["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{data['images'][5]['file_name']}: image file not found .*1 of"):
        load_coco(ann, folder)


def test_sub_pixel_boxes_are_skipped_and_counted(copy):
    ann, images, data = copy
    data["annotations"][0]["bbox"] = [5, 5, 0.4, 10]
    data["annotations"][0]["iscrowd"] = 0
    index = load_coco(_write(ann, data), images)
    assert index.skipped["sub_pixel_boxes"] == 1
    assert index.num_annotations == len(data["annotations"]) - 1


def test_category_filter_that_matches_nothing(shapes_dir, tmp_path):
    builder = QwenInstructDet(config_name="count", data_dir=str(shapes_dir), categories=["zebra"], cache_dir=str(tmp_path))
    with pytest.raises(Exception, match="category filter \\['zebra'\\] matches no category"):
        builder.download_and_prepare()


def test_data_dir_without_annotations(tmp_path):
    builder = QwenInstructDet(config_name="count", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="no COCO annotation file found"):
        builder.download_and_prepare()


def test_explicit_annotation_and_image_options(copy, tmp_path):
    ann, images, data = copy
    builder = QwenInstructDet(
        config_name="detection", annotation_files={"train": str(ann)}, image_dirs={"train": str(images)}, cache_dir=str(tmp_path)
    )
    builder.download_and_prepare()
    assert builder.as_dataset(split="train").num_rows == len(data["images"])


@pytest.mark.parametrize("value, crowd", [(None, False), (False, False), (True, True), (0, False), (1, True)])
def test_iscrowd_is_read_as_coco_tools_read_it(copy, value, crowd):
    ann, images, data = copy
    data["annotations"][0]["iscrowd"] = value
    index = load_coco(_write(ann, data), images)
    assert index.skipped["crowd_annotations"] == sum(bool(a.get("iscrowd")) for a in data["annotations"])
    first = np.asarray(data["annotations"][0]["bbox"], dtype=np.float64)
    xyxy = np.concatenate([first[:2], first[:2] + first[2:]])
    hit = np.flatnonzero(np.all(np.isclose(index.ann_xyxy, xyxy), axis=1))
    assert index.ann_crowd[hit].tolist() == [crowd]


@pytest.mark.parametrize("value", ["false", "0", 2, [1]])
def test_iscrowd_of_another_kind_is_named(copy, value):
    ann, images, data = copy
    data["annotations"][3]["iscrowd"] = value
    with pytest.raises(CocoFormatError, match=rf"annotation record #3 \(id \d+\) has iscrowd={re.escape(repr(value))}.*0 or 1") as info:
        load_coco(_write(ann, data), images)
    assert str(ann) in str(info.value)


def test_clipped_outside_and_negative_boxes_are_counted_apart(copy):
    ann, images, data = copy
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    targets = [a for a in data["annotations"] if not a["iscrowd"]][:6]
    for a in targets:
        a["iscrowd"] = 0
    w0, h0 = sizes[targets[0]["image_id"]]
    targets[0]["bbox"] = [w0 - 10, 5, 30, 20]  # partly outside: clipped to 10 wide, kept
    targets[1]["bbox"] = [-15, -5, 25, 30]  # partly outside on the left and top: kept
    w2, h2 = sizes[targets[2]["image_id"]]
    targets[2]["bbox"] = [w2 + 5, 10, 20, 20]  # fully outside on the right
    targets[3]["bbox"] = [10, -50, 20, 30]  # fully above the image
    targets[4]["bbox"] = [30, 30, -10, 20]  # negative width
    index = load_coco(_write(ann, data), images)
    assert index.skipped["clipped_boxes"] == 2
    assert index.skipped["outside_boxes"] == 2
    assert index.skipped["negative_size_boxes"] == 1
    assert index.skipped["sub_pixel_boxes"] == 0
    assert index.num_annotations == len(data["annotations"]) - 3
    assert [w0 - 10, 5, w0, 25] in index.ann_xyxy.tolist()
    assert [0, 0, 10, 25] in index.ann_xyxy.tolist()


@pytest.mark.parametrize("names", [("circle", "CIRCLE"), ("Traffic Light", "traffic  light"), ("cat", '"Cat"')])
def test_category_names_equal_after_normalisation_are_an_error(copy, names):
    ann, images, data = copy
    data["categories"][0]["name"], data["categories"][1]["name"] = names
    with pytest.raises(CocoFormatError, match="same name") as info:
        load_coco(_write(ann, data), images)
    assert all(repr(n) in str(info.value) for n in names)


def test_category_names_keep_their_own_spelling(copy):
    ann, images, data = copy
    spelled = ["Circle", "SQUARE  (big)", "Tri-angle-2", "dia.", "plus sign"]
    for cat, name in zip(sorted(data["categories"], key=lambda c: c["id"]), spelled):
        cat["name"] = name
    index = load_coco(_write(ann, data), images)
    assert index.category_names == spelled


def _roboflow(copy):
    """The copy as Roboflow exports: category 0 is the data set itself, never used, and every class's supercategory."""
    ann, images, data = copy
    data = json.loads(json.dumps(data))  # each call a fresh copy
    for c in data["categories"]:
        c["supercategory"] = "shapes-dataset"
    data["categories"].insert(0, {"id": 0, "name": "shapes-dataset", "supercategory": "none"})
    return ann, images, data


def test_a_roboflow_placeholder_category_is_dropped_and_counted(copy):
    ann, images, data = _roboflow(copy)
    index = load_coco(_write(ann, data), images)
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert index.category_names == [names[i] for i in sorted(names) if i != 0]  # not in prompts, not a class of the model
    assert index.skipped["placeholder_categories"] == 1
    first = data["annotations"][0]
    i = int(np.flatnonzero(index.image_ids == first["image_id"])[0])
    own = index.ann_category[index.ann_start[i] : index.ann_start[i + 1]]
    assert names[first["category_id"]] in [index.category_names[k] for k in own]  # the classes still line up


def test_a_used_or_partial_supercategory_stays_a_category(copy):
    ann, images, data = _roboflow(copy)
    data["annotations"][0]["category_id"] = 0  # used: a real class
    assert "shapes-dataset" in load_coco(_write(ann, data), images).category_names
    ann, images, data = _roboflow(copy)
    data["categories"][1]["supercategory"] = "other"  # not every class's parent: not the export's placeholder
    index = load_coco(_write(ann, data), images)
    assert "shapes-dataset" in index.category_names and "placeholder_categories" not in index.skipped


# ---------------------------------------------------------------- reads stay inside the image folder


@pytest.fixture
def secret(tmp_path):
    """A file outside every image folder: what a hostile annotation file would reach for."""
    from PIL import Image

    path = tmp_path / "secret" / "private.jpg"
    path.parent.mkdir()
    Image.new("RGB", (128, 96), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("check_files", [True, False])
@pytest.mark.parametrize("how", ["climbs", "absolute"])
def test_a_file_name_that_leaves_the_image_folder_stops_the_build(copy, secret, tmp_path, how, check_files):
    ann, images, data = copy
    image = tmp_path / "images"
    shutil.copytree(images, image)
    data["images"][3]["file_name"] = "../secret/private.jpg" if how == "climbs" else str(secret)
    _write(ann, data)
    with pytest.raises(CocoFormatError, match=rf"image id {data['images'][3]['id']} has file_name .*points outside the image folder.*"
                                              r"allow_outside_image_dir"):
        load_coco(ann, image, check_files=check_files)
    assert load_coco(ann, image, check_files=check_files, allow_outside_image_dir=True).num_images == len(data["images"])  # on purpose


def test_a_symlink_to_a_file_outside_stops_the_build_and_a_linked_folder_does_not(copy, secret, tmp_path):
    ann, images, data = copy
    image = tmp_path / "images"
    shutil.copytree(images, image)
    name = data["images"][5]["file_name"]
    (image / name).unlink()
    (image / name).symlink_to(secret)
    with pytest.raises(CocoFormatError, match=rf"{re.escape(name)} is a link to .*private\.jpg, outside the image folder"):
        load_coco(ann, image)
    (image / name).unlink()
    shutil.copy(images / name, image / name)
    linked = tmp_path / "linked"
    linked.symlink_to(image, target_is_directory=True)  # data/coco/train2017 -> a bigger disk: fine
    assert load_coco(ann, linked).num_images == len(data["images"])


def test_the_builder_refuses_an_outside_file_and_its_option_allows_it(copy, secret, tmp_path):
    ann, images, data = copy
    image = tmp_path / "images"
    shutil.copytree(images, image)
    shutil.copy(images / data["images"][0]["file_name"], secret)  # the size its record states
    data["images"][0]["file_name"] = "../secret/private.jpg"
    _write(ann, data)
    kwargs = {"annotation_files": {"train": str(ann)}, "image_dirs": {"train": str(image)}, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(CocoFormatError, match="outside the image folder"):
        QwenInstructDet(config_name="detection", check_files=False, **kwargs).download_and_prepare()
    builder = QwenInstructDet(config_name="detection", allow_outside_image_dir=True, **kwargs)
    builder.download_and_prepare()
    paths = {os.path.realpath(row[0]["path"]) for row in builder.as_dataset("train").with_format("arrow")["images"].to_pylist()}
    assert str(secret) in paths
