"""The image budget: the processor's resize mirrored without transformers, vectorised, read from and set on real processors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_instruct_det.budget import MAX_PIXELS, MIN_PIXELS, ImageBudget, smart_resize


@pytest.mark.parametrize("size", [(480, 640), (1, 1000), (3000, 2000), (28, 28), (100, 57)])
def test_smart_resize_matches_transformers(size):
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    h, w = size
    try:
        expected = reference(h, w, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280)
    except ValueError:
        with pytest.raises(ValueError):
            smart_resize(h, w)
        return
    assert smart_resize(h, w) == tuple(expected)


BUDGETS = [ImageBudget(), ImageBudget(3136, 12544, 28), ImageBudget(65536, 1310720, 32), ImageBudget(100, 200_000, 28)]


@given(st.lists(st.tuples(st.integers(1, 6000), st.integers(1, 6000)).filter(lambda s: max(s) / min(s) <= 200), min_size=1, max_size=50),
       st.sampled_from(BUDGETS))
def test_vectorised_resize_equals_the_scalar_one(sizes, budget):
    widths, heights = np.array(sizes).T
    expected = [smart_resize(int(h), int(w), budget.resize_factor, budget.min_pixels, budget.max_pixels)[::-1] for w, h in sizes]
    assert budget.resized_sizes(widths, heights).tolist() == [list(e) for e in expected]
    factor = budget.resize_factor
    assert budget.image_tokens(widths, heights).tolist() == [(w // factor) * (h // factor) for w, h in expected]
    assert budget.resized_size(*sizes[0]) == tuple(expected[0])


def test_the_resize_refuses_what_the_processor_refuses():
    with pytest.raises(ValueError, match="aspect ratio over 200"):
        ImageBudget().resized_sizes([640, 3000], [480, 10])
    with pytest.raises(ValueError, match="no pixels"):
        ImageBudget().resized_sizes([640, 0], [480, 10])


@pytest.mark.parametrize("kwargs, match", [({"min_pixels": 0}, "min_pixels must be a positive"),
                                           ({"min_pixels": 5000, "max_pixels": 4000}, "lower min_pixels or raise max_pixels"),
                                           ({"resize_factor": 2.5}, "resize_factor must be a positive")])
def test_a_budget_that_cannot_be_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageBudget(**kwargs)


def test_overrides_keep_the_rest_and_resolve_a_one_sided_clash(caplog):
    base = ImageBudget(MIN_PIXELS, MAX_PIXELS, 28)
    assert base.override(max_pixels=20_000) == ImageBudget(MIN_PIXELS, 20_000, 28)
    assert base.override(max_pixels=1000) == ImageBudget(1000, 1000, 28)  # below the checkpoint's min: both become it, with a warning
    assert "clashes" in caplog.text
    with pytest.raises(ValueError, match="lower --min_pixels"):
        base.override(min_pixels=5000, max_pixels=4000)


@pytest.mark.parametrize("family, factor", [("qwen2_vl", 28), ("qwen2_5_vl", 28), ("qwen3_vl", 32)])
def test_read_from_and_set_on_each_familys_processor(family, factor):
    from qwen_instruct_det.models.tiny import TinyModelConfig, build_processor

    processor = build_processor(["a circle"], TinyModelConfig(family=family, min_pixels=56 * 56, max_pixels=112 * 112))
    assert ImageBudget.of(processor) == ImageBudget(56 * 56, 112 * 112, factor)
    ImageBudget.set_on(processor, max_pixels=224 * 224)
    assert ImageBudget.of(processor) == ImageBudget(56 * 56, 224 * 224, factor)
    image = np.zeros((300, 500, 3), dtype=np.uint8)
    grid = processor.image_processor(images=[image], return_tensors="np")["image_grid_thw"][0]  # the processor's own resize
    w, h = ImageBudget.of(processor).resized_size(500, 300)
    patch = factor // 2
    assert (grid[1] * patch, grid[2] * patch) == (h, w)
    with pytest.raises(ValueError, match="resize factor"):
        ImageBudget(56 * 56, 112 * 112, 60 - factor).apply(processor)
