"""The five task generators: from a :class:`~qwen_instruct_det.coco.CocoIndex` to rows of text.

Each generator returns :class:`TaskRows`: for every row the image it belongs to, the
prompt text, the target text and, for the region tasks, the region and the visible
fraction. Generators are pure (the same index, options and seed give the same rows) and
work on whole columns: text is assembled from vectorised box strings, and region sampling
draws many candidates for all objects of many images in one numpy call (images are
grouped by object count so the padding stays small). No I/O here; ``builder.py`` turns
rows into Arrow tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from . import boxes as B
from .coco import CocoIndex
from .formats import NO_OBJECTS, get_box_format

logger = logging.getLogger(__name__)

TASKS = ("detection", "count", "full_region", "partial_region", "none_region")
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
REGION_PROMPT = "What does the area {region} contain?"
FULL_TARGET = 'The area {region} fully contains a "{name}".'
PARTIAL_TARGET = 'The area {region} partially contains a "{name}", about {percent}% is visible.'
NONE_TARGET = "The area {region} does not contain any object from the {dataset} categories."

OTHER_MAX = 0.05  # the most of any other object a full or partial region may show
PARTIAL_MIN, PARTIAL_MAX = 0.2, 0.8
_TASK_SEED = {name: i for i, name in enumerate(TASKS)}
_CHUNK_BUDGET = 2_000_000  # candidate x object pairs per numpy call


@dataclass
class TaskOptions:
    """The options that shape the rows' text; the builder config inherits them, so each is declared once, here."""

    display_name: str = field(default="COCO", metadata={"help": "The data set's name in answers (none_region: '... from the NAME categories')."})
    box_format: str = field(default="qwen2", metadata={"help": "Box format of the text: qwen2 (Qwen2-VL), qwen2_5 (Qwen2.5-VL) or qwen3 (Qwen3-VL)."})
    regions_per_object: int = field(default=1, metadata={"help": "Region rows drawn per object (per image for none_region)."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice (regions, subsets, varied prompts)."})
    detection_prompt: str = field(default="fixed", metadata={"help": "'fixed' (the format's own prompt) or 'varied' (a seeded paraphrase)."})
    list_categories: bool = field(default=False, metadata={"help": "Append the category list to qwen2 detection prompts (JSON formats always name them)."})
    min_pixels: int = field(default=B.MIN_PIXELS, metadata={"help": "The processor's min_pixels (qwen2_5 coordinates depend on the resize)."})
    max_pixels: int = field(default=B.MAX_PIXELS, metadata={"help": "The processor's max_pixels (qwen2_5 coordinates depend on the resize)."})
    resize_factor: int = field(default=B.RESIZE_FACTOR, metadata={"help": "The processor's patch size x merge size: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL."})
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
            start=_starts(image, n),
            crowd_image=index.ann_image[crowd],
            crowd_xyxy=index.ann_xyxy[crowd],
            crowd_start=_starts(index.ann_image[crowd], n),
        )

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.start)

    def input_sizes(self, opts: TaskOptions) -> np.ndarray | None:
        """Per image ``(width, height)`` after the processor's resize; only formats that need it get it."""
        if not get_box_format(opts.box_format).needs_input_size:
            return None
        out = np.empty((self.index.num_images, 2), dtype=np.int64)
        for i, (w, h) in enumerate(zip(self.index.widths.tolist(), self.index.heights.tolist())):
            rh, rw = B.smart_resize(h, w, factor=opts.resize_factor, min_pixels=opts.min_pixels, max_pixels=opts.max_pixels)
            out[i] = (rw, rh)
        return out


def _starts(sorted_image: np.ndarray, n_images: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(sorted_image, minlength=n_images))]).astype(np.int64)


def _box_texts(objs: Objects, fmt_name: str, xyxy: np.ndarray, image: np.ndarray, input_sizes) -> list[str]:
    fmt = get_box_format(fmt_name)
    idx = objs.index
    sizes = None if input_sizes is None else input_sizes[image]
    return fmt.box_texts(xyxy, idx.widths[image], idx.heights[image], sizes)


