"""Box formats: exact renders, lenient parses of real-looking model replies, and properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_instruct_det import BOX_FORMATS, get_box_format, normalize_label, parse_detections


def test_qwen2_render_is_exact():
    fmt = get_box_format("qwen2")
    boxes = np.array([[531, 61, 771, 896], [10, 500, 20, 600], [10, 20, 30, 40]], dtype=float)
    text = fmt.render(boxes, ["person", "dog", "person"], width=1000, height=1000)
    assert text == (
        "<|object_ref_start|>person<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
        "<|box_start|>(531,61),(771,896)<|box_end|>"
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(10,500),(20,600)<|box_end|>"
    )


def test_qwen2_render_no_objects():
    assert get_box_format("qwen2").render(np.zeros((0, 4)), [], 10, 10, dataset="Shapes") == (
        "There are no objects from the Shapes categories in the image."
    )


def test_json_formats_render_exactly():
    boxes = np.array([[100.0, 50.0, 300.0, 150.0]])
    assert get_box_format("qwen3").render(boxes, ["cat"], 400, 200) == '[{"bbox_2d": [250, 250, 750, 750], "label": "cat"}]'
    # qwen2_5: pixels of the resized image (here 800x400, twice the original)
    assert get_box_format("qwen2_5").render(boxes, ["cat"], 400, 200, input_size=(800, 400)) == (
        '[{"bbox_2d": [200, 100, 600, 300], "label": "cat"}]'
    )
    assert json.loads(get_box_format("qwen3").render(boxes, ['say "hi"'], 400, 200))[0]["label"] == 'say "hi"'


PARSE_CASES = [
    # (text, expected grid boxes, labels, unparsed)
    ("<|object_ref_start|>person<|object_ref_end|><|box_start|>(531,61),(771,896)<|box_end|>", [[531, 61, 771, 896]], ["person"], 0),
    ("person(531,61),(771,896)", [[531, 61, 771, 896]], ["person"], 0),
    ("person(1,2),(3,4)(5,6),(7,8)", [[1, 2, 3, 4], [5, 6, 7, 8]], ["person", "person"], 0),
    ("traffic light(10,10),(20,20)dog(30,30),(40,40)", [[10, 10, 20, 20], [30, 30, 40, 40]], ["traffic light", "dog"], 0),
    ("<|object_ref_start|> Traffic Light <|object_ref_end|><|box_start|>(10,10),(20,20)<|box_end|>", [[10, 10, 20, 20]], ["traffic light"], 0),
    ("person(1,2),(3,4)person(5,6),(7", [[1, 2, 3, 4]], ["person"], 1),
    ("(100, 200), (300, 400)", [[100, 200, 300, 400]], [""], 0),
    ("cat(300,300),(100,100)", [], [], 0),  # swapped corners: dropped (and counted as dropped)
    ("cat(-50,0),(1500,2000)", [[0, 0, 1000, 1000]], ["cat"], 0),
    ("There are no objects from the COCO categories in the image.", [], [], 0),
    ("", [], [], 0),
]


@pytest.mark.parametrize("text, grid, labels, unparsed", PARSE_CASES)
def test_qwen2_parse_table(text, grid, labels, unparsed):
    out = parse_detections(text, width=1000, height=1000)
    assert np.allclose(np.array(out["boxes"]).reshape(-1, 4), np.array(grid, dtype=float).reshape(-1, 4))
    assert out["labels"] == labels
    assert out["unparsed"] == unparsed


def test_qwen2_parse_scales_to_pixels_and_counts_dropped():
    out = parse_detections("a(500,500),(1000,1000)b(10,10),(10,20)", width=640, height=480)
    assert out["boxes"] == [[320.0, 240.0, 640.0, 480.0]]
    assert out["dropped"] == 1


JSON_CASES = [
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]', [[10, 20, 30, 40]], ["cat"], 0),
    ('```json\n[\n\t{"bbox_2d": [10, 20, 30, 40], "label": "cat"},\n\t{"bbox_2d": [1, 2, 3, 4], "label": "dog"}\n]\n```',
     [[10, 20, 30, 40], [1, 2, 3, 4]], ["cat", "dog"], 0),
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}, {"bbox_2d": [1, 2, 3', [[10, 20, 30, 40]], ["cat"], 1),
    ('[{"bbox_2d": [10, 20, 30], "label": "cat"}]', [], [], 1),
    ('[{"label": "cat"}]', [], [], 1),
    ("no json here", [], [], 0),
    ('{"bbox_2d": [10, 20, 30, 40], "label": "\\"Cat\\" "}', [[10, 20, 30, 40]], ["cat"], 0),
]


@pytest.mark.parametrize("text, coords, labels, unparsed", JSON_CASES)
def test_qwen3_parse_table(text, coords, labels, unparsed):
    out = parse_detections(text, width=1000, height=1000, box_format="qwen3")
    assert np.allclose(np.array(out["boxes"]).reshape(-1, 4), np.array(coords, dtype=float).reshape(-1, 4))
    assert out["labels"] == labels
    assert out["unparsed"] == unparsed


def test_qwen2_5_maps_resized_pixels_back_and_needs_the_size():
    text = '[{"bbox_2d": [200, 100, 600, 300], "label": "cat"}]'
    out = parse_detections(text, width=400, height=200, box_format="qwen2_5", input_size=(800, 400))
    assert out["boxes"] == [[100.0, 50.0, 300.0, 150.0]]
    with pytest.raises(ValueError, match="input_size"):
        parse_detections(text, width=400, height=200, box_format="qwen2_5")


def test_label_normalisation_and_unknown_labels():
    assert normalize_label('  "Traffic   Light" ') == "traffic light"
    assert normalize_label("'dog'") == "dog"
    out = parse_detections("Plus Sign(1,1),(5,5)zebra(6,6),(9,9)", width=1000, height=1000, categories=["plus sign", "circle"])
    assert out["labels"] == ["plus sign", "zebra"]
    assert out["unknown_labels"] == ["zebra"]


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match="qwen2_5"):
        get_box_format("yolo")


_boxes = st.lists(
    st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(1, 400), st.integers(1, 400),
              st.sampled_from(["cat", "traffic light", "dog"])), min_size=0, max_size=6)


def _mutations(text: str, data) -> str:
    kind = data.draw(st.sampled_from(["truncate", "repeat", "swap", "huge", "noise", "none"]))
    if kind == "truncate" and text:
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "repeat":
        return text * 2
    if kind == "swap":
        return text.replace("(1", "(9").replace("),(", ")(")
    if kind == "huge":
        return text.replace("1", "99999999999999999999")
    if kind == "noise":
        pos = data.draw(st.integers(0, len(text)))
        return text[:pos] + data.draw(st.text(max_size=20)) + text[pos:]
    return text


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), _boxes, st.integers(16, 3000), st.integers(16, 3000), st.data())
def test_parsers_never_raise_and_keep_boxes_inside(fmt_name, raw, width, height, data):
    fmt = get_box_format(fmt_name)
    input_size = (max(28, width // 28 * 28), max(28, height // 28 * 28)) if fmt.needs_input_size else None
    boxes = np.array([[x / 1000 * width, y / 1000 * height, min(x + w, 1000) / 1000 * width, min(y + h, 1000) / 1000 * height]
                      for x, y, w, h, _ in raw], dtype=float).reshape(-1, 4)
    labels = [label for *_, label in raw]
    text = _mutations(fmt.render(boxes, labels, width, height, input_size=input_size), data)
    result = fmt.parse(text, width, height, input_size=input_size)
    b = result.boxes
    assert len(b) == len(result.labels)
    assert result.unparsed >= 0 and result.dropped >= 0
    if len(b):
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 2] <= width) and np.all(b[:, 3] <= height)
        assert np.all(b[:, 0] < b[:, 2]) and np.all(b[:, 1] < b[:, 3])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), st.text(max_size=300), st.integers(1, 4000), st.integers(1, 4000))
def test_parsers_never_raise_on_arbitrary_text(fmt_name, text, width, height):
    fmt = get_box_format(fmt_name)
    result = fmt.parse(text, width, height, input_size=(width, height))
    assert len(result.boxes) == len(result.labels)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), _boxes, st.integers(16, 3000), st.integers(16, 3000), st.floats(0.0, 0.49))
def test_round_trip_within_one_step(fmt_name, raw, width, height, jitter):
    """Boxes at least two coordinate steps wide come back within half a step (one step of the grid)."""
    fmt = get_box_format(fmt_name)
    input_size = (max(28, round(width * 0.7)), max(28, round(height * 0.7))) if fmt.needs_input_size else None
    grid_w, grid_h = input_size if input_size else (1000, 1000)
    step = np.array([width / grid_w, height / grid_h] * 2)
    units = np.array([[min(x, grid_w - 3), min(y, grid_h - 3), min(x, grid_w - 3) + 2 + w, min(y, grid_h - 3) + 2 + h]
                      for x, y, w, h, _ in raw], dtype=float).reshape(-1, 4)
    units = np.minimum(units, [grid_w, grid_h, grid_w, grid_h])
    boxes = (units + jitter * np.array([1, 1, -1, -1])) * step
    labels = [label for *_, label in raw]
    result = fmt.parse(fmt.render(boxes, labels, width, height, input_size=input_size), width, height, input_size=input_size)
    assert len(result.boxes) == len(boxes)
    assert sorted(result.labels) == sorted(labels)
    for box, label in zip(boxes, labels):
        same = result.boxes[[lab == label for lab in result.labels]]
        assert (np.abs(same - box) / step).max(axis=1).min() <= 0.5 + 1e-6
