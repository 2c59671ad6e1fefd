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
