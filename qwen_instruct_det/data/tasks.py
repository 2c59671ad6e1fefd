"""The five task generators: from a :class:`~qwen_instruct_det.data.coco.CocoIndex` to rows of text.

Each generator returns :class:`~qwen_instruct_det.data.objects.TaskRows`: for every row the
image it belongs to, the prompt text, the target text and, for the region tasks, the region and
the visible fraction. Generators are pure (the same index, options and seed give the same rows)
and work on whole columns: text is assembled from vectorised box strings. ``detection`` and
``count`` are here, the three region tasks in ``regions.py``. No I/O; ``builder.py`` turns rows
into Arrow tables.
"""

from __future__ import annotations

import numpy as np

from ..formats import NO_OBJECTS, get_box_format
from .objects import TASK_SEED, TASKS, Objects, TaskOptions, TaskRows, box_texts
from .regions import full_region, none_region, partial_region

TASK_DESCRIPTIONS = {
    "detection": "All boxes of each image as Qwen grounding text, grouped by category in id order, boxes in reading order.",
    "count": "`NAME: N` per category present in each image (images with crowd regions left out).",
    "full_region": "A region that fully contains one object and at most 5% of any other.",
    "partial_region": "A region that shows 20-80% of one object and at most 5% of any other, the visible share stated to the nearest 10%.",
    "none_region": "A region that touches no object box: crowd boxes and categories a filter leaves out included.",
}

DETECTION_PROMPT = "Draw the bounding box of objects"
DETECTION_PARAPHRASES = (
    DETECTION_PROMPT,
    "Locate every object in the image and give its bounding box.",
    "Detect all objects in the image and output their bounding boxes.",
    "Find the objects in this image and draw a box around each one.",
)
JSON_DETECTION_PROMPT = 'Locate every instance that belongs to the following categories: "{categories}". Report bbox coordinates in JSON format.'
"""Qwen2.5-VL's and Qwen3-VL's grounding prompt, as in Qwen's cookbooks (answers: ``[{"bbox_2d": [...], "label": ...}]``)."""
COUNT_PROMPT = "Please count how many objects of each category are in the image."


def detection(objs: Objects, opts: TaskOptions) -> TaskRows:
    """One row per image: every non-crowd object, grouped by category in id order, boxes in reading order."""
    idx = objs.index
    fmt = get_box_format(opts.box_format)
    texts = box_texts(objs, opts.box_format, objs.xyxy, objs.image, objs.input_sizes(opts))
    names = idx.category_names
    empty = NO_OBJECTS.format(dataset=opts.display_name)
    completions = []
    starts = objs.start.tolist()
    cats = objs.category.tolist()
    for i in range(idx.num_images):
        a, b = starts[i], starts[i + 1]
        completions.append(fmt.assemble(texts[a:b], [names[c] for c in cats[a:b]]) if b > a else empty)
    kept = getattr(opts, "categories", None)  # a category filter: the prompt names only what the targets hold
    prompts = _detection_prompts(idx.num_images, opts, [n for n in names if not kept or n in kept])
    return TaskRows("detection", np.arange(idx.num_images), prompts, completions)


def detection_prompt(box_format: str, names: list[str], list_categories: bool = False, base: str = DETECTION_PROMPT) -> str:
    """The detection prompt in the family's own style: Qwen2-VL's plain request, or Qwen's JSON grounding prompt naming the categories."""
    if get_box_format(box_format).name != "qwen2":
        return JSON_DETECTION_PROMPT.format(categories=", ".join(names))
    return base + (" Categories: " + ", ".join(names) + "." if list_categories else "")


def _detection_prompts(n: int, opts: TaskOptions, names: list[str]) -> list[str]:
    if opts.detection_prompt == "fixed":
        return [detection_prompt(opts.box_format, names, opts.list_categories)] * n
    if opts.detection_prompt != "varied":
        raise ValueError(f"detection_prompt must be 'fixed' or 'varied', got {opts.detection_prompt!r}.")
    if get_box_format(opts.box_format).name != "qwen2":
        return [detection_prompt(opts.box_format, names)] * n
    rng = np.random.default_rng([opts.seed, TASK_SEED["detection"]])
    choices = [detection_prompt(opts.box_format, names, opts.list_categories, base) for base in DETECTION_PARAPHRASES]
    return [choices[k] for k in rng.integers(0, len(choices), n).tolist()]


def count(objs: Objects, opts: TaskOptions) -> TaskRows:
    """One row per image without crowd annotations: ``NAME: N`` per category present, in id order."""
    idx = objs.index
    has_crowd = np.diff(objs.crowd_start) > 0
    names = idx.category_names
    key = objs.image * len(names) + objs.category
    uniq, n = np.unique(key, return_counts=True)  # sorted: image, then category id
    u_img = (uniq // len(names)).tolist()
    u_cat = (uniq % len(names)).tolist()
    lines: list[list[str]] = [[] for _ in range(idx.num_images)]
    for i, c, k in zip(u_img, u_cat, n.tolist()):
        lines[i].append(f"{names[c]}: {k}")
    empty = NO_OBJECTS.format(dataset=opts.display_name)
    keep = np.flatnonzero(~has_crowd)
    completions = ["\n".join(lines[i]) if lines[i] else empty for i in keep.tolist()]
    return TaskRows("count", keep, [COUNT_PROMPT] * len(keep), completions, skipped={"images_with_crowd": int(has_crowd.sum())})


GENERATORS = {
    "detection": detection,
    "count": count,
    "full_region": full_region,
    "partial_region": partial_region,
    "none_region": none_region,
}


def generate(task: str, objs: Objects, opts: TaskOptions) -> TaskRows:
    """Rows of ``task`` for every image of ``objs``."""
    try:
        generator = GENERATORS[task]
    except KeyError:
        raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.") from None
    if opts.regions_per_object < 1:
        raise ValueError(f"regions_per_object must be at least 1, got {opts.regions_per_object}.")
    return generator(objs, opts)
