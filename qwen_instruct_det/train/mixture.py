"""Mixing configurations into a training stream: what one epoch holds, drawn afresh each epoch.

``mix`` names configurations and their shares, the first one being the anchor:
``detection=0.5,count=0.125,...``. One epoch (``epoch="anchor"``, the default) holds every row of
the anchor once; each other configuration is drawn at its share relative to the anchor (0.125 /
0.5 = a quarter as many rows), without replacement within the epoch and afresh each epoch; one
with fewer rows than its share repeats, and the log says so. ``epoch="every_row"`` is the seed
project's protocol: every row of every configuration once per epoch, shares ignored.

A :class:`Mixture` keeps the configurations' rows one after another in one dataset (no copy:
the built Arrow files, images as paths) and draws each epoch as indices into it; the trainer
reads them through :class:`MixtureSampler`, whose ``set_epoch`` the trainer calls, so every
rank draws the same epoch and a resumed run draws the same rows again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..data.builder import builder_kwargs
from ..data.images import decode_named, undecoded
from ..data.objects import TASKS
from .lengths import token_lengths

logger = logging.getLogger(__name__)

EPOCHS = ("anchor", "every_row")
_COLUMNS = ["images", "prompt", "completion", "task", "width", "height"]


def parse_mix(mix: str) -> dict[str, float]:
    """'detection=0.6,count=0.4' (or 'detection,count' for equal parts) to normalised shares, in the order given."""
    ratios: dict[str, float] = {}
    for item in [m.strip() for m in mix.split(",") if m.strip()]:
        name, _, value = item.partition("=")
        if name not in TASKS:
            raise ValueError(f"mix names {name!r}; choose from {list(TASKS)}.")
        if name in ratios:
            raise ValueError(f"mix names {name!r} twice; give each configuration once.")
        try:
            ratios[name] = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"mix ratio for {name!r} must be a number, got {value!r}.") from None
        if not ratios[name] > 0:
            raise ValueError(f"mix ratio for {name!r} must be positive.")
    if not ratios:
        raise ValueError("mix is empty; give at least one configuration, e.g. 'detection=1.0'.")
    total = sum(ratios.values())
    return {k: v / total for k, v in ratios.items()}


@dataclass
class MixPart:
    """One configuration of a mixture: where its rows sit in the mixture's dataset, and how many an epoch draws."""

    name: str
    start: int  # its first row in the mixture's dataset
    size: int  # its rows there, long ones included
    share: float
    keep: np.ndarray | None = None  # the rows an epoch may draw (offsets from start); None: all
    per_epoch: int = 0

    @property
    def rows(self) -> int:
        """Rows an epoch may draw from (those that fit ``max_length``)."""
        return self.size if self.keep is None else len(self.keep)

    @property
    def dropped(self) -> int:
        return self.size - self.rows

    @property
    def repeats(self) -> float:
        """How many times each row is drawn per epoch on average (above 1: the configuration repeats)."""
        return self.per_epoch / self.rows if self.rows else 0.0


