"""`shard_sampled_pair_metrics`: the estimates and intervals of sampled pairs from
class shards equal those of `sampled_pair_metrics` of the whole table (the same
seed draws the same pairs), and the intervals cover the exact pair means."""

from __future__ import annotations

import math

import numpy as np
import pytest
from world import run_on_threads

from ncgeom import ClassStats
from ncgeom.measure import pairs
from ncgeom.measure.classes import populated
from ncgeom.plugins import Collectives, reduce_scatter_class_stats, shard_sampled_pair_metrics

ALL = pairs.SAMPLED_PAIR_METRICS


def table(seed: int, k: int, d: int, *, unseen: tuple[int, ...] = ()):
    rng = np.random.default_rng(seed)
    kept = np.setdiff1d(np.arange(k), unseen)
    y = np.concatenate([kept, rng.choice(kept, size=4 * k)])
    x = 100.0 + 2 * rng.normal(size=(k, d))[y] + rng.normal(size=(y.size, d))
    return x, y


def on_ranks(world, x, y, k, **kwargs):
    def work(rank: int, group: Collectives):
        local = ClassStats.from_features(x[rank::world], y[rank::world], k)
        return shard_sampled_pair_metrics(
            reduce_scatter_class_stats(local, group), group, ALL, 3000, **kwargs
        )

    results = run_on_threads(world, work)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


@pytest.mark.filterwarnings("ignore:classes .* have no samples")
@pytest.mark.parametrize("world", [1, 2, 4])
def test_equal_to_the_sampled_pairs_of_the_whole_table(world):
    k, d = 120, 7
    x, y = table(world, k, d, unseen=(3, 64))
    view = populated(ClassStats.from_features(x, y, k))
    want, want_half = pairs.sampled_pair_metrics(view, ALL, 3000, seed=5, s=3.0)
    for got, half in on_ranks(world, x, y, k, seed=5, s=3.0):
        for name in ALL:
            assert got[name] == pytest.approx(float(want[name]), rel=1e-10), name
            assert half[name] == pytest.approx(float(want_half[name]), rel=1e-8, abs=1e-15), name
    assert half["interference_mean"] == 0.0


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_the_same_estimates_at_extreme_feature_scales(scale):
    k, d = 60, 5
    x, y = table(3, k, d)
    view = populated(ClassStats.from_features(x, y, k))
    want, _ = pairs.sampled_pair_metrics(view, ALL, 3000, seed=2)
    got, _ = on_ranks(3, scale * x, y, k, seed=2)[1]
    for name in ALL:  # every estimate is scale-free
        assert got[name] == pytest.approx(float(want[name]), rel=1e-9), name


def test_intervals_cover_the_exact_means():
    k, d = 150, 6
    x, y = table(9, k, d)
    view = populated(ClassStats.from_features(x, y, k))
    exact, _ = pairs.pair_metrics(view, ("cdnv", "equiangularity", "orthogonality_error"))
    covered = []
    for seed in range(20):
        got, half = on_ranks(2, x, y, k, seed=seed)[0]
        covered += [abs(got[n] - float(exact[n])) <= half[n] for n in ("cdnv", "equiangularity")]
    assert sum(covered) >= 0.85 * len(covered)  # 95% intervals; at least 34 of 40


def test_fewer_than_two_classes_and_bad_arguments():
    x, y = np.ones((3, 2)), np.zeros(3, dtype=int)
    got, half = on_ranks(2, x, y, 3)[0]
    assert all(math.isnan(got[name]) and math.isnan(half[name]) for name in ALL)
    alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    shard = reduce_scatter_class_stats(ClassStats.from_features(*table(1, 4, 2), 4), alone)
    with pytest.raises(ValueError, match="`num_pairs`"):
        shard_sampled_pair_metrics(shard, alone, ("cdnv",), 1)
    with pytest.raises(ValueError, match="`confidence`"):
        shard_sampled_pair_metrics(shard, alone, ("cdnv",), 10, confidence=1.0)
    with pytest.raises(TypeError, match="every rank draws the same pairs"):
        shard_sampled_pair_metrics(shard, alone, ("cdnv",), 10, seed=None)
    with pytest.raises(ValueError, match="`seed`"):
        shard_sampled_pair_metrics(shard, alone, ("cdnv",), 10, seed=-1)
    with pytest.raises(ValueError, match="etf_error"):
        shard_sampled_pair_metrics(shard, alone, ("etf_error",), 10)
