"""Box formats: exact renders, lenient parses of real-looking model replies, and properties."""

from __future__ import annotations

import json
import re
import time

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
    ("no json here", [], [], 1),  # prose with no object is an unreadable answer, not a clean empty one
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


# --- Qwen2-VL grounding inside prose, and labels that look like coordinates ---------------------------------------

REAL_QWEN2 = (
    "In the image,<|object_ref_start|>a woman<|object_ref_end|><|box_start|>(462,371),(709,785)<|box_end|> is sitting on "
    "the beach with<|object_ref_start|> her dog<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"
)


def test_qwen2_label_is_the_text_between_the_ref_tokens():
    out = parse_detections(REAL_QWEN2, width=1000, height=1000)
    assert out["labels"] == ["a woman", "her dog"]
    assert out["boxes"] == [[462.0, 371.0, 709.0, 785.0], [100.0, 200.0, 300.0, 400.0]]
    assert out["unparsed"] == 0


def test_qwen2_boxes_after_a_ref_take_its_label_and_spans_point_at_the_coordinates():
    text = ("Here:<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> and "
            "<|box_start|>(5, 6), (7, 8)<|box_end|>.<|object_ref_start|>No.<|object_ref_end|><|box_start|>(9,9),(20,20)<|box_end|>")
    result = get_box_format("qwen2").parse(text, 1000, 1000)
    assert result.labels == ["cat", "cat", "no."]
    assert [text[s:e] for s, e in result.spans] == ["(1,2),(3,4)", "(5, 6), (7, 8)", "(9,9),(20,20)"]


def test_qwen2_ref_without_box_and_broken_box_are_unparsed():
    text = ("<|object_ref_start|>cat<|object_ref_end|><|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
            "<|object_ref_start|>bird<|object_ref_end|><|box_start|>(1,2),(3<|box_end|>")
    out = parse_detections(text, width=1000, height=1000)
    assert out["labels"] == ["dog"]
    assert out["unparsed"] == 2  # "cat" has no box; bird's box is cut


TRICKY_LABELS = ["item (2)", "box (1,2)", "-", "Tri-angle-2", "SQUARE  (big)", "Traffic Light", "No.", "Tri."]


@pytest.mark.parametrize("fmt_name", ["qwen2", "qwen2_5", "qwen3"])
@pytest.mark.parametrize("label", TRICKY_LABELS)
def test_tricky_labels_round_trip_with_tokens(fmt_name, label):
    fmt = get_box_format(fmt_name)
    boxes = np.array([[100.0, 200.0, 300.0, 400.0], [500.0, 500.0, 700.0, 900.0]])
    size = (1000, 1000) if fmt.needs_input_size else None
    text = fmt.render(boxes, [label, label], 1000, 1000, input_size=size)
    plain = fmt.parse(text, 1000, 1000, input_size=size)
    assert plain.labels == [normalize_label(label)] * 2
    mapped = fmt.parse(text, 1000, 1000, input_size=size, categories=TRICKY_LABELS)
    assert mapped.labels == [label, label] and mapped.unknown_labels == []
    assert np.allclose(mapped.boxes, boxes[np.argsort(boxes[:, 1], kind="stable")]) and mapped.unparsed == 0


_SPECIALS = re.compile(r"<\|[a-z_]+\|>")


def _skip_special_tokens(text: str) -> str:
    """What decoding with ``skip_special_tokens=True`` leaves of a qwen2 answer."""
    return _SPECIALS.sub("", text)


def test_stripped_form_reads_known_category_names_whole():
    out = parse_detections("box (1,2)(10,20),(30,40)", width=1000, height=1000, categories=["box (1,2)", "box"])
    assert out == {"boxes": [[10.0, 20.0, 30.0, 40.0]], "labels": ["box (1,2)"], "unparsed": 0, "dropped": 0, "unknown_labels": []}


@pytest.mark.parametrize("label", TRICKY_LABELS)
def test_stripped_form_round_trips_tricky_category_names(label):
    fmt = get_box_format("qwen2")
    boxes = np.array([[100.0, 200.0, 300.0, 400.0], [500.0, 500.0, 700.0, 900.0], [10.0, 950.0, 20.0, 990.0]])
    labels = [label, label, "Traffic Light"]
    text = _skip_special_tokens(fmt.render(boxes, labels, 1000, 1000))
    out = fmt.parse(text, 1000, 1000, categories=TRICKY_LABELS)
    assert out.labels == labels and out.unparsed == 0
    assert np.allclose(out.boxes, boxes)
    assert [text[s:e] for s, e in out.spans] == ["(100,200),(300,400)", "(500,500),(700,900)", "(10,950),(20,990)"]