@dataclass
class Mixture:
    """The configurations of ``mix`` for one split, one after another in ``dataset``, and the rule that draws an epoch."""

    dataset: object  # datasets.Dataset: images undecoded (decoded by ``decode_named`` as the trainer reads rows)
    parts: list[MixPart]
    split: str
    seed: int = 0
    epoch: str = "anchor"
    lengths: np.ndarray | None = field(default=None, repr=False)  # (total, answer) tokens per row of ``dataset``, when measured
    sources: list = field(default_factory=list, repr=False)  # each configuration's split as built (their cache folders)
    categories: list[str] = field(default_factory=list)  # the category names of the rows, in id order (as the build saw them)

    def __post_init__(self):
        if self.epoch not in EPOCHS:
            raise ValueError(f"mix_epoch must be one of {EPOCHS}, got {self.epoch!r}.")
        self._plan()

    def _plan(self, warn: bool = True) -> None:
        anchor = self.parts[0]
        if anchor.rows == 0:
            why = f" ({anchor.dropped} longer than max_length)" if anchor.dropped else ""
            raise ValueError(f"mix's first configuration {anchor.name!r} has no rows in split {self.split!r}{why}; an epoch holds every row "
                             "of the first configuration, so put one that has rows first in --mix (or raise --max_length).")
        for part in self.parts:
            part.per_epoch = part.rows if self.epoch == "every_row" else int(math.floor(anchor.rows * part.share / anchor.share + 0.5))
            if part.per_epoch and not part.rows:
                raise ValueError(f"mix's configuration {part.name!r} has no rows in split {self.split!r} to draw its {part.per_epoch} "
                                 "rows per epoch from; drop it from --mix.")
            if part.repeats > 1 and warn:
                logger.warning("%s/%s: %d rows per epoch from %d rows: each row is drawn %.2f times per epoch", part.name, self.split,
                               part.per_epoch, part.rows, part.repeats)

    @property
    def samples_per_epoch(self) -> int:
        return sum(part.per_epoch for part in self.parts)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The rows of ``dataset`` that epoch ``epoch`` reads, in order (the same for every rank and every resume)."""
        rng = np.random.default_rng([self.seed, epoch])
        picks = []
        for part in self.parts:
            if not part.per_epoch:
                continue
            rows = part.start + (np.arange(part.size) if part.keep is None else part.keep)
            full, rest = divmod(part.per_epoch, len(rows))
            picks += [rows] * full
            if rest:  # without replacement within the epoch
                picks.append(rng.choice(rows, rest, replace=False))
        return rng.permutation(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)

    def drawn(self, epoch: int = 0):
        """One epoch's rows as a dataset, images decoded as read (the eval split's fixed draw, a look at the stream)."""
        return decode_named(self.dataset.select(self.epoch_indices(epoch)))

    def measure(self, processor, progress: bool = True) -> None:
        """Measure every row's token lengths (read back from beside the built splits when a run measured them before)."""
        self.lengths = np.concatenate([token_lengths(rows, processor, progress) for rows in self.sources], axis=1)

    def keep_shorter(self, max_length: int | None) -> None:
        """Let epochs draw only rows of at most ``max_length`` tokens (``lengths`` measured first); over-long rows are counted."""
        if self.lengths is None:
            raise ValueError("measure the mixture's token lengths before dropping long rows.")
        for part in self.parts:
            total = self.lengths[0, part.start:part.start + part.size]
            part.keep = None if max_length is None else np.flatnonzero(total <= max_length)
            if part.dropped:
                logger.warning("%s/%s: %d of %d rows are longer than max_length=%d tokens (image tokens included) and left out; "
                               "raise max_length or lower max_pixels to keep them", part.name, self.split, part.dropped, part.size,
                               max_length)
        self._plan()

    def longest_answer(self) -> int:
        """The longest answer, in tokens, of the rows an epoch may draw."""
        if self.lengths is None:
            return 0
        kept = [self.lengths[1, part.start + (np.arange(part.size) if part.keep is None else part.keep)] for part in self.parts]
        return int(max((k.max() for k in kept if len(k)), default=0))

    def schedule(self, batch_size: int, accumulation: int = 1, processes: int = 1, epochs: float = 1.0, max_steps: int = -1,
                 packing: dict | None = None) -> dict:
        """Samples per epoch, total samples and optimizer steps, counted as the trainer counts them (batches per process
        rounded up, then steps per epoch rounded up; ``max_steps`` > 0 wins over ``epochs``). With ``packing`` (a
        :class:`~qwen_instruct_det.train.packing.Packer`'s summary) a batch holds ``batch_size`` packed sequences."""
        units = packing["sequences_per_epoch"] if packing else self.samples_per_epoch
        batches = math.ceil(math.ceil(units / batch_size) / processes)
        steps_per_epoch = max(math.ceil(batches / accumulation), 1)
        steps = max_steps if max_steps > 0 else math.ceil(epochs * steps_per_epoch)
        total = round(steps / steps_per_epoch * self.samples_per_epoch) if packing else steps * batch_size * accumulation * processes
        return {"samples_per_epoch": self.samples_per_epoch, "steps_per_epoch": steps_per_epoch, "optimizer_steps": steps,
                "epochs": steps / steps_per_epoch, "total_samples": total, **({"packing": packing} if packing else {})}

    def summary(self, **schedule) -> dict:
        """Per configuration rows available, rows too long, rows per epoch and repeats; then the schedule (JSON-ready)."""
        parts = {p.name: {"rows": p.size, "too_long": p.dropped, "rows_per_epoch": p.per_epoch, "repeats": round(p.repeats, 3)}
                 for p in self.parts}
        return {"split": self.split, "epoch": self.epoch, "configurations": parts, "samples_per_epoch": self.samples_per_epoch,
                **(self.schedule(**schedule) if schedule else {})}

    def table(self, **schedule) -> str:
        """:meth:`summary` as the table ``qid train`` shows before the first step."""
        info = self.summary(**schedule)
        lines = [f"{'configuration':<16}{'rows':>12}{'too long':>10}{'rows/epoch':>12}{'repeats':>9}"]
        for name, p in info["configurations"].items():
            lines.append(f"{name:<16}{p['rows']:>12,}{p['too_long']:>10,}{p['rows_per_epoch']:>12,}{p['repeats']:>9.2f}")
        lines.append(f"one epoch ({info['epoch']}): {info['samples_per_epoch']:,} samples")
        if "packing" in info:
            p = info["packing"]
            lines.append(f"packed: {p['sequences_per_epoch']:,} sequences of at most {p['max_length']:,} tokens per epoch "
                         f"({p['rows_per_sequence']:.1f} rows each, {p['fill']:.0%} of their tokens filled)")
        if "optimizer_steps" in info:
            lines.append(f"training: {info['optimizer_steps']:,} optimizer steps ({info['steps_per_epoch']:,} per epoch, "
                         f"{info['epochs']:.3g} epochs), {info['total_samples']:,} samples")
        return "\n".join(lines)


