"""The epoch contract: every row of mix's first configuration once, the others at their share, drawn afresh each epoch."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest

from qwen_instruct_det.train import config as train_config
from qwen_instruct_det.train.mixture import MixPart, Mixture, MixtureSampler, load_mixture, parse_mix

SEED_MIX = "detection=0.5,count=0.125,full_region=0.125,partial_region=0.125,none_region=0.125"


def _mixture(sizes: dict[str, int], mix: str, epoch: str = "anchor", seed: int = 0) -> Mixture:
    shares = parse_mix(mix)
    parts, start = [], 0
    for name, size in sizes.items():
        parts.append(MixPart(name, start, size, shares[name]))
        start += size
    return Mixture(datasets.Dataset.from_dict({"row": list(range(start))}), parts, "train", seed=seed, epoch=epoch)


def _by_part(mix: Mixture, indices: np.ndarray) -> dict[str, Counter]:
    return {p.name: Counter(i - p.start for i in indices.tolist() if p.start <= i < p.start + p.size) for p in mix.parts}


def test_an_epoch_holds_every_anchor_row_once_and_the_others_at_their_share():
    mix = _mixture({"detection": 100, "count": 90, "full_region": 300}, "detection=0.5,count=0.125,full_region=0.25")
    assert [p.per_epoch for p in mix.parts] == [100, 25, 50]
    assert mix.samples_per_epoch == 175
    first, second = mix.epoch_indices(0), mix.epoch_indices(1)
    for epoch in (first, second):
        seen = _by_part(mix, epoch)
        assert seen["detection"] == Counter(range(100))  # every row once
        assert sum(seen["count"].values()) == 25 and max(seen["count"].values()) == 1  # without replacement
        assert sum(seen["full_region"].values()) == 50 and max(seen["full_region"].values()) == 1
    assert set(_by_part(mix, first)["full_region"]) != set(_by_part(mix, second)["full_region"])  # a fresh draw each epoch
    assert np.array_equal(first, mix.epoch_indices(0))  # the same epoch draws the same rows: every rank, every resume
    assert not np.array_equal(np.sort(first[:100]), np.arange(100))  # shuffled together, not configuration by configuration


def test_a_configuration_smaller_than_its_share_repeats_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        mix = _mixture({"detection": 100, "count": 10}, "detection=0.5,count=0.25")
    assert mix.parts[1].per_epoch == 50 and mix.parts[1].repeats == 5.0
    assert "count/train: 50 rows per epoch from 10 rows" in caplog.text
    assert _by_part(mix, mix.epoch_indices(3))["count"] == Counter({k: 5 for k in range(10)})
    mix = _mixture({"detection": 100, "count": 40}, "detection=0.5,count=0.25")  # 50 from 40: each row once, 10 of them twice
    assert sorted(Counter(_by_part(mix, mix.epoch_indices(0))["count"].values()).items()) == [(1, 30), (2, 10)]


def test_the_seed_projects_protocol_is_every_row_of_every_configuration():
    mix = _mixture({"detection": 100, "count": 90, "full_region": 300}, "detection=0.5,count=0.125,full_region=0.125", epoch="every_row")
    assert mix.samples_per_epoch == 490
    assert sorted(mix.epoch_indices(0).tolist()) == list(range(490))


@pytest.mark.parametrize("sizes, mix, match", [
    ({"count": 0, "detection": 10}, "count=1,detection=1", "first configuration 'count' has no rows"),
    ({"detection": 10, "count": 0}, "detection=1,count=1", "'count' has no rows in split 'train'"),
])
def test_a_mix_that_cannot_make_an_epoch_says_which_configuration_and_what_to_do(sizes, mix, match):
    with pytest.raises(ValueError, match=match):
        _mixture(sizes, mix)


def test_mix_spelling_errors_name_the_fix():
    with pytest.raises(ValueError, match="twice"):
        parse_mix("detection=1,detection=2")
    with pytest.raises(ValueError, match="positive"):
        parse_mix("detection=0")
    with pytest.raises(ValueError, match="mix_epoch must be one of"):
        _mixture({"detection": 10}, "detection=1", epoch="all")


def test_the_schedule_counts_as_the_trainer_counts():
    mix = _mixture({"detection": 118_287, "count": 117_266, "full_region": 600_000, "partial_region": 705_000, "none_region": 118_000},
                   SEED_MIX)
    assert mix.samples_per_epoch == 118_287 + 4 * 29_572
    plan = mix.schedule(batch_size=1, accumulation=4, epochs=10)  # the seed recipe on one device
    assert plan["steps_per_epoch"] == 59_144 and plan["optimizer_steps"] == 591_440
    assert mix.schedule(batch_size=4, accumulation=2, processes=3, epochs=1)["steps_per_epoch"] == 9_858  # ceil(ceil(236575/4)/3)/2
    assert mix.schedule(batch_size=8, max_steps=7)["optimizer_steps"] == 7


def test_the_sampler_follows_the_epoch_the_trainer_sets():
    mix = _mixture({"detection": 20, "count": 20}, "detection=2,count=1")
    sampler = MixtureSampler(mix)
    assert len(sampler) == 30 and list(sampler) == mix.epoch_indices(0).tolist()
    sampler.set_epoch(4)
    assert list(sampler) == mix.epoch_indices(4).tolist()


def test_the_seed_recipes_epoch_on_a_60_image_set(shapes_dir, tmp_path):
    """main trained 1,000 samples an epoch here (all_exhausted over the largest configuration); the contract says 60 + 4 x 15."""
    data = train_config.DataArguments(data_dir=str(shapes_dir), mix=SEED_MIX)
    mix = load_mixture(data, "train", cache_dir=str(tmp_path))
    assert mix.parts[0].rows == 60 and [p.per_epoch for p in mix.parts] == [60, 15, 15, 15, 15]
    assert mix.samples_per_epoch == 120
    rows = mix.drawn(0)
    assert Counter(rows["task"]) == {"detection": 60, "count": 15, "full_region": 15, "partial_region": 15, "none_region": 15}
    table = mix.table(batch_size=8, epochs=10)
    assert "one epoch (anchor): 120 samples" in table and "training: 150 optimizer steps (15 per epoch, 10 epochs), 1,200 samples" in table