def detection(objs: Objects, opts: TaskOptions) -> TaskRows:
    """One row per image: every non-crowd object, grouped by category in id order, boxes in reading order."""
    idx = objs.index
    fmt = get_box_format(opts.box_format)
    texts = _box_texts(objs, opts.box_format, objs.xyxy, objs.image, objs.input_sizes(opts))
    names = idx.category_names
    empty = NO_OBJECTS.format(dataset=opts.display_name)
    completions = []
    starts = objs.start.tolist()
    cats = objs.category.tolist()
    for i in range(idx.num_images):
        a, b = starts[i], starts[i + 1]
        completions.append(fmt.assemble(texts[a:b], [names[c] for c in cats[a:b]]) if b > a else empty)
    prompts = _detection_prompts(idx.num_images, opts, names)
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
    rng = np.random.default_rng([opts.seed, _TASK_SEED["detection"]])
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


def _snap_outward(regions: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Grow regions to the 0-1000 grid so the text states exactly the stored pixel region."""
    size = np.stack([w, h, w, h], axis=-1).astype(np.float64)
    g = regions / size
    g *= B.GRID
    corner = g[..., :2]
    corner += 1e-9
    np.floor(corner, out=corner)
    corner = g[..., 2:]
    corner -= 1e-9
    np.ceil(corner, out=corner)
    np.clip(g, 0, B.GRID, out=g)
    g /= B.GRID
    g *= size
    return g


def _chunks(counts: np.ndarray, candidates: int):
    """Image indices grouped by object count, each group sized to the numpy budget."""
    order = np.argsort(counts, kind="stable")
    i = 0
    while i < len(order):
        peek = counts[order[min(i + 4096, len(order)) - 1]]
        size = int(np.clip(_CHUNK_BUDGET // (candidates * max(int(peek), 1) ** 2), 1, 4096))
        yield order[i : i + size]
        i += size


def _pad(start: np.ndarray, xyxy: np.ndarray, images: np.ndarray, width: int):
    """``(len(images), width, 4)`` boxes of each image and the validity mask."""
    counts = start[images + 1] - start[images]
    valid = np.arange(width)[None, :] < counts[:, None]
    rows, cols = np.nonzero(valid)
    out = np.zeros((len(images), width, 4))
    out[rows, cols] = xyxy[start[images][rows] + cols]
    return out, valid


def _first_valid(n: int, candidates: int, propose, check, block: int = 8):
    """The first proposed region per target that ``check`` accepts.

    Candidates are drawn and tested a block at a time for the targets still unresolved, so
    easy targets cost one block. ``propose(rows, k0, k) -> (t, k, 4)`` regions for targets
    ``rows`` (candidate numbers ``k0..k0+k``); ``check(rows, regions) -> (ok (t, k), value (t, k))``.
    Returns (found, region, value) per target.
    """
    found = np.zeros(n, dtype=bool)
    chosen = np.full((n, 4), np.nan)
    value = np.full(n, np.nan)
    rows = np.arange(n)
    for k0 in range(0, candidates, block):
        if len(rows) == 0:
            break
        part = propose(rows, k0, min(block, candidates - k0))
        ok, val = check(rows, part)
        first = ok.argmax(axis=1)
        hit = ok[np.arange(len(rows)), first]
        done = rows[hit]
        found[done] = True
        chosen[done] = part[hit, first[hit]]
        value[done] = val[hit, first[hit]]
        rows = rows[~hit]
    return found, chosen, value


class _ObjectRegionSampler:
    """Candidate regions and the full/partial rules for the target objects of one chunk of images."""

    def __init__(self, task, rng, padded, valid, b, j, widths, heights, candidates):
        self.task, self.rng = task, rng
        T = len(b)
        self.box = padded[b, j]
        self.W = widths.astype(np.float64)[:, None]
        self.H = heights.astype(np.float64)[:, None]
        self.bw, self.bh = self.box[:, 2] - self.box[:, 0], self.box[:, 3] - self.box[:, 1]
        self.others = padded[b]
        self.others_valid = valid[b].copy()
        self.others_valid[np.arange(T), j] = False
        # the most of each other object a region may cover (OTHER_MAX of its area); padding and the target itself: no limit
        self.other_limit = np.where(self.others_valid, OTHER_MAX * B.area(self.others), np.inf)
        self.scale = np.linspace(0.5, 0.0, candidates)  # full: margins shrink along the candidates, to the object's own box

    def propose(self, rows, k0, k):
        bx, w, h, rng = self.box[rows, None, :], self.bw[rows, None], self.bh[rows, None], self.rng
        t = len(rows)
        if self.task == "full_region":
            m = rng.random((t, k, 4)) * self.scale[None, k0 : k0 + k, None] * np.stack([w, h, w, h], axis=-1)
            cand = bx + m * np.array([-1.0, -1.0, 1.0, 1.0])
        else:
            sw, sh = w * rng.uniform(0.5, 1.5, (t, k)), h * rng.uniform(0.5, 1.5, (t, k))
            cx = (bx[..., 0] + bx[..., 2]) / 2 + w * rng.uniform(-0.8, 0.8, (t, k))
            cy = (bx[..., 1] + bx[..., 3]) / 2 + h * rng.uniform(-0.8, 0.8, (t, k))
            cand = np.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2], axis=-1)
        return _snap_outward(B.clip(cand, self.W[rows], self.H[rows]), self.W[rows], self.H[rows])

    def check(self, rows, block):
        own = B.visible_fraction(self.box[rows, None], block)[:, 0]  # (t, k)
        ok = (block[..., 2] > block[..., 0]) & (block[..., 3] > block[..., 1])
        if self.task == "full_region":
            ok &= own >= 1.0 - 1e-9
        else:
            ok &= (own >= PARTIAL_MIN) & (own <= PARTIAL_MAX)
        r, c = np.nonzero(ok)  # the other objects only matter for candidates that already pass the own rule
        if len(r):
            inter = B.intersection(self.others[rows[r]], block[r, c][:, None, :])[..., 0]  # (m, width)
            ok[r, c] = np.all(inter <= self.other_limit[rows[r]], axis=1)
        return ok, own

    def possible(self) -> np.ndarray:
        """Targets worth searching. A region holding an object holds its own (snapped) box, so if that
        already shows too much of another object no full region exists."""
        every = np.arange(len(self.box))
        if self.task != "full_region":
            return every
        ok, _ = self.check(every, _snap_outward(self.box[:, None, :], self.W, self.H))
        return np.flatnonzero(ok[:, 0])


def _object_regions(objs: Objects, opts: TaskOptions, task: str):
    """Sample a full or partial region for each target object; NaN where none satisfies the rule."""
    idx = objs.index
    R, K = opts.regions_per_object, opts.candidates
    n_targets = len(objs.image) * R
    region = np.full((n_targets, 4), np.nan)
    fraction = np.full(n_targets, np.nan)
    counts = objs.counts
    for c, images in enumerate(_chunks(counts, K * R)):
        width = int(counts[images].max())
        if width == 0:
            continue
        rng = np.random.default_rng([opts.seed, _TASK_SEED[task], c])
        padded, valid = _pad(objs.start, objs.xyxy, images, width)
        b, j = np.nonzero(valid)
        target = np.repeat((objs.start[images][b] + j) * R, R) + np.tile(np.arange(R), len(b))
        b, j = np.repeat(b, R), np.repeat(j, R)
        sampler = _ObjectRegionSampler(task, rng, padded, valid, b, j, idx.widths[images][b], idx.heights[images][b], K)
        live = sampler.possible()
        found, chosen, own = _first_valid(
            len(live), K, lambda rows, k0, k, s=sampler, lv=live: s.propose(lv[rows], k0, k),
            lambda rows, block, s=sampler, lv=live: s.check(lv[rows], block),
        )
        region[target[live[found]]] = chosen[found]
        fraction[target[live[found]]] = own[found]
    return region, fraction


def _region_rows(objs: Objects, opts: TaskOptions, task: str) -> TaskRows:
    region, fraction = _object_regions(objs, opts, task)
    found = ~np.isnan(fraction)
    R = opts.regions_per_object
    obj = np.flatnonzero(found) // R
    image = objs.image[obj]
    texts = _box_texts(objs, opts.box_format, region[found], image, objs.input_sizes(opts))
    names = [objs.index.category_names[c] for c in objs.category[obj].tolist()]
    prompts = [REGION_PROMPT.format(region=t) for t in texts]
    if task == "full_region":
        completions = [FULL_TARGET.format(region=t, name=n) for t, n in zip(texts, names)]
    else:
        percents = (np.floor(fraction[found] * 10 + 0.5) * 10).astype(int).tolist()
        completions = [PARTIAL_TARGET.format(region=t, name=n, percent=p) for t, n, p in zip(texts, names, percents)]
    skipped = {"objects_without_region": int((~found).sum())}
    if skipped["objects_without_region"]:
        logger.info("%s: no valid region for %d of %d object draws", task, skipped["objects_without_region"], len(found))
    return TaskRows(task, image, prompts, completions, region[found], fraction[found], skipped)


def full_region(objs: Objects, opts: TaskOptions) -> TaskRows:
    """Per object: a region holding it entirely and at most 5% of any other object."""
    return _region_rows(objs, opts, "full_region")


def partial_region(objs: Objects, opts: TaskOptions) -> TaskRows:
    """Per object: a region showing 20-80% of it and at most 5% of any other object."""
    return _region_rows(objs, opts, "partial_region")


def none_region(objs: Objects, opts: TaskOptions) -> TaskRows:
    """Per image: regions sized like the image's objects that overlap no box, crowd boxes and the boxes of categories a
    filter left out included."""
    idx = objs.index
    R, K = opts.regions_per_object, opts.candidates
    n = idx.num_images
    # every box, crowd and filtered-out categories included, sorted by image
    all_image = np.concatenate([objs.image, objs.crowd_image, idx.other_image])
    order = np.argsort(all_image, kind="stable")
    occupied = np.concatenate([objs.xyxy, objs.crowd_xyxy, idx.other_xyxy])[order]
    occ_start = _starts(all_image[order], n)
    occ_counts = np.diff(occ_start)
    region = np.full((n * R, 4), np.nan)
    for c, images in enumerate(_chunks(occ_counts, K * R)):
        rng = np.random.default_rng([opts.seed, _TASK_SEED["none_region"], c])
        width = max(int(occ_counts[images].max()), 1)
        padded, valid = _pad(occ_start, occupied, images, width)
        b = np.repeat(np.arange(len(images)), R)
        target = np.repeat(images * R, R) + np.tile(np.arange(R), len(images))
        T = len(b)
        img = images[b]
        W = idx.widths[img].astype(np.float64)[:, None]
        H = idx.heights[img].astype(np.float64)[:, None]
        n_obj = objs.counts[img]
        first_obj = objs.start[img]

        def propose(rows, k0, k, _W=W, _H=H, _n=n_obj, _first=first_obj, _rng=rng):
            t = len(rows)
            w, h, n_o = _W[rows], _H[rows], _n[rows][:, None]
            pick = _first[rows][:, None] + np.floor(_rng.random((t, k)) * np.maximum(n_o, 1)).astype(np.int64)
            src = objs.xyxy[np.minimum(pick, max(len(objs.xyxy) - 1, 0))] if len(objs.xyxy) else np.zeros((t, k, 4))
            sw = np.where(n_o == 0, w * _rng.uniform(0.1, 0.5, (t, k)), src[..., 2] - src[..., 0])
            sh = np.where(n_o == 0, h * _rng.uniform(0.1, 0.5, (t, k)), src[..., 3] - src[..., 1])
            sw, sh = np.minimum(sw, w), np.minimum(sh, h)
            x1 = _rng.random((t, k)) * (w - sw)
            y1 = _rng.random((t, k)) * (h - sh)
            return _snap_outward(np.stack([x1, y1, x1 + sw, y1 + sh], axis=-1), w, h)

        boxes_b, valid_b = padded[b], valid[b]

        def check(rows, block, _boxes=boxes_b, _valid=valid_b):
            inter = B.intersection(_boxes[rows], block)  # (t, width, k)
            inter[~_valid[rows]] = 0.0
            ok = (inter.max(axis=1) <= 0.0) & (block[..., 2] > block[..., 0]) & (block[..., 3] > block[..., 1])
            return ok, ok

        found, chosen, _ = _first_valid(T, K, propose, check)
        region[target[found]] = chosen[found]
    found = ~np.isnan(region[:, 0])
    image = np.flatnonzero(found) // R
    texts = _box_texts(objs, opts.box_format, region[found], image, objs.input_sizes(opts))
    prompts = [REGION_PROMPT.format(region=t) for t in texts]
    completions = [NONE_TARGET.format(region=t, dataset=opts.display_name) for t in texts]
    skipped = {"images_without_region": int((~found).sum())}
    return TaskRows("none_region", image, prompts, completions, region[found], np.zeros(int(found.sum())), skipped)


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
