import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_instruct_det import boxes as B


def test_xywh_round_trip():
    xywh = np.array([[10.5, 20.0, 30.0, 40.25]])
    xyxy = B.xywh_to_xyxy(xywh)
    assert xyxy.tolist() == [[10.5, 20.0, 40.5, 60.25]]
    assert B.xyxy_to_xywh(xyxy).tolist() == xywh.tolist()


def test_grid_rounds_half_up_and_clamps():
    # 0.5 / 1 * 1000 = 500; 125/200*1000 = 625; negative and too large clamp
    grid = B.to_grid(np.array([[0.5, 125.0, -3.0, 900.0]]), width=1, height=200)
    assert grid.tolist() == [[500, 625, 0, 1000]]
    # a value exactly half a grid step up rounds up, not to even
    assert B.to_grid(np.array([[0.0025, 0, 0.0035, 0]]), 1, 1).tolist() == [[3, 0, 4, 0]]


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert np.allclose(B.iou_matrix(a, b), [[50 / 150, 0.0, 1.0]])


def test_visible_fraction_is_relative_to_the_object():
    obj = np.array([[0, 0, 10, 10]])
    regions = np.array([[0, 0, 5, 10], [-5, -5, 20, 20], [10, 0, 20, 10]])
    assert np.allclose(B.visible_fraction(obj, regions), [[0.5, 1.0, 0.0]])


def test_zero_area_boxes_give_zero_not_nan():
    z = np.array([[3, 3, 3, 3]])
    assert B.iou_matrix(z, z).tolist() == [[0.0]]
    assert B.visible_fraction(z, np.array([[0, 0, 10, 10]])).tolist() == [[0.0]]


def test_reading_order_top_to_bottom_then_left_to_right():
    boxes = np.array([[50, 10, 60, 20], [0, 30, 5, 40], [10, 10, 20, 20]])
    assert B.reading_order(boxes).tolist() == [2, 0, 1]


coords = st.floats(min_value=0, max_value=2000, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=5),
       st.integers(1, 4000), st.integers(1, 4000))
def test_grid_round_trip_within_one_step(raw, width, height):
    boxes = B.clip(np.array(raw), width, height)
    back = B.from_grid(B.to_grid(boxes, width, height), width, height)
    step = np.array([width, height, width, height]) / 1000
    assert np.all(np.abs(back - boxes) <= step / 2 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=4),
       st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=4))
def test_iou_properties(a, b):
    a, b = np.array(a), np.array(b)
    m = B.iou_matrix(a, b)
    assert m.shape == (len(a), len(b))
    assert np.all((m >= 0) & (m <= 1 + 1e-12))
    assert np.allclose(m, B.iou_matrix(b, a).T)


@pytest.mark.parametrize("size", [(480, 640), (1, 1000), (3000, 2000), (28, 28), (100, 57)])
def test_smart_resize_matches_transformers(size):
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = size
    try:
        expected = smart_resize(h, w, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280)
    except ValueError:
        with pytest.raises(ValueError):
            B.smart_resize(h, w)
        return
    assert B.smart_resize(h, w) == tuple(expected)
