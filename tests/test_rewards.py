"""Rewards on hand-worked cases: every kind, duplicates and extra boxes, formats, empties, TRL's call shape.

Images are 1000 x 1000 pixels, so qwen2's 0-1000 grid is the pixel grid and the expected
numbers can be worked out by hand. Truth: a circle at (100,100)-(300,300) and a square at
(500,500)-(700,800).
"""

from __future__ import annotations

import pytest

from qwen_instruct_det.budget import ImageBudget
from qwen_instruct_det.formats import NO_OBJECTS
from qwen_instruct_det.train import rewards

TRUTH = [{"bbox": [100.0, 100.0, 300.0, 300.0], "category": "circle"}, {"bbox": [500.0, 500.0, 700.0, 800.0], "category": "square"}]
CIRCLE, SQUARE = "circle(100,100),(300,300)", "square(500,500),(700,800)"
PERFECT = CIRCLE + SQUARE
TOKENS = ("<|object_ref_start|>circle<|object_ref_end|><|box_start|>(100,100),(300,300)<|box_end|>"
          "<|object_ref_start|>square<|object_ref_end|><|box_start|>(500,500),(700,800)<|box_end|>")


def _call(fn, texts, truth=TRUTH, **columns):
    """Call a reward the way GRPOTrainer does: conversational completions, every column as a list."""
    n = len(texts)
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    kwargs = {"objects": [truth] * n, "width": [1000] * n, "height": [1000] * n, "task": ["detection"] * n,
              "images": [[None]] * n, "trainer_state": None, "log_extra": None, "log_metric": None}
    kwargs.update(columns)
    return fn(prompts=[[{"role": "user", "content": "Draw"}]] * n, completions=completions, completion_ids=[[1]] * n, **kwargs)