def test_stripped_prose_finds_category_names_at_the_end_of_the_text_before_a_box():
    text = _skip_special_tokens(REAL_QWEN2)
    out = parse_detections(text, width=1000, height=1000, categories=["Woman", "dog"])
    assert out["labels"] == ["Woman", "dog"] and len(out["boxes"]) == 2


# --- never raise, linear time ---------------------------------------------------------------------------------------

def _adversarial(n: int) -> dict[str, str]:
    return {
        "nested": '[{"bbox_2d": [' * (n // 14),
        "brackets": "[" * (n // 2) + "]" * (n // 2),
        "braces": "{" * n,
        "spaces": "(1,2)" + " " * n,
        "brace_spaces": "{" + " " * n,
        "digits": "cat(1,2),(3," + "9" * n,
        "json_digits": '[{"bbox_2d": [1, 2, 3, ' + "9" * n,
        "partial_boxes": "(1,2),(3," * (n // 9),
        "partial_objects": '{"bbox_2d": [1, 2, 3,' * (n // 21),
        "refs": "<|object_ref_start|>" * (n // 20),
        "quotes": "{'x{' " * (n // 6),
        "open_string": '{"' + "a" * n,
        "paren_digits": "(1" * (n // 2),
        "paren_runs": "(((((1,2)))))" * (n // 13),
        "escapes": '{"' + "\\{" * (n // 2),
    }


@pytest.mark.parametrize("fmt_name", sorted(BOX_FORMATS))
def test_deep_nesting_does_not_raise(fmt_name):
    result = get_box_format(fmt_name).parse('[{"bbox_2d": [' * 340, 640, 480, input_size=(640, 480))
    assert len(result.boxes) == 0 and result.unparsed >= 1


@pytest.mark.parametrize("fmt_name", sorted(BOX_FORMATS))
def test_adversarial_inputs_parse_in_linear_time(fmt_name):
    """200 kB of each input: the old parsers took minutes on some (quadratic); a linear one takes a small fraction of a
    second. CPU time, so that a busy shared machine does not fail the test."""
    fmt = get_box_format(fmt_name)
    for name, text in _adversarial(200_000).items():
        start = time.process_time()
        result = fmt.parse(text, 640, 480, input_size=(640, 480), categories=["cat", "box (1,2)"])
        elapsed = time.process_time() - start
        assert elapsed < 3.0, f"{fmt_name} took {elapsed:.2f} s on {name!r}"
        assert len(result.boxes) == len(result.labels) == len(result.spans)


_JUNK = st.lists(st.sampled_from(list("{}[]()\"',:.- 0123456789\n") + ["bbox_2d", "label", "cat", "<|object_ref_start|>",
                                                                      "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"]),
                 max_size=400).map("".join)
_LONG = st.builds(lambda piece, count: piece * count, st.text(max_size=12), st.integers(0, 5000))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), st.one_of(st.text(max_size=2000), _JUNK, _LONG), st.booleans())
def test_parsers_never_raise_on_junk_unicode_and_long_text(fmt_name, text, with_categories):
    fmt = get_box_format(fmt_name)
    result = fmt.parse(text, 640, 480, input_size=(320, 240), categories=["cat", "box (1,2)", "No."] if with_categories else None)
    assert len(result.boxes) == len(result.labels) == len(result.spans)
    assert result.unparsed >= 0 and result.dropped >= 0
    for s, e in result.spans:
        assert 0 <= s < e <= len(text)
    if len(result.boxes):
        assert np.all(result.boxes >= 0) and np.all(result.boxes[:, [0, 2]] <= 640) and np.all(result.boxes[:, [1, 3]] <= 480)


_label_text = st.text(alphabet=st.sampled_from(list("abcXYZ019 ().,-'")), min_size=1, max_size=12).filter(
    lambda s: normalize_label(s) and s.strip()[0].isalpha())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), st.lists(_label_text, min_size=1, max_size=4, unique_by=normalize_label), st.data())
def test_any_label_round_trips_with_tokens(fmt_name, names, data):
    fmt = get_box_format(fmt_name)
    labels = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=6))
    boxes = np.array([[10.0 * k, 20.0 * k, 10.0 * k + 50, 20.0 * k + 60] for k in range(len(labels))])
    size = (1000, 1000) if fmt.needs_input_size else None
    result = fmt.parse(fmt.render(boxes, labels, 1000, 1000, input_size=size), 1000, 1000, input_size=size, categories=names)
    assert sorted(result.labels) == sorted(labels) and result.unparsed == 0 and result.unknown_labels == []


# --- JSON answers as Qwen2.5-VL and Qwen3-VL write them -------------------------------------------------------------

JSON_REPLIES = [
    # (text, boxes on a 1000x1000 image with 0-1000 coordinates, labels, unparsed)
    ("[{'bbox_2d': [1, 2, 3, 4], 'label': 'cat'}]", [[1, 2, 3, 4]], ["cat"], 0),
    ("[{'bbox_2d': [1, 2, 3, 4], 'label': \"cat's toy\"}, {'bbox': [5.5, 6, 7, 8.25], 'label': 'dog',}]",
     [[1, 2, 3, 4], [5.5, 6, 7, 8.25]], ["cat's toy", "dog"], 0),
    ('```json\n[\n\t{"bbox_2d": [10.5, 20, 30, 40], "label": "cat"}\n]\n```', [[10.5, 20, 30, 40]], ["cat"], 0),
    ("```json\n[]\n```", [], [], 0),
    ("[]", [], [], 0),
    ("[ ]", [], [], 0),
    ("```json\n[\n  {\"bbox_2d\": [10, 10, 100, 100]},\n  {\"label\": \"missing box\"},\n"
     "  {\"bbox_2d\": [50, 60, 110, 120], \"unused\": \"something\"}\n]\n```", [], [], 3),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, {"bbox_2d": [5, 6, 7, 8], "label": "do', [[1, 2, 3, 4]], ["cat"], 1),
    ("[{'bbox_2d': [1, 2, 3, 4], 'label': 'cat'}, {'bbox_2d': [5, 6", [[1, 2, 3, 4]], ["cat"], 1),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": ""}]', [], [], 1),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": 7}]', [], [], 1),
    ('[{"bbox_2d": [1, 2, true, 4], "label": "cat"}]', [], [], 1),
    ('[{"bbox_2d": [1, 2, 3, 1e999], "label": "cat"}]', [], [], 1),
    ('[{"bbox_2d": [1, 2, 3, ' + "9" * 5000 + '], "label": "cat"}]', [], [], 1),
    ('{"label": "cat", "bbox_2d": [1, 2, 3, 4]}\n{"label": "dog", "bbox_2d": [5, 6, 7, 8]}', [[1, 2, 3, 4], [5, 6, 7, 8]],
     ["cat", "dog"], 0),
    ("Sure! Here's what I found: [{'bbox_2d': [1, 2, 3, 4], 'label': 'cat'}]", [[1, 2, 3, 4]], ["cat"], 0),
    ("```json\nnot valid json\n```", [], [], 1),
    ("I see a cat.", [], [], 1),
    ("person(1,2),(3,4)", [], [], 1),
    ("[[1, 2, 3, 4]]", [], [], 1),
    ("There are no objects from the COCO categories in the image.", [], [], 0),
    ("There are no objects from the Pascal VOC 2012 categories in the image", [], [], 0),
    ("there are no objects from the shapes categories in the image.\n", [], [], 0),
]


@pytest.mark.parametrize("fmt_name", ["qwen3", "qwen2_5"])
@pytest.mark.parametrize("text, coords, labels, unparsed", JSON_REPLIES)
def test_json_replies_table(fmt_name, text, coords, labels, unparsed):
    out = parse_detections(text, width=1000, height=1000, box_format=fmt_name, input_size=(1000, 1000))
    assert np.allclose(np.array(out["boxes"]).reshape(-1, 4), np.array(coords, dtype=float).reshape(-1, 4))
    assert out["labels"] == labels
    assert out["unparsed"] == unparsed


def test_json_spans_cover_each_object():
    text = 'x [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, {"bbox_2d": [5, 6, 7, 8], "label": "dog"}]'
    result = get_box_format("qwen3").parse(text, 1000, 1000)
    assert [json.loads(text[s:e])["label"] for s, e in result.spans] == ["cat", "dog"]


def test_json_clamps_and_counts_dropped_boxes():
    text = '[{"bbox_2d": [-10, -10, 1200, 500], "label": "cat"}, {"bbox_2d": [300, 300, 100, 400], "label": "dog"}]'
    out = parse_detections(text, width=500, height=500, box_format="qwen3")
    assert out["boxes"] == [[0.0, 0.0, 500.0, 250.0]] and out["labels"] == ["cat"] and out["dropped"] == 1


# --- answers in no readable format vs clean empty answers ----------------------------------------------------------

QWEN2_REPLIES = [
    # (text, grid boxes, labels, unparsed)
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]', [], [], 1),  # a JSON answer is not qwen2 text
    ("I see a cat.", [], [], 1),
    ("cat", [], [], 1),
    ("[]", [], [], 0),
    ("There are no objects from the Shapes categories in the image.", [], [], 0),
    ("  THERE ARE NO OBJECTS FROM THE  my-data  CATEGORIES IN THE IMAGE  ", [], [], 0),
    ("There are no objects from the COCO categories in the image.<|im_end|>", [], [], 0),
    ("There are objects from the COCO categories in the image.", [], [], 1),
    ("<|object_ref_start|>cat<|object_ref_end|>", [], [], 1),
    ("<|box_start|><|box_end|>", [], [], 1),
    ("<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)", [[1, 2, 3, 4]], ["cat"], 0),  # cut before box_end
    ("<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,", [], [], 1),
    ("<|box_start|>(1,2),(3,4)<|box_end|>", [[1, 2, 3, 4]], [""], 0),
    ("cat(1,2),(3,4)(5,6)", [[1, 2, 3, 4]], ["cat"], 1),  # cut after the first corner of a box
    ("cat(1,2),(3,4)dog(5,6)", [[1, 2, 3, 4]], ["cat"], 1),
    ("cat(1,2),(3,dog(5,6),(7,8)", [[5, 6, 7, 8]], ["dog"], 1),
    ("cat(1.5, 2), (3, 4.5)", [[1.5, 2, 3, 4.5]], ["cat"], 0),
    ("item (2)(10,20),(30,40)", [[10, 20, 30, 40]], ["item (2)"], 0),
    ("Tri.(10,20),(30,40)", [[10, 20, 30, 40]], ["tri."], 0),
]


@pytest.mark.parametrize("text, grid, labels, unparsed", QWEN2_REPLIES)
def test_qwen2_replies_table(text, grid, labels, unparsed):
    out = parse_detections(text, width=1000, height=1000)
    assert np.allclose(np.array(out["boxes"]).reshape(-1, 4), np.array(grid, dtype=float).reshape(-1, 4))
    assert out["labels"] == labels
    assert out["unparsed"] == unparsed


@pytest.mark.parametrize("fmt_name", sorted(BOX_FORMATS))
def test_every_format_reads_its_own_empty_answer_as_clean(fmt_name):
    fmt = get_box_format(fmt_name)
    size = (64, 64) if fmt.needs_input_size else None
    for dataset in ("COCO", "Shapes", "LVIS v1"):
        result = fmt.parse(fmt.render(np.zeros((0, 4)), [], 64, 64, input_size=size, dataset=dataset), 64, 64, input_size=size)
        assert len(result.boxes) == 0 and result.unparsed == 0


_BOX_TEXT = re.compile(r"\(\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\)\s*,?\s*\(\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\)")
_name = st.text(alphabet=st.sampled_from(list("abcXYZ019 ().,-'")), min_size=1, max_size=14).filter(
    lambda s: normalize_label(s) and s.strip()[0].isalpha() and normalize_label(s)[-1] not in ",;:")


@settings(max_examples=300, deadline=None)
@given(st.lists(_name, min_size=1, max_size=5, unique_by=normalize_label), st.data())
def test_stripped_form_reads_any_category_names_whole(names, data):
    """With the categories known, labels full of digits, commas and brackets never turn into boxes."""
    fmt = get_box_format("qwen2")
    labels = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=6))
    corners = data.draw(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900)), min_size=len(labels), max_size=len(labels)))
    boxes = np.array([[x, y, x + 50, y + 60] for x, y in corners], dtype=float)
    text = _skip_special_tokens(fmt.render(boxes, labels, 1000, 1000))
    result = fmt.parse(text, 1000, 1000, categories=names)
    assert result.unparsed == 0 and result.unknown_labels == []
    assert sorted(zip(result.labels, result.boxes.tolist())) == sorted(zip(labels, boxes.tolist()))
    assert all(_BOX_TEXT.fullmatch(text[s:e]) for s, e in result.spans)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BOX_FORMATS)), _boxes, st.data())
def test_spans_point_at_each_box(fmt_name, raw, data):
    fmt = get_box_format(fmt_name)
    size = (1000, 1000) if fmt.needs_input_size else None
    boxes = np.array([[x, y, min(x + w, 1000), min(y + h, 1000)] for x, y, w, h, _ in raw], dtype=float).reshape(-1, 4)
    text = _mutations(fmt.render(boxes, [label for *_, label in raw], 1000, 1000, input_size=size), data)
    result = fmt.parse(text, 1000, 1000, input_size=size)
    for (s, e), box in zip(result.spans, result.boxes):  # the text under each span reads as that box, alone
        assert np.array_equal(fmt.parse(text[s:e], 1000, 1000, input_size=size).boxes, box[None])
        assert _BOX_TEXT.fullmatch(text[s:e]) if fmt_name == "qwen2" else text[s] + text[e - 1] == "{}"