class MixtureSampler:
    """The trainer's sampler over a :class:`Mixture`: each epoch's rows, drawn by ``set_epoch`` (the trainer calls it).

    With ``group_batch`` (the rows of one step over all processes), the epoch's rows are ordered by transformers' length
    grouping on their measured lengths (shuffled, then sorted by length within mega-batches of 50 steps), so that a
    batch holds rows of similar length and pads less; the longest batch comes first.
    """

    def __init__(self, mixture: Mixture, group_batch: int | None = None):
        if group_batch and mixture.lengths is None:
            raise ValueError("grouping batches by length needs the mixture's token lengths; measure them first.")
        self.mixture, self.group_batch = mixture, group_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.mixture.samples_per_epoch

    def __iter__(self):
        rows = self.mixture.epoch_indices(self.epoch)
        if self.group_batch:
            import torch
            from transformers.trainer_pt_utils import get_length_grouped_indices

            generator = torch.Generator().manual_seed(self.mixture.seed * 100_003 + self.epoch)
            rows = rows[get_length_grouped_indices(self.mixture.lengths[0, rows].tolist(), self.group_batch, generator=generator)]
        return iter(rows.tolist())


def load_mixture(data, split: str, cache_dir: str | None = None, **options) -> Mixture:
    """The configurations of ``data.mix`` for ``split`` (built or read from the cache), as one :class:`Mixture`.

    ``options`` (e.g. ``box_format``, ``min_pixels``, ``max_pixels``) go to every configuration's builder, after the
    builder options ``data`` carries.
    """
    import datasets

    from ..data.splits import prepared, split_of

    if not data.data_dir and not getattr(data, "annotation_files", None):
        raise ValueError("data_dir is not set: point it at a COCO-2017-layout folder (qid synth writes one), or pass annotation_files "
                         "and image_dirs for another layout.")
    shares = parse_mix(data.mix)
    kwargs = builder_options(data, **options)
    builders = {name: prepared(name, cache_dir, **kwargs) for name in shares}  # a build checks the data; a cached one was checked
    splits = {name: split_of(builder, split) for name, builder in builders.items()}
    parts, start = [], 0
    for name, rows in splits.items():
        parts.append(MixPart(name, start, len(rows), shares[name]))
        start += len(rows)
    # images cast to undecoded per configuration, as built (ten times cheaper than after a concatenation or a shuffle)
    dataset = datasets.concatenate_datasets([undecoded(rows.select_columns(_COLUMNS)) for rows in splits.values()])
    categories = next(iter(builders.values())).categories.get(split, [])
    return Mixture(dataset, parts, split, seed=data.build_seed, epoch=getattr(data, "mix_epoch", "anchor"), sources=list(splits.values()),
                   categories=categories)


def builder_options(data, **options) -> dict:
    """The builder keywords of a run's data arguments (its seed is ``build_seed``), then ``options`` over them."""
    kwargs = {**builder_kwargs(data), "seed": data.build_seed}
    if getattr(data, "box_format", None) is not None:
        kwargs["box_format"] = data.box_format
    return {**kwargs, **options}


def build_mixture(data, split: str, cache_dir: str | None = None, **options):
    """One epoch of ``data.mix`` for ``split`` as a dataset (images decoded as read): :func:`load_mixture`'s first draw."""
    return load_mixture(data, split, cache_dir, **options).drawn(0)
