"""What every task generator shares: its options, its rows, and the index's objects grouped for whole-column work.

:class:`TaskOptions` are the options that shape the rows' text (the builder's config inherits
them), :class:`TaskRows` the rows of one task as columns, :class:`Objects` the boxes of a
:class:`~qwen_instruct_det.data.coco.CocoIndex` split into targets and crowd regions, sorted so
that a task reads each image's objects as one slice. No I/O and no text generation here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..budget import MAX_PIXELS, MIN_PIXELS, RESIZE_FACTOR, ImageBudget
from ..formats import get_box_format
from .coco import CocoIndex

TASKS = ("detection", "count", "full_region", "partial_region", "none_region")
TASK_SEED = {name: i for i, name in enumerate(TASKS)}


@dataclass
class TaskOptions:
    """The options that shape the rows' text; the builder config inherits them, so each is declared once, here."""

    display_name: str = field(default="COCO", metadata={"help": "The data set's name in answers (none_region: '... from the NAME categories')."})
    box_format: str = field(default="qwen2", metadata={"help": "Box format of the text: qwen2 (Qwen2-VL), qwen2_5 (Qwen2.5-VL) or qwen3 (Qwen3-VL)."})
    regions_per_object: int = field(default=1, metadata={"help": "Region rows drawn per object (per image for none_region)."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice (regions, subsets, varied prompts)."})
    detection_prompt: str = field(default="fixed", metadata={"help": "'fixed' (the format's own prompt) or 'varied' (a seeded paraphrase)."})
    list_categories: bool = field(default=False, metadata={"help": "Append the category list to qwen2 detection prompts (JSON formats always name them)."})
    min_pixels: int = field(default=MIN_PIXELS, metadata={"help": "The processor's min_pixels (qwen2_5 coordinates depend on the resize)."})
    max_pixels: int = field(default=MAX_PIXELS, metadata={"help": "The processor's max_pixels (qwen2_5 coordinates depend on the resize)."})
    resize_factor: int = field(default=RESIZE_FACTOR, metadata={"help": "The processor's patch size x merge size: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL."})
    candidates: int = field(default=64, metadata={"help": "Candidate regions drawn per object before it is skipped and counted."})


@dataclass
class TaskRows:
    """Rows of one task as columns; ``image`` indexes the images of the index."""

    task: str
    image: np.ndarray
    prompt: list[str]
    completion: list[str]
    region: np.ndarray | None = None  # (n, 4) pixel xyxy
    visible_fraction: np.ndarray | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class Objects:
    """The index's boxes split into targets (non-crowd, sorted by image, category, reading order) and crowd."""

    index: CocoIndex
    image: np.ndarray
    category: np.ndarray
    xyxy: np.ndarray
    start: np.ndarray  # per image, into the non-crowd arrays
    crowd_image: np.ndarray
    crowd_xyxy: np.ndarray
    crowd_start: np.ndarray

    @classmethod
    def from_index(cls, index: CocoIndex) -> Objects:
        keep = ~index.ann_crowd
        image, cat, xyxy = index.ann_image[keep], index.ann_category[keep], index.ann_xyxy[keep]
        order = np.lexsort((xyxy[:, 0], xyxy[:, 1], cat, image))
        n = index.num_images
        crowd = index.ann_crowd
        return cls(
            index=index,
            image=image[order],
            category=cat[order],
            xyxy=xyxy[order],
            start=starts(image, n),
            crowd_image=index.ann_image[crowd],
            crowd_xyxy=index.ann_xyxy[crowd],
            crowd_start=starts(index.ann_image[crowd], n),
        )

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.start)
    def input_sizes(self, opts: TaskOptions) -> np.ndarray | None:
        """Per image ``(width, height)`` after the processor's resize; only formats that need it get it."""
        if not get_box_format(opts.box_format).needs_input_size:
            return None
        return ImageBudget.from_options(opts).resized_sizes(self.index.widths, self.index.heights)



def starts(sorted_image: np.ndarray, n_images: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(sorted_image, minlength=n_images))]).astype(np.int64)


def box_texts(objs: Objects, fmt_name: str, xyxy: np.ndarray, image: np.ndarray, input_sizes) -> list[str]:
    fmt = get_box_format(fmt_name)
    idx = objs.index
    sizes = None if input_sizes is None else input_sizes[image]
    return fmt.box_texts(xyxy, idx.widths[image], idx.heights[image], sizes)
