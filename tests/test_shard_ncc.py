"""`shard_ncc_agreement`: the NCC agreement of every rank's rows against class shards,
against a float64 formula written here and `ncc_agreement` of the whole table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from world import run_on_threads

from ncgeom import ClassStats
from ncgeom.metrics import ncc_agreement
from ncgeom.plugins import (
    Collectives,
    class_shards,
    reduce_scatter_class_stats,
    shard_ncc_agreement,
)


def problem(seed: int, k: int, d: int, *, unseen: tuple[int, ...] = (), scale: float = 1.0):
    """Training rows (every class but `unseen`), test rows, W and b."""
    rng = np.random.default_rng(seed)
    centres = 2 * rng.normal(size=(k, d))
    kept = np.setdiff1d(np.arange(k), unseen)
    y = np.concatenate([kept, rng.choice(kept, size=20 * k)])
    x = scale * (centres[y] + rng.normal(size=(y.size, d)))
    test = scale * (centres[rng.integers(0, k, size=150)] + 1.5 * rng.normal(size=(150, d)))
    w = centres + rng.normal(size=(k, d))
    return x, y, test, w, rng.normal(size=k)


def formula(x, y, test, w, b, k) -> int:
    """Rows where the nearest class mean (classes with samples) is the top logit."""
    means = np.stack([x[y == c].mean(0) if np.any(y == c) else np.full(x.shape[1], np.inf)
                      for c in range(k)])  # fmt: skip
    dist = ((test[:, None, :] - means[None]) ** 2).sum(-1)
    logits = test @ w.T + (0 if b is None else b)
    return int(np.sum(np.argmin(dist, 1) == np.argmax(logits, 1)))


def on_ranks(world, x, y, test, w, b, k, cuts=None):
    """`shard_ncc_agreement` on `world` simulated ranks: the training rows dealt
    round-robin, the test rows cut at `cuts` (uneven, maybe empty)."""
    cuts = np.array_split(np.arange(len(test)), world) if cuts is None else cuts

    def work(rank: int, group: Collectives):
        local = ClassStats.from_features(x[rank::world], y[rank::world], k)
        shard = reduce_scatter_class_stats(local, group)
        start, stop = class_shards(k, world)[rank]
        bias = None if b is None else b[start:stop]
        return shard_ncc_agreement(test[cuts[rank]], shard, group, w[start:stop], bias)

    return run_on_threads(world, work)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_equals_the_formula_and_the_whole_table(world):
    k, d = 9, 6
    x, y, test, w, b = problem(world, k, d, unseen=(4,))
    want = formula(x, y, test, w, b, k)
    stats = ClassStats.from_features(x, y, k)
    whole = ncc_agreement(test, w, stats.means, b)
    assert int(whole.matches) == want
    edges = [*[0, 100, 100, 130][:world], 150]  # uneven; rank 2 of 3 or 4 has no row
    cuts = [np.arange(lo, hi) for lo, hi in itertools.pairwise(edges)]
    for found in on_ranks(world, x, y, test, w, b, k, cuts):
        assert int(found.matches) == want and int(found.total) == len(test)
    assert 0 < want < len(test)


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_at_extreme_feature_scales_and_k_above_d(scale):
    k, d = 12, 3
    x, y, test, w, _ = problem(7, k, d, scale=scale)
    want = formula(x / scale, y, test / scale, w, None, k)
    for found in on_ranks(3, x, y, test, w * 1e-200, None, k):
        assert int(found.matches) == want


def test_a_rank_of_no_class():
    x, y, test, w, b = problem(3, 2, 4)
    for found in on_ranks(3, x, y, test, w, b, 2):  # rank 2 owns no class
        assert int(found.matches) == formula(x, y, test, w, b, 2)


def test_every_rank_empty():
    x, y, test, w, b = problem(3, 4, 4)
    empty = [np.arange(0)] * 2
    for found in on_ranks(2, x, y, test, w, b, 4, empty):
        assert int(found.total) == 0 and np.isnan(found.fraction)


def test_a_refused_batch_raises_on_every_rank():
    x, y, test, w, b = problem(5, 4, 3)
    test = test.copy()
    test[0, 1] = np.nan
    cuts = [np.arange(0, 10), np.arange(10, 20)]
    first, second = on_ranks(2, x, y, test, w, b, 4, cuts)
    assert isinstance(first, ValueError) and "`features` must be finite" in str(first)
    assert isinstance(second, ValueError) and "rank 0's features were refused" in str(second)


def test_wrong_shapes_are_named():
    alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    shard = reduce_scatter_class_stats(ClassStats.from_features(np.eye(3), np.arange(3), 3), alone)
    with pytest.raises(ValueError, match=r"`features` must have shape \(rows, 3\)"):
        shard_ncc_agreement(np.zeros((2, 4)), shard, alone, np.eye(3))
    with pytest.raises(ValueError, match=r"`classifier` must have shape \(3, 3\)"):
        shard_ncc_agreement(np.zeros((2, 3)), shard, alone, np.eye(2))
    with pytest.raises(ValueError, match="`classifier` must be finite"):
        shard_ncc_agreement(np.zeros((2, 3)), shard, alone, np.full((3, 3), np.inf))
