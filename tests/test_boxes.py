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


def _pil_landing(stored_w, stored_h, box, orientation):
    """Where PIL's exif_transpose puts a filled rectangle drawn on the stored pixels: (xyxy, displayed size)."""
    from PIL import Image, ImageOps

    x1, y1, x2, y2 = box
    pixels = np.zeros((stored_h, stored_w), dtype=np.uint8)
    pixels[y1:y2, x1:x2] = 255
    img = Image.fromarray(pixels)
    img.getexif()[0x0112] = orientation  # the cached Exif that exif_transpose reads
    shown = np.asarray(ImageOps.exif_transpose(img))
    ys, xs = np.nonzero(shown)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], (shown.shape[1], shown.shape[0])


def test_orient_boxes_lands_where_pil_exif_transpose_puts_the_pixels():
    # every orientation, several boxes and two stored sizes, all transformed in one vectorised call
    sizes = [(13, 7), (6, 11)]
    rects = [(0, 0, 3, 2), (2, 1, 6, 5), (4, 3, 6, 7), (1, 5, 2, 6)]
    cases = [(o, w, h, r) for o in range(1, 9) for w, h in sizes for r in rects]
    o = np.array([c[0] for c in cases])
    w = np.array([c[1] for c in cases])
    h = np.array([c[2] for c in cases])
    got = B.orient_boxes(np.array([c[3] for c in cases], dtype=float), o, w, h)
    shown_w, shown_h = B.oriented_size(w, h, o)
    for k, (orientation, sw, sh, rect) in enumerate(cases):
        expected, (ew, eh) = _pil_landing(sw, sh, rect, orientation)
        assert got[k].tolist() == expected, (orientation, sw, sh, rect)
        assert (shown_w[k], shown_h[k]) == (ew, eh), orientation


def test_orientation_size_and_scalar_forms():
    assert [tuple(int(v) for v in B.oriented_size(640, 427, o)) for o in range(1, 9)] == [(640, 427)] * 4 + [(427, 640)] * 4
    # orientation 6 (rotate 90 degrees clockwise): the stored top-left corner goes to the top-right
    assert B.orient_boxes(np.array([0.0, 0.0, 10.0, 20.0]), 6, 640, 427).tolist() == [407.0, 0.0, 427.0, 10.0]
    with pytest.raises(ValueError, match="1-8"):
        B.orient_boxes(np.zeros((1, 4)), 9, 10, 10)


_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=5),
       st.lists(st.integers(1, 8), min_size=5, max_size=5), st.integers(1, 4000), st.integers(1, 4000))
def test_orient_boxes_inverse_round_trip(raw, orients, width, height):
    boxes = B.clip(np.sort(np.array(raw).reshape(-1, 2, 2), axis=1).reshape(-1, 4), width, height)
    o = np.array(orients[: len(boxes)])
    shown = B.orient_boxes(boxes, o, width, height)
    shown_w, shown_h = B.oriented_size(width, height, o)
    # a flip computes W - x, which rounds at the size's scale (513 - 3e-14 == 513): areas agree to 1e-6 px^2, not relatively
    assert np.all(B.area(shown) == pytest.approx(B.area(boxes), abs=1e-6))
    back = B.orient_boxes(shown, np.array([_INVERSE[v] for v in o.tolist()]), shown_w, shown_h)
    assert np.allclose(back, boxes)