# (answer, expected f1, iou, map_length), worked out by hand
CASES = {
    "perfect": (PERFECT, 1.0, 1.0, 1.0),
    "perfect with grounding tokens": (TOKENS, 1.0, 1.0, 1.0),
    # one box repeated at the end: tp 2 of 3 answers; AP 1 (hits T T F) x 2/3
    "duplicate last": (PERFECT + "(100,100),(300,300)", 0.8, 2 / 3, 2 / 3),
    # repeated straight after itself: hits T F T, precisions 1, 1/2, 2/3 -> AP (1 + 2/3) / 2, x 2/3
    "duplicate first": (CIRCLE + "(100,100),(300,300)" + SQUARE, 0.8, 2 / 3, (1 + 2 / 3) / 2 * 2 / 3),
    # a box where there is nothing
    "extra box": (PERFECT + "(0,0),(50,50)", 0.8, 2 / 3, 2 / 3),
    # the circle's box called a square: that box scores 0; hits F T -> AP (1/2) / 2
    "wrong class": ("square(100,100),(300,300)" + SQUARE, 0.5, 0.5, 0.25),
    # the circle 40 px short at the bottom: IoU 0.8, still a match at 0.5
    "loose box": ("circle(100,100),(300,260)" + SQUARE, 1.0, 0.9, 1.0),
    "one box missing": (CIRCLE, 2 / 3, 0.5, 0.5),
    "empty answer": (NO_OBJECTS.format(dataset="COCO"), 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("kind", rewards.KINDS)
@pytest.mark.parametrize("case", CASES)
def test_detection_reward_hand_cases(kind, case):
    text, *expected = CASES[case]
    fn = rewards.detection_reward(kind=kind)
    assert fn.__name__ == f"detection_{kind}"
    assert _call(fn, [text]) == pytest.approx([expected[rewards.KINDS.index(kind)]])


@pytest.mark.parametrize("kind", rewards.KINDS)
def test_duplicates_and_extra_boxes_always_cost(kind):
    fn = rewards.detection_reward(kind=kind)
    perfect, *worse = _call(fn, [PERFECT, CASES["duplicate last"][0], CASES["duplicate first"][0], CASES["extra box"][0],
                                 PERFECT + PERFECT])
    assert perfect == 1.0
    assert all(w < perfect for w in worse), worse


@pytest.mark.parametrize("kind", rewards.KINDS)
def test_empty_truth_and_empty_answer(kind):
    fn = rewards.detection_reward(kind=kind)
    none = NO_OBJECTS.format(dataset="COCO")
    assert _call(fn, [none, CIRCLE], truth=[]) == [1.0, 0.0]
    assert _call(fn, [none], truth=TRUTH) == [0.0]


@pytest.mark.parametrize("kind", rewards.KINDS)
def test_an_unreadable_answer_on_an_empty_image_scores_nothing(kind):
    """No boxes read is not the same as "no objects": babble, a cut-off box and silence say nothing (the reward paid 1.0)."""
    fn = rewards.detection_reward(kind=kind)
    answers = ["I like turtles", "circle(100,100),(30", "", "  \n", "<|im_end|>", "<|endoftext|>", "```json\n```", "There are no objects."]
    assert _call(fn, answers, truth=[]) == [0.0] * len(answers)
    qwen3 = rewards.detection_reward("qwen3", kind=kind)
    assert _call(qwen3, ['[{"bbox_2d": [10, 20, 3', "[]", "```json\n[]\n```"], truth=[]) == [0.0, 1.0, 1.0]  # an empty list says none


def test_wrong_class_scores_zero_on_a_single_box():
    truth = [TRUTH[0]]
    for kind in rewards.KINDS:
        assert _call(rewards.detection_reward(kind=kind), ["square(100,100),(300,300)"], truth=truth) == [0.0]


def test_iou_threshold_decides_a_match():
    loose = "circle(100,100),(300,160)"  # IoU 0.3 with the circle
    truth = [TRUTH[0]]
    assert _call(rewards.detection_reward(kind="f1", iou_threshold=0.5), [loose], truth=truth) == [0.0]
    assert _call(rewards.detection_reward(kind="iou", iou_threshold=0.25), [loose], truth=truth) == pytest.approx([0.3])


def test_labels_are_read_in_the_data_sets_spelling():
    truth = [{"bbox": [100.0, 100.0, 300.0, 300.0], "category": "Traffic Light"}]
    fn = rewards.detection_reward()
    assert _call(fn, ['"traffic  light"(100,100),(300,300)'], truth=truth) == [1.0]


def test_qwen2_5_needs_and_uses_the_resized_size():
    # 1000 x 1000 within 28*28*100 pixels resizes to 280 x 280: the circle is (28,28)-(84,84) there
    text = '[{"bbox_2d": [28, 28, 84, 84], "label": "circle"}, {"bbox_2d": [140, 140, 196, 224], "label": "square"}]'
    budget = ImageBudget(min_pixels=56 * 56, max_pixels=28 * 28 * 100, resize_factor=28)
    assert _call(rewards.detection_reward("qwen2_5", budget=budget), [text]) == [1.0]
    assert _call(rewards.detection_reward("qwen2_5"), [text], input_size=[(280, 280)]) == [1.0]
    assert _call(rewards.format_reward("qwen2_5", budget=budget), [text]) == [1.0]
    with pytest.raises(ValueError, match="input_size"):
        _call(rewards.detection_reward("qwen2_5"), [text])
    with pytest.raises(ValueError, match="min_pixels"):
        ImageBudget(min_pixels=28 * 28 * 200, max_pixels=28 * 28 * 100)


def test_qwen3_json_on_the_grid():
    text = '```json\n[{"bbox_2d": [100, 100, 300, 300], "label": "circle"}, {"bbox_2d": [500, 500, 700, 800], "label": "square"}]\n```'
    assert _call(rewards.detection_reward("qwen3", kind="map_length"), [text]) == [1.0]


FORMAT_CASES = {
    "complete": (PERFECT, 1.0),
    "with grounding tokens": (TOKENS, 1.0),
    "no objects sentence": (NO_OBJECTS.format(dataset="COCO"), 1.0),
    "truncated inside a box": (CIRCLE + "square(500,500),(70", 0.0),
    "malformed box": ("circle(100,100),(300,300)square(5x0,500),(700,800)", 0.0),
    "empty box dropped": ("circle(300,300),(100,100)", 0.0),
    "prose, no box": ("I see a circle and a square.", 0.0),
    "nothing": ("", 0.0),
    "json truncated": ('[{"bbox_2d": [100, 100, 300, 300], "label": "circle"}, {"bbox_2d": [500, 5', 0.0),
    # prose around the boxes: the parser reads through it (real answers), the format reward does not pay for it
    "prose after the last box": (PERFECT + " I hope this helps.", 0.0),
    "prose after grounding tokens": (TOKENS + " That is all.", 0.0),
    "prose before grounding tokens": ("Sure! " + TOKENS, 0.0),
    # without the tokens (how TRL decodes) prose before a box is its label's text: not a format fault, a wrong label
    "prose before a box without tokens": ("Sure! " + PERFECT, 1.0),
    "end tokens and spaces after the boxes": (TOKENS + " <|im_end|>\n", 1.0),
    "json in a code fence": ('```json\n[{"bbox_2d": [100, 100, 300, 300], "label": "circle"}]\n```', 1.0),
    "prose after the json": ('[{"bbox_2d": [100, 100, 300, 300], "label": "circle"}] Done.', 0.0),
    "prose before the json": ('Here it is: [{"bbox_2d": [100, 100, 300, 300], "label": "circle"}]', 0.0),
    "prose between json objects": ('[{"bbox_2d": [100, 100, 300, 300], "label": "circle"}, and {"bbox_2d": [5, 5, 70, 80], "label": "square"}]', 0.0),
    "no objects sentence with more words": (NO_OBJECTS.format(dataset="COCO") + " Sorry.", 0.0),
}


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_format_reward_hand_cases(case):
    text, expected = FORMAT_CASES[case]
    fmt = "qwen3" if "bbox_2d" in text else "qwen2"
    fn = rewards.format_reward(fmt)
    assert fn.__name__ == "format"
    assert _call(fn, [text]) == [expected]


def test_format_reward_sees_a_cut_at_a_box_boundary_through_the_token_ids():
    fn = rewards.format_reward(end_token_ids=[7, 0])
    n = 2
    scores = fn(prompts=[None] * n, completions=[[{"role": "assistant", "content": CIRCLE}]] * n, completion_ids=[[5, 6, 7], [5, 6, 6]],
                width=[1000] * n, height=[1000] * n)
    assert scores == [1.0, 0.0]


def test_plain_string_and_content_part_completions():
    fn = rewards.detection_reward()
    parts = [{"role": "assistant", "content": [{"type": "text", "text": CIRCLE}, {"type": "text", "text": SQUARE}]}]
    assert fn(prompts=[None, None], completions=[PERFECT, parts], objects=[TRUTH] * 2, width=[1000] * 2, height=[1000] * 2) == [1.0, 1.0]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="map_length"):
        rewards.detection_reward(kind="map")
