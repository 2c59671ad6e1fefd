"""Pictures show the image the model saw: EXIF orientation applied before boxes are drawn."""

from __future__ import annotations

import numpy as np
from PIL import Image

from qwen_instruct_det.visualize import CROWD_COLOUR, TRUTH_COLOUR, draw_detections


def test_boxes_are_drawn_on_the_displayed_frame(tmp_path):
    stored = Image.new("RGB", (200, 100), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: 100 wide, 200 tall
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif)
    truth = {"boxes": [[10, 150, 90, 190]], "labels": ["cat"]}  # near the bottom of the displayed picture
    picture = draw_detections(path, truth=truth, min_side=100)
    assert picture.size == (100, 200)
    pixels = picture.load()
    assert pixels[10, 170] != (255, 255, 255)  # the box's left edge, in the displayed frame


def test_crowd_regions_are_drawn_apart_from_the_targets():
    image = Image.new("RGB", (200, 200), (255, 255, 255))
    truth = {"boxes": [[10, 10, 90, 90], [110, 110, 190, 190]], "labels": ["cat", "cat"], "iscrowd": [False, True]}
    pixels = draw_detections(image, truth=truth, min_side=200).load()
    assert pixels[10, 50] == TRUTH_COLOUR
    assert pixels[110, 150] == CROWD_COLOUR != TRUTH_COLOUR
    numpy_flags = draw_detections(image, truth=dict(truth, iscrowd=np.array([0, 1])), min_side=200).load()  # as the metric takes them
    assert numpy_flags[110, 150] == CROWD_COLOUR


def test_classes_get_distinct_colours_and_a_legend_says_which_is_which():
    """circle and square were both blue (colours from a hash of the name); truth boxes had no label; no legend."""
    from qwen_instruct_det.visualize import PALETTE, class_colours

    names = ["circle", "square", "triangle", "diamond", "plus sign", "car", "dog", "cat"]
    colours = class_colours(names)
    assert len(set(colours.values())) == len(names) and set(colours.values()) <= set(PALETTE)
    assert TRUTH_COLOUR not in colours.values() and CROWD_COLOUR not in colours.values()
    image = Image.new("RGB", (200, 200), (255, 255, 255))
    prediction = {"boxes": [[20, 40, 90, 120], [110, 40, 180, 120]], "labels": ["circle", "square"], "scores": [0.9, 0.4]}
    truth = {"boxes": [[20, 130, 90, 190]], "labels": ["circle"]}
    plain = draw_detections(image, truth=truth, prediction=prediction, min_side=200)
    with_legend = np.asarray(draw_detections(image, truth=truth, prediction=prediction, min_side=200, with_legend=True))
    assert with_legend.shape[0] > plain.height and with_legend.shape[1] == plain.width
    strip = {tuple(p) for p in with_legend[plain.height:].reshape(-1, 3)}
    shown = class_colours(["circle", "square"])  # this picture's classes
    assert {TRUTH_COLOUR, shown["circle"], shown["square"]} <= strip  # a swatch per entry
    pixels = np.asarray(plain)
    label_area = pixels[175:190, 22:60].reshape(-1, 3)  # the truth box's label tag, inside its bottom-left corner
    assert (label_area == TRUTH_COLOUR).all(axis=1).sum() > 20


def test_qid_visualize_draws_predictions_that_have_no_truth(tmp_path):
    import json

    from qwen_instruct_det.commands.cli import main

    Image.new("RGB", (120, 90), (200, 200, 200)).save(tmp_path / "a.png")
    record = {"image_id": "a.png", "image": str(tmp_path / "a.png"), "width": 120, "height": 90,
              "detections": {"boxes": [[10, 10, 60, 60]], "labels": ["circle"], "scores": [0.8]}}
    (tmp_path / "p.jsonl").write_text(json.dumps(record) + "\n")  # what qid predict --images writes: no truth
    assert main(["visualize", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "grid.png").is_file() and (tmp_path / "pics" / "a.png.png").is_file()
