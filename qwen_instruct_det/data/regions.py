"""The three region tasks: a region that holds one object fully, partly, or no object at all.

Region sampling draws many candidates for all objects of many images in one numpy call (images
are grouped by object count so the padding stays small) and keeps the first candidate that
satisfies the rule; an object (or image) for which none does is skipped and counted.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import boxes as B
from .objects import TASK_SEED, Objects, TaskOptions, TaskRows, box_texts, starts

logger = logging.getLogger(__name__)

REGION_PROMPT = "What does the area {region} contain?"
FULL_TARGET = 'The area {region} fully contains a "{name}".'
PARTIAL_TARGET = 'The area {region} partially contains a "{name}", about {percent}% is visible.'
NONE_TARGET = "The area {region} does not contain any object from the {dataset} categories."
OTHER_MAX = 0.05  # the most of any other object a full or partial region may show
PARTIAL_MIN, PARTIAL_MAX = 0.2, 0.8
_CHUNK_BUDGET = 2_000_000  # candidate x object pairs per numpy call


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
        rng = np.random.default_rng([opts.seed, TASK_SEED[task], c])
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
    texts = box_texts(objs, opts.box_format, region[found], image, objs.input_sizes(opts))
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
    occ_start = starts(all_image[order], n)
    occ_counts = np.diff(occ_start)
    region = np.full((n * R, 4), np.nan)
    for c, images in enumerate(_chunks(occ_counts, K * R)):
        rng = np.random.default_rng([opts.seed, TASK_SEED["none_region"], c])
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
    texts = box_texts(objs, opts.box_format, region[found], image, objs.input_sizes(opts))
    prompts = [REGION_PROMPT.format(region=t) for t in texts]
    completions = [NONE_TARGET.format(region=t, dataset=opts.display_name) for t in texts]
    skipped = {"images_without_region": int((~found).sum())}
    return TaskRows("none_region", image, prompts, completions, region[found], np.zeros(int(found.sum())), skipped)
