"""Sharded class statistics: `class_shards`, the optional reduce-scatter
collective and `reduce_scatter_class_stats`.

The simulated world of tests/world.py plays 2 to 4 ranks on threads; one
spawn of two gloo processes runs the torch plugin's collectives for real.
Every result is compared with float64 formulas on all the samples, written
here, and with the rows of `reduce_class_stats`.
"""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from gloo import spawn_ranks
from world import reduce_on_threads, run_on_threads, shard_on_threads

import ncgeom.metrics as metrics_module
from ncgeom import ClassStats, nc_report
from ncgeom.plugins import (
    ClassShard,
    Collectives,
    ShardedClassStats,
    class_shards,
    reduce_class_stats,
    reduce_scatter_class_stats,
    shard_classifier_metrics,
    shard_classifier_pair_metrics,
    shard_metrics,
    shard_pair_metrics,
    shard_report,
)
from ncgeom.testing.conformance import ConformanceError, check_plugin


# ----------------------------------------------------------------------------- data
def dataset(
    seed: int, k: int, d: int, n: int, *, centre: float = 1e3, spread: float = 1e-2
) -> tuple[np.ndarray, np.ndarray]:
    """Features far from the origin with a small within-class spread (where
    sums about other shifts than the class means cancel), every class present."""
    rng = np.random.default_rng(seed)
    means = centre + rng.normal(size=(k, d))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])
    features = means[labels] + spread * rng.normal(size=(n, d))
    return features, labels


def split(labels: np.ndarray, world: int, seed: int) -> list[np.ndarray]:
    """Rows of each rank: uneven, rank 1 lacks class 0 and the last rank lacks class 1."""
    rng = np.random.default_rng(seed)
    owner = rng.choice(
        world, size=labels.size, p=np.arange(1, world + 1) / (world * (world + 1) / 2)
    )
    owner[labels == 0] = np.where(owner[labels == 0] == 1, 0, owner[labels == 0])
    owner[labels == 1] = np.where(owner[labels == 1] == world - 1, 0, owner[labels == 1])
    return [np.flatnonzero(owner == r) for r in range(world)]


def formulas(features: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Counts, means, class variances and the within scatter, by direct float64 formulas."""
    counts = np.bincount(labels, minlength=k)
    means = np.stack(
        [
            features[labels == c].mean(axis=0) if counts[c] else np.full(features.shape[1], np.nan)
            for c in range(k)
        ]
    )
    dev = features - means[labels]
    variances = np.array(
        [(dev[labels == c] ** 2).sum(axis=1).mean() if counts[c] else np.nan for c in range(k)]
    )
    return {"counts": counts, "means": means, "variances": variances, "scatter": dev.T @ dev}


def within_scatter(shards: list[ClassShard]) -> np.ndarray:
    """The within scatter from the shards: the pooled Gram about the shifts less
    every shard's ``sum_k n_k offset_k offset_k^T`` (in the features' units)."""
    scale = float(np.asarray(shards[0].stats.unit_scale))
    scatter = np.asarray(shards[0].gram, dtype=np.float64).copy()
    for shard in shards:
        offsets = np.asarray(shard.stats.offsets, dtype=np.float64)
        n = np.asarray(shard.stats.counts, dtype=np.float64)
        scatter -= offsets.T @ (n[:, None] * offsets)
    return scatter * scale * scale


def assert_shards(
    shards: list[Any], features: np.ndarray, labels: np.ndarray, k: int, rtol: float = 1e-10
) -> None:
    """The shards tile the classes and equal the float64 formulas on all samples."""
    for result in shards:
        assert isinstance(result, ClassShard), result
    want = formulas(features, labels, k)
    assert [(s.offset, s.offset + s.stats.num_classes) for s in shards] == class_shards(
        k, len(shards)
    )
    for shard in shards:
        rows = slice(shard.offset, shard.offset + shard.stats.num_classes)
        assert shard.num_classes == k
        assert shard.num_samples == labels.size
        assert shard.stats.gram is None
        np.testing.assert_array_equal(np.asarray(shard.stats.counts), want["counts"][rows])
        np.testing.assert_allclose(np.asarray(shard.stats.means), want["means"][rows], rtol=rtol)
        np.testing.assert_allclose(
            np.asarray(shard.stats.class_variances), want["variances"][rows], rtol=rtol
        )
    scatter = within_scatter(shards)
    np.testing.assert_allclose(
        scatter, want["scatter"], rtol=rtol, atol=rtol * np.abs(want["scatter"]).max()
    )


def rank_stats(
    features: np.ndarray, labels: np.ndarray, k: int, parts: list[np.ndarray]
) -> list[ClassStats]:
    """Each rank's statistics, accumulated in two batches (so its shifts are its own)."""
    stats = []
    for rows in parts:
        local = ClassStats.empty(k, features.shape[1], gram=True)
        for half in np.array_split(rows, 2):
            local = local.update(features[half], labels[half])
        stats.append(local)
    return stats


# ----------------------------------------------------------------------------- class_shards
@pytest.mark.parametrize(("k", "world"), [(1, 1), (10, 4), (7, 7), (3, 5), (1000, 64)])
def test_class_shards_are_contiguous_and_even(k: int, world: int) -> None:
    shards = class_shards(k, world)
    assert len(shards) == world
    assert shards[0][0] == 0 and shards[-1][1] == k
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(shards))
    sizes = [stop - start for start, stop in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_class_shards_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^`num_classes` must be an integer >= 1; got 0$"):
        class_shards(0, 2)
    with pytest.raises(ValueError, match=r"^`world_size` must be an integer >= 1; got -1$"):
        class_shards(3, -1)
    with pytest.raises(TypeError, match=r"`world_size`"):
        class_shards(3, 2.0)


# ----------------------------------------------------------------------------- simulated world
@pytest.mark.parametrize(("world", "k"), [(2, 5), (3, 7), (4, 10)])
def test_shards_equal_formulas_and_reduce_class_stats(world: int, k: int) -> None:
    features, labels = dataset(seed=world, k=k, d=6, n=240)
    parts = split(labels, world, seed=world)
    stats = rank_stats(features, labels, k, parts)
    shards = shard_on_threads(stats)
    assert_shards(shards, features, labels, k)
    # the rows of the unsharded reduction: same shifts, sums, squared norms and Gram
    for shard, whole in zip(shards, reduce_on_threads(stats), strict=True):
        rows = slice(shard.offset, shard.offset + shard.stats.num_classes)
        for field in ("shift", "sums", "sqnorms"):
            np.testing.assert_allclose(
                getattr(shard.stats, field), getattr(whole, field)[rows], rtol=1e-10, atol=1e-12
            )
        np.testing.assert_allclose(shard.gram, whole.gram, rtol=1e-10)
        assert float(shard.stats.unit_scale) == float(whole.unit_scale)


def test_more_ranks_than_classes_and_a_rank_without_samples() -> None:
    k = 3
    features, labels = dataset(seed=8, k=k, d=4, n=90)
    parts = [np.arange(0, 50), np.arange(50, 90), np.arange(0, 0), np.arange(0, 0)]
    stats = rank_stats(features, labels, k, parts)
    stats[3] = ClassStats.empty(k, 9, gram=True)  # no samples: its dimension is adopted
    shards = shard_on_threads(stats)
    assert_shards(shards, features, labels, k)
    assert shards[3].stats.num_classes == 0


def test_classes_nobody_saw_and_feature_scales() -> None:
    k = 6
    features, labels = dataset(seed=3, k=4, d=5, n=120, centre=2.0, spread=1.0)
    for size in (1e-20, 1e20):
        x = features * size
        parts = split(labels, 3, seed=1)
        shards = shard_on_threads(rank_stats(x, labels, k, parts))
        assert_shards(shards, x, labels, k)
        for shard in shards:  # classes 4 and 5 have no samples anywhere: NaN means
            rows = range(shard.offset, shard.offset + shard.stats.num_classes)
            unseen = [i for i, c in enumerate(rows) if c >= 4]
            assert np.isnan(np.asarray(shard.stats.means)[unseen]).all()


def test_nothing_observed_anywhere_gives_empty_shards() -> None:
    stats = [ClassStats.empty(5, 3, gram=True) for _ in range(2)]
    shards = shard_on_threads(stats)
    assert [(s.offset, s.stats.num_classes, s.num_samples) for s in shards] == [
        (0, 3, 0),
        (3, 2, 0),
    ]


# ------------------------------------------------------------------------ sharded accumulation
def accumulate_on_threads(
    features: np.ndarray, labels: np.ndarray, k: int, parts: list[np.ndarray], batches: int
) -> list[Any]:
    """`ShardedClassStats` on each rank of a simulated world: rank r streams its
    rows ``parts[r]`` in `batches` batches (some empty), then every rank shards."""

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, features.shape[1], group)
        for rows in np.array_split(parts[rank], batches):
            sharded.update(features[rows], labels[rows])
        return sharded.shard()

    return run_on_threads(len(parts), work)


@pytest.mark.parametrize(("world", "k"), [(2, 5), (3, 7), (4, 10), (4, 3)])
def test_accumulated_shards_equal_formulas_and_the_reduce_scatter(world: int, k: int) -> None:
    # (4, 3): more ranks than classes, so shards of one and of no class
    features, labels = dataset(seed=world + k, k=k, d=6, n=240)
    parts = split(labels, world, seed=world)
    parts[-1] = parts[-1][:7]  # a rank with few rows: its last batches are empty
    keep = np.sort(np.concatenate(parts))
    features, labels = features[keep], labels[keep]
    parts = split(labels, world, seed=world + 1)
    shards = accumulate_on_threads(features, labels, k, parts, batches=5)
    assert_shards(shards, features, labels, k)
    for shard, reference in zip(
        shards, shard_on_threads(rank_stats(features, labels, k, parts)), strict=True
    ):
        assert shard.num_samples == reference.num_samples
        np.testing.assert_array_equal(shard.stats.counts, reference.stats.counts)
        np.testing.assert_allclose(shard.stats.shift, reference.stats.shift, rtol=1e-12)
        np.testing.assert_allclose(shard.gram, reference.gram, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("size", [1e-20, 1.0, 1e20])
def test_accumulated_shards_at_feature_scales(size: float) -> None:
    k = 6
    features, labels = dataset(seed=5, k=4, d=5, n=120, centre=2.0, spread=1.0)
    features = features * size
    shards = accumulate_on_threads(features, labels, k, split(labels, 3, seed=2), batches=4)
    assert_shards(shards, features, labels, k)
    for shard in shards:  # classes 4 and 5: no samples anywhere
        rows = range(shard.offset, shard.offset + shard.stats.num_classes)
        unseen = [i for i, c in enumerate(rows) if c >= 4]
        assert np.isnan(np.asarray(shard.stats.means)[unseen]).all()


@pytest.mark.parametrize(
    ("spoil", "text"),
    [
        ("labels", "`labels` must lie in [0, 4)"),
        ("nan", "`features` must be finite"),  # on the host too: the owners add unchecked
        ("inf", "`features` must be finite"),
    ],
)
def test_a_refused_batch_raises_on_every_rank_and_adds_nothing(spoil: str, text: str) -> None:
    k, d = 4, 3
    rng = np.random.default_rng(0)
    good = rng.normal(size=(6, d)), np.arange(6) % k

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group)
        sharded.update(*good)
        features, labels = good[0].copy(), good[1].copy()
        if rank == 1:  # on rank 1 only
            if spoil == "labels":
                labels[2] = k
            else:
                features[3, 1] = np.nan if spoil == "nan" else np.inf
        try:
            sharded.update(features, labels)
        except ValueError as err:
            return str(err), sharded.shard().num_samples
        return "accepted", None

    results = run_on_threads(2, work)
    assert results[0] == (
        "rank 1's batch was refused there; nothing was added on any rank",
        2 * 6,
    )
    assert results[1][0].startswith(text)
    assert results[1][1] == 2 * 6


def test_sharded_accumulation_checks_its_arguments() -> None:
    alone = Collectives(0, 1, lambda x: [x], lambda x: x)
    with pytest.raises(TypeError, match="`collectives`"):
        ShardedClassStats(3, 2, "nope")
    with pytest.raises(ValueError, match="`num_classes` must be at least 2; got 1"):
        ShardedClassStats(1, 2, alone)
    with pytest.raises(TypeError, match=r"`collectives.all_reduce` must be callable"):
        ShardedClassStats(3, 2, Collectives(0, 1, lambda x: [x], None))
    with pytest.raises(ValueError, match=r"`collectives.rank`"):
        ShardedClassStats(3, 2, Collectives(2, 2, lambda x: [x], lambda x: x))
    sharded = ShardedClassStats(3, 2, alone)
    with pytest.raises(ValueError, match="`features` must have 2 columns; got 3"):
        sharded.update(np.ones((2, 3)), np.array([0, 1]))
    assert "classes 0:3 on rank 0 of 1" in repr(sharded)
    assert sharded.num_local_classes == 3


# ------------------------------------------------------------------------ metrics from shards
def metric_formulas(
    features: np.ndarray, labels: np.ndarray, k: int, global_mean: str = "samples"
) -> dict[str, float]:
    """NC1, the within variance, the trace ratio and both equinorms by float64
    formulas over the classes with samples."""
    want = formulas(features, labels, k)
    seen = want["counts"] > 0
    means, n = want["means"][seen], want["counts"][seen]
    centre = n @ means / n.sum() if global_mean == "samples" else means.mean(axis=0)
    centred = means - centre
    sigma_w = want["scatter"] / labels.size
    sigma_b = centred.T @ centred / seen.sum()
    norms = np.linalg.norm(centred, axis=1)
    return {
        "nc1": float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / seen.sum()),
        "within_variance": float(np.trace(sigma_w)),
        "nc1_trace_ratio": float(np.trace(sigma_w) / np.mean(norms**2)),
        "equinorm": float(norms.std() / norms.mean()),
        "log_equinorm": float(np.log(norms).std()),
    }


def want_means(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The unit vectors of the class means of the classes with samples."""
    means = formulas(features, labels, k)["means"]
    means = means[~np.isnan(means[:, 0])]
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def metrics_on_threads(
    shards: list[ClassShard], global_mean: str = "samples", ood: Any = None
) -> list[Any]:
    def work(rank: int, group: Collectives) -> Any:
        return shard_metrics(shards[rank], group, global_mean=global_mean, ood_mean=ood)

    return run_on_threads(len(shards), work)


@pytest.mark.parametrize(("world", "k"), [(2, 5), (3, 7), (4, 10), (4, 3)])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_metrics_from_shards_equal_the_formulas_and_the_report(world, k, global_mean) -> None:
    features, labels = dataset(seed=world * k, k=k, d=6, n=240, centre=2.0, spread=0.3)
    parts = split(labels, world, seed=world)
    shards = shard_on_threads(rank_stats(features, labels, k, parts))
    want = metric_formulas(features, labels, k, global_mean)
    ood = np.linspace(-1.0, 2.0, 6)
    report = nc_report((features, labels), num_classes=k, global_mean=global_mean, ood_mean=ood)
    want["ood_deviation"] = float(
        np.mean(np.abs(want_means(features, labels, k) @ ood) / np.linalg.norm(ood))
    )
    for result in metrics_on_threads(shards, global_mean, ood):
        assert set(result) == set(want)
        for name, value in result.items():
            assert value == pytest.approx(want[name], rel=1e-10), name
            assert value == pytest.approx(getattr(report, name), rel=1e-10), name


@pytest.mark.parametrize("size", [1e-20, 1.0, 1e20])
def test_metrics_from_accumulated_shards_with_unseen_classes_at_scales(size: float) -> None:
    k = 7  # classes 4, 5 and 6 have no samples anywhere
    features, labels = dataset(seed=9, k=4, d=5, n=160, centre=2.0, spread=0.5)
    features = features * size
    shards = accumulate_on_threads(features, labels, k, split(labels, 3, seed=3), batches=3)
    want = metric_formulas(features, labels, k)
    for result in metrics_on_threads(shards):
        for name, value in result.items():
            assert value == pytest.approx(want[name], rel=1e-9), name


def test_metrics_from_shards_where_they_are_undefined() -> None:
    # one class with samples: no between-class spread; no Gram: no NC1
    features, labels = dataset(seed=2, k=1, d=3, n=20)
    shards = shard_on_threads(rank_stats(features, labels, 4, split(labels, 2, seed=0)))
    within = np.trace(formulas(features, labels, 4)["scatter"]) / labels.size
    for result in metrics_on_threads(shards):
        assert result["within_variance"] == pytest.approx(within, rel=1e-10)
        assert all(np.isnan(result[name]) for name in result if name != "within_variance")
    features, labels = dataset(seed=2, k=3, d=3, n=30)
    alone = Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
    no_gram = reduce_scatter_class_stats(
        ClassStats.from_features(features, labels, 3, gram=False), alone
    )
    values = shard_metrics(no_gram, alone)
    assert np.isnan(values["nc1"]) and np.isfinite(values["equinorm"])
    with pytest.raises(ValueError, match=r"`global_mean`.*'median'"):
        shard_metrics(no_gram, alone, global_mean="median")
    with pytest.raises(TypeError, match=r"`shard`"):
        shard_metrics(no_gram.stats, alone)


def pairs_on_threads(shards: list[ClassShard], **kwargs: Any) -> list[Any]:
    def work(rank: int, group: Collectives) -> Any:
        return shard_pair_metrics(shards[rank], group, **kwargs)

    return run_on_threads(len(shards), work)


PAIR_NAMES = (
    "cdnv", "etf_error", "equiangularity", "orthogonality_error", "equiangularity_std",
    "interference_mean", "interference_min", "interference_max", "log_energy",
    "log_energy_variance", "riesz_log_energy", "riesz_log_variance",
)  # fmt: skip


@pytest.mark.parametrize(("world", "k", "d"), [(2, 5, 6), (3, 9, 6), (4, 10, 4), (4, 3, 6)])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_pair_metrics_from_shards_equal_the_report(world, k, d, global_mean) -> None:
    # (4, 10, 4): K > d, the regime of the kernel energies; (4, 3, 6): empty shards
    features, labels = dataset(seed=world + k, k=k, d=d, n=300, centre=2.0, spread=0.4)
    parts = split(labels, world, seed=world)
    shards = shard_on_threads(rank_stats(features, labels, k, parts))
    report = nc_report((features, labels), num_classes=k, global_mean=global_mean, pairs="exact")
    for result in pairs_on_threads(shards, global_mean=global_mean):
        assert set(result) == set(PAIR_NAMES)
        for name in PAIR_NAMES:
            assert result[name] == pytest.approx(getattr(report, name), rel=1e-9), name


@pytest.mark.filterwarnings("ignore:classes .* have no samples")
def test_pair_metrics_from_accumulated_shards_with_unseen_classes_and_exponents() -> None:
    k = 9  # classes 6, 7, 8 have no samples anywhere
    features, labels = dataset(seed=12, k=6, d=5, n=200, centre=1.0, spread=0.5)
    for size in (1e-20, 1e20):
        x = features * size
        shards = accumulate_on_threads(x, labels, k, split(labels, 3, seed=5), batches=2)
        stats = ClassStats.from_features(x, labels, k)
        for exponent in (1.0, 2.0):
            want = float(metrics_module.cdnv(stats, exponent=exponent))
            for result in pairs_on_threads(shards, names=("cdnv",), exponent=exponent):
                assert result["cdnv"] == pytest.approx(want, rel=1e-9)
        report = nc_report(stats, pairs="exact")
        for result in pairs_on_threads(shards, names=("etf_error", "riesz_log_energy"), s=3.0):
            assert result["etf_error"] == pytest.approx(report.etf_error, rel=1e-9)
            want = float(metrics_module.riesz_log_energy(stats, s=3.0))
            assert result["riesz_log_energy"] == pytest.approx(want, rel=1e-9)


@pytest.mark.filterwarnings("ignore:degenerate class geometry")
def test_metrics_from_shards_of_degenerate_geometry_are_nan() -> None:
    # every class at the same mean: no between-class spread
    rng = np.random.default_rng(3)
    labels = np.arange(60) % 4
    features = np.ones((60, 3)) + 1e-3 * rng.normal(size=(60, 3))
    features -= np.stack([features[labels == c].mean(axis=0) for c in range(4)])[labels]
    features += 1.0
    shards = shard_on_threads(rank_stats(features, labels, 4, split(labels, 2, seed=1)))
    for result in pairs_on_threads(shards, names=("cdnv", "equiangularity")):
        assert np.isnan(result["cdnv"]) and np.isnan(result["equiangularity"])
    report = nc_report((features, labels))
    for result in metrics_on_threads(shards):
        for name in ("nc1", "equinorm", "nc1_trace_ratio", "log_equinorm"):
            assert np.isnan(result[name]) and np.isnan(getattr(report, name)), name
        assert result["within_variance"] == pytest.approx(report.within_variance, rel=1e-10)
    alone = Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
    with pytest.raises(ValueError, match=r"`names`.*'nc1'"):
        shard_pair_metrics(shards[0], alone, ("nc1",))


CLASSIFIER_NAMES = (
    "self_duality_error", "scaled_alignment_error", "classifier_equinorm",
    "uniform_duality", "uniform_duality_variance", "bias_collapse",
)  # fmt: skip


def classifier_on_threads(shards, w, b, **kwargs) -> list[Any]:
    def work(rank: int, group: Collectives) -> Any:
        rows = slice(shards[rank].offset, shards[rank].offset + shards[rank].stats.num_classes)
        bias = None if b is None else b[rows]
        return shard_classifier_metrics(shards[rank], group, w[rows], bias, **kwargs)

    return run_on_threads(len(shards), work)


@pytest.mark.filterwarnings("ignore:classes .* have no samples")
@pytest.mark.parametrize(("world", "k"), [(2, 5), (3, 8), (4, 3)])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
@pytest.mark.parametrize("size", [1e-20, 1.0, 1e20])
def test_classifier_metrics_from_shards_equal_the_report(world, k, global_mean, size) -> None:
    features, labels = dataset(seed=world + k, k=k, d=5, n=200, centre=2.0, spread=0.4)
    features = features * size
    rng = np.random.default_rng(k)
    centred = formulas(features, labels, k)["means"] - features.mean(axis=0)
    w = centred / np.abs(centred).max() + 0.3 * rng.normal(size=centred.shape)
    b = rng.normal(size=k)
    k_all = k + 2  # two classes nobody saw: their rows are left out
    w_all, b_all = np.concatenate([w, rng.normal(size=(2, 5))]), np.concatenate([b, [5.0, -5]])
    shards = shard_on_threads(rank_stats(features, labels, k_all, split(labels, world, seed=1)))
    stats = ClassStats.from_features(features, labels, k_all)
    report = nc_report(stats, w_all, b_all, global_mean=global_mean)
    for result in classifier_on_threads(shards, w_all, b_all, global_mean=global_mean):
        assert set(result) == set(CLASSIFIER_NAMES)
        for name in CLASSIFIER_NAMES:
            assert result[name] == pytest.approx(getattr(report, name), rel=1e-10), name
    exact = nc_report(stats, w_all, pairs="exact")

    def pairs(rank: int, group: Collectives) -> Any:
        rows = slice(shards[rank].offset, shards[rank].offset + shards[rank].stats.num_classes)
        return shard_classifier_pair_metrics(shards[rank], group, w_all[rows])

    for result in run_on_threads(len(shards), pairs):
        for name in ("classifier_equiangularity", "classifier_etf_error"):
            assert result[name] == pytest.approx(getattr(exact, name), rel=1e-10), name
    no_bias = nc_report(stats, w_all, global_mean=global_mean).bias_collapse
    for result in classifier_on_threads(shards, w_all, None, global_mean=global_mean):
        assert result["bias_collapse"] == pytest.approx(no_bias, rel=1e-10)


@pytest.mark.filterwarnings("ignore:degenerate class geometry")
def test_classifier_metrics_from_shards_of_a_zero_classifier_are_nan() -> None:
    features, labels = dataset(seed=1, k=4, d=3, n=80, centre=2.0, spread=0.4)
    shards = shard_on_threads(rank_stats(features, labels, 4, split(labels, 2, seed=2)))
    report = nc_report((features, labels), np.zeros((4, 3)))
    for result in classifier_on_threads(shards, np.zeros((4, 3)), None):
        for name in CLASSIFIER_NAMES:
            want = getattr(report, name)
            if np.isnan(want):
                assert np.isnan(result[name]), name
            else:
                assert result[name] == pytest.approx(want, abs=1e-300), name

    def pairs(rank: int, group: Collectives) -> Any:
        zero = np.zeros((shards[rank].stats.num_classes, 3))
        return shard_classifier_pair_metrics(shards[rank], group, zero)

    for result in run_on_threads(2, pairs):
        assert np.isnan(report.classifier_etf_error) and np.isnan(result["classifier_etf_error"])
        assert np.isnan(result["classifier_equiangularity"])
    alone = Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
    with pytest.raises(ValueError, match=r"`classifier` must have shape \(2, 3\).*\(4, 3\)"):
        shard_classifier_metrics(shards[0], alone, np.zeros((4, 3)))


def test_shards_on_every_backend(backend: Any) -> None:
    k = 5
    features, labels = dataset(seed=4, k=k, d=3, n=60, centre=3.0, spread=0.5)
    parts = split(labels, 2, seed=4)
    stats = [
        ClassStats.from_features(backend.asarray(features[r]), backend.asarray(labels[r]), k)
        for r in parts
    ]
    shards = shard_on_threads(stats)
    want = formulas(features, labels, k)
    for shard in shards:
        assert isinstance(shard, ClassShard), shard
        rows = slice(shard.offset, shard.offset + shard.stats.num_classes)
        assert type(shard.stats.shift) is type(stats[0].shift)
        np.testing.assert_array_equal(backend.to_numpy(shard.stats.counts), want["counts"][rows])
        np.testing.assert_allclose(
            backend.to_numpy(shard.stats.means), want["means"][rows], rtol=1e-10
        )


# ----------------------------------------------------------------------------- broken collectives
def _scatter_mean(rank: int, xs: list[Any]) -> Any:
    start, stop = class_shards(xs[0].shape[0], len(xs))[rank]
    return (
        sum(x[start:stop] for x in xs) // len(xs)
        if xs[0].dtype.kind == "i"
        else (sum(x[start:stop] for x in xs) / len(xs))
    )


def _own_rows(rank: int, xs: list[Any]) -> Any:
    start, stop = class_shards(xs[0].shape[0], len(xs))[rank]
    return xs[rank][start:stop]


def _float_mean(rank: int, xs: list[Any]) -> Any:
    start, stop = class_shards(xs[0].shape[0], len(xs))[rank]
    total = sum(x[start:stop] for x in xs)
    return total if xs[0].dtype.kind == "i" else total / len(xs)


def _means_reversed(rank: int, xs: list[Any]) -> Any:
    # only the all-gather of the class means (2-D floating arrays) out of order
    return xs[::-1] if xs[0].ndim == 2 else xs


BROKEN = {
    "average": (
        {"reduce_scatter": _scatter_mean},
        ValueError,
        r"^`reduce_scatter` returned class "
        r"counts that sum to \d+ samples, where the ranks hold \d+ of this rank's",
    ),
    "unreduced": (
        {"reduce_scatter": _own_rows},
        ValueError,
        r"^`reduce_scatter` returned class "
        r"counts that sum to",
    ),
    "float average": (
        {"reduce_scatter": _float_mean},
        ValueError,
        r"^`reduce_scatter` \(call 2 of 3\) returned other class counts",
    ),
    "whole": (
        {"reduce_scatter": lambda rank, xs: sum(xs[1:], xs[0])},
        ValueError,
        r"^`reduce_scatter` returned a ndarray of shape \(7,\) and dtype int64; expected "
        r"one numpy array of shape \(\d,\) and dtype int64, the element-wise sum over the "
        r"ranks of the rows \d:\d \(this rank's shard\)$",
    ),
    "none": (
        {"reduce_scatter": lambda rank, xs: None},
        TypeError,
        r"^`reduce_scatter` returned None; expected one numpy array",
    ),
    "gather order": (
        {"all_gather": _means_reversed},
        ValueError,
        r"^`all_gather` returned class means as this rank's entry that are not",
    ),
    "gram average": (
        {"all_reduce": lambda rank, xs: sum(xs[1:], xs[0]) / len(xs)},
        ValueError,
        r"^`all_reduce` returned [\d.]+ samples in all, where the ranks hold 200",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_collective_raises_naming_it(case: str) -> None:
    combine, error, message = BROKEN[case]
    features, labels = dataset(seed=1, k=7, d=4, n=200)
    stats = rank_stats(features, labels, 7, split(labels, 2, seed=2))
    results = shard_on_threads(stats, combine=combine)
    raised = [r for r in results if isinstance(r, error)]
    assert raised, results
    assert not [r for r in results if isinstance(r, ClassShard)], results
    for result in raised:
        assert re.search(message, str(result)), str(result)


def test_ranks_out_of_step_or_disagreeing_are_refused_on_every_rank() -> None:
    features, labels = dataset(seed=1, k=4, d=3, n=80)
    stats = rank_stats(features, labels, 4, split(labels, 2, seed=2))
    for result in shard_on_threads(stats, per_rank=[{"step": 2}, {"step": 1}]):
        assert isinstance(result, ValueError), result
        assert "disagree on step (rank 0: 2, rank 1: 1)" in str(result)
    other = [stats[0], ClassStats.empty(5, 3, gram=True).update(features[:9], labels[:9])]
    for result in shard_on_threads(other):
        assert isinstance(result, ValueError), result
        assert "disagree on num_classes (rank 0: 4, rank 1: 5)" in str(result)


def test_collectives_without_reduce_scatter_are_refused() -> None:
    stats = ClassStats.from_features(np.eye(3), np.array([0, 1, 1]), 2)
    alone = Collectives(0, 1, lambda x: [x], lambda x: x)
    with pytest.raises(
        TypeError, match=r"^`reduce_scatter` must be callable \(.*\); got NoneType$"
    ):
        reduce_scatter_class_stats(stats, alone)
    with pytest.raises(TypeError, match=r"^`collectives` must be a Collectives; got tuple$"):
        reduce_scatter_class_stats(stats, (0, 1, list, list, list))
    with pytest.raises(ValueError, match=r"^`collectives.rank` must lie in \[0, 1\); got 1$"):
        reduce_scatter_class_stats(stats, alone._replace(rank=1, reduce_scatter=list))


# ----------------------------------------------------------------------------- conformance
class NumpyPlugin:
    """A NumPy plugin whose `collectives()` returns the given ones."""

    name = "numpy-shards"

    def __init__(self, group: Collectives) -> None:
        self.group = group

    def owns(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def to_array(self, tensor: Any) -> Any:
        if not self.owns(tensor):
            msg = f"not a NumPy array: {type(tensor).__name__}"
            raise TypeError(msg)
        return tensor

    def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
        return stats

    def collectives(self) -> Collectives:
        return self.group


ALONE = Collectives(0, 1, lambda x: [x], lambda x: x)


def test_conformance_with_and_without_reduce_scatter() -> None:
    duck = SimpleNamespace(**ALONE._replace(reduce_scatter=lambda x: x)._asdict())
    for group in (ALONE, ALONE._replace(reduce_scatter=lambda x: x), duck):
        outcome = check_plugin(NumpyPlugin(group), np.array, checks=["collectives"])
        assert outcome == {"collectives": "passed"}
    broken = {
        r"`reduce_scatter` returned \[\[0\.0, 0\.0, 0\.0\]": lambda x: 0 * x,
        r"raised ValueError: `reduce_scatter` returned a ndarray of shape \(4, 3\)": (
            lambda x: x[1:]
        ),
        r"`reduce_scatter` must be callable or None; got int": 3,
    }
    for message, scatter in broken.items():
        plugin = NumpyPlugin(ALONE._replace(reduce_scatter=scatter))
        with pytest.raises(ConformanceError, match=r"^check 'collectives' of plugin .*" + message):
            check_plugin(plugin, np.array, checks=["collectives"])


def test_conformance_checks_reduce_scatter_across_ranks() -> None:
    def run(combine: Any) -> list[Any]:
        def work(rank: int, group: Collectives) -> Any:
            return check_plugin(NumpyPlugin(group), np.array, checks=["collectives"])

        return run_on_threads(3, work, combine)

    assert run(None) == [{"collectives": "passed"}] * 3
    results = run({"reduce_scatter": _own_rows})
    for rank, result in enumerate(results):
        assert isinstance(result, ConformanceError), result
        assert "failed: `reduce_scatter` returned" in str(result), rank
        assert "the element-wise sum over the ranks of the rows" in str(result)


def test_the_framework_plugins_offer_a_conforming_reduce_scatter() -> None:
    torch = pytest.importorskip("torch")
    ncgeom_torch = pytest.importorskip("ncgeom_torch")
    outcome = check_plugin(
        ncgeom_torch.plugin, lambda a: torch.from_numpy(a).clone(), checks=["collectives"]
    )
    assert outcome == {"collectives": "passed"}
    assert ncgeom_torch.plugin.collectives().reduce_scatter is not None
    jnp = pytest.importorskip("jax.numpy")
    ncgeom_jax = pytest.importorskip("ncgeom_jax")
    outcome = check_plugin(ncgeom_jax.plugin, jnp.asarray, checks=["collectives"])
    assert outcome == {"collectives": "passed"}


# ----------------------------------------------------------------------------- two gloo processes
WORLD, K, D = 2, 5, 4


def _gloo_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    features, labels = dataset(seed=21, k=K, d=D, n=150)
    return features, labels, split(labels, WORLD, seed=21)


def _gloo_classifier() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(22)
    return rng.normal(size=(K, D)), rng.normal(size=K)


def _work(rank: int) -> dict[str, Any]:
    import torch

    import ncgeom_torch

    results: dict[str, Any] = {}
    features, labels, parts = _gloo_data()
    rows = parts[rank]
    x, y = torch.from_numpy(features[rows]), torch.from_numpy(labels[rows])
    local = ClassStats.from_features(x, y, K, gram=True)
    shard = ncgeom_torch.plugin.reduce_scatter_stats(local, step=1)
    whole = ncgeom_torch.all_reduce_stats(local, step=1)
    start, stop = shard.offset, shard.offset + shard.stats.num_classes
    results["shard"] = {
        "offset": shard.offset,
        "num_classes": shard.num_classes,
        "num_samples": shard.num_samples,
        "counts": shard.stats.counts.tolist(),
        "means": shard.stats.means.tolist(),
        "variances": shard.stats.class_variances.tolist(),
        "offsets": shard.stats.offsets.tolist(),
        "gram": (shard.gram * shard.stats.unit_scale**2).tolist(),
        "scale": float(shard.stats.unit_scale),
        "is_torch": isinstance(shard.stats.shift, torch.Tensor),
    }
    results["whole_rows"] = {
        "shift": whole.shift[start:stop].tolist(),
        "sums": whole.sums[start:stop].tolist(),
        "sqnorms": whole.sqnorms[start:stop].tolist(),
        "gram": whole.gram.tolist(),
    }
    results["shard_raw"] = {
        "shift": shard.stats.shift.tolist(),
        "sums": shard.stats.sums.tolist(),
        "sqnorms": shard.stats.sqnorms.tolist(),
        "gram": shard.gram.tolist(),
    }
    sharded = ShardedClassStats(
        K, D, ncgeom_torch.plugin.collectives(), xp=torch, dtype=torch.float64
    )
    for part in np.array_split(rows, 3):  # three batches of this rank's rows
        sharded.update(torch.from_numpy(features[part]), torch.from_numpy(labels[part]))
    accumulated = sharded.shard()
    results["accumulated"] = {
        "offset": accumulated.offset,
        "num_samples": accumulated.num_samples,
        "counts": accumulated.stats.counts.tolist(),
        "means": accumulated.stats.means.tolist(),
        "variances": accumulated.stats.class_variances.tolist(),
        "offsets": accumulated.stats.offsets.tolist(),
        "gram": (accumulated.gram * accumulated.stats.unit_scale**2).tolist(),
        "scale": float(accumulated.stats.unit_scale),
        "is_torch": isinstance(accumulated.stats.shift, torch.Tensor),
    }
    group = ncgeom_torch.plugin.collectives()
    results["metrics"] = shard_metrics(shard, group)
    results["pairs"] = shard_pair_metrics(shard, group)
    w, b = _gloo_classifier()
    rows = slice(shard.offset, shard.offset + shard.stats.num_classes)
    results["classifier"] = shard_classifier_metrics(
        shard, group, torch.from_numpy(w[rows]), torch.from_numpy(b[rows])
    )
    results["classifier_pairs"] = shard_classifier_pair_metrics(
        shard, group, torch.from_numpy(w[rows])
    )
    results["report"] = shard_report(
        shard, group, torch.from_numpy(w[rows]), torch.from_numpy(b[rows])
    ).to_dict()
    tracker = ncgeom_torch.NCTracker(K, shard_classes=True)
    for part in np.array_split(parts[rank], 3):
        tracker.observe(torch.from_numpy(features[part]), torch.from_numpy(labels[part]))
    layer = torch.nn.Linear(D, K).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
    results["tracker"] = tracker.report(layer).to_dict()
    batches = [
        (torch.from_numpy(features[part]), torch.from_numpy(labels[part]))
        for part in np.array_split(parts[rank], 3)
    ]
    evaluated = ncgeom_torch.NCTracker(K, shard_classes=True).evaluate(
        torch.nn.Sequential(torch.nn.Identity(), layer), batches, layer
    )
    results["evaluated"] = {"ncc": evaluated.ncc_agreement, "nc1": evaluated.nc1}
    results["conformance"] = check_plugin(
        ncgeom_torch.plugin, lambda a: torch.from_numpy(a).clone(), checks=["collectives"]
    )
    return results


@pytest.fixture(scope="module")
def gloo_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    del torch
    return spawn_ranks(_work, tmp_path_factory.mktemp("shards"), WORLD)


def test_two_gloo_processes_shard_exactly(gloo_ranks: list[dict[str, Any]]) -> None:
    features, labels, _ = _gloo_data()
    want = formulas(features, labels, K)
    assert [(r["shard"]["offset"], len(r["shard"]["counts"])) for r in gloo_ranks] == [
        (0, 3),
        (3, 2),
    ]
    assert_gloo_shards([r["shard"] for r in gloo_ranks], labels, want)
    for result in gloo_ranks:
        assert result["shard"]["num_classes"] == K
        for field, value in result["shard_raw"].items():
            np.testing.assert_allclose(
                value, result["whole_rows"][field], rtol=1e-10, atol=1e-12, err_msg=field
            )


def assert_gloo_shards(
    shards: list[dict[str, Any]], labels: np.ndarray, want: dict[str, np.ndarray]
) -> None:
    """The shards that the gloo ranks wrote equal the float64 formulas `want`."""
    scatter = np.array(shards[0]["gram"])
    for shard in shards:
        rows = slice(shard["offset"], shard["offset"] + len(shard["counts"]))
        assert shard["is_torch"]
        assert shard["num_samples"] == labels.size
        assert shard["counts"] == want["counts"][rows].tolist()
        np.testing.assert_allclose(shard["means"], want["means"][rows], rtol=1e-10)
        np.testing.assert_allclose(shard["variances"], want["variances"][rows], rtol=1e-10)
        offsets, n = np.array(shard["offsets"]), np.array(shard["counts"], dtype=float)
        scatter = scatter - offsets.T @ (n[:, None] * offsets) * shard["scale"] ** 2
    np.testing.assert_allclose(
        scatter, want["scatter"], rtol=1e-10, atol=1e-10 * np.abs(want["scatter"]).max()
    )


def test_two_gloo_processes_accumulate_at_the_owners(gloo_ranks: list[dict[str, Any]]) -> None:
    features, labels, _ = _gloo_data()
    want = formulas(features, labels, K)
    assert_gloo_shards([r["accumulated"] for r in gloo_ranks], labels, want)
    for result in gloo_ranks:
        assert result["accumulated"]["offset"] == result["shard"]["offset"]


def test_two_gloo_processes_give_the_metrics_of_the_whole_table(
    gloo_ranks: list[dict[str, Any]],
) -> None:
    features, labels, _ = _gloo_data()
    report = nc_report((features, labels), *_gloo_classifier(), num_classes=K, pairs="exact")
    for result in gloo_ranks:
        values = {
            **result["metrics"],
            **result["pairs"],
            **result["classifier"],
            **result["classifier_pairs"],
        }
        assert len(values) == 25
        for name, value in values.items():
            assert value == pytest.approx(getattr(report, name), rel=1e-9), name


def test_two_gloo_processes_report_from_shards(gloo_ranks: list[dict[str, Any]]) -> None:
    features, labels, _ = _gloo_data()
    want = nc_report((features, labels), *_gloo_classifier(), num_classes=K, pairs="exact")
    for result in gloo_ranks:
        for got in (result["report"], result["tracker"]):
            assert got["counts"] == list(want.counts)
            assert got["num_samples"] == want.num_samples
            for name in want.METRICS:
                if name in ("ncc_agreement", "objective") or getattr(want, name) is None:
                    continue
                assert got[name] == pytest.approx(getattr(want, name), rel=1e-9), name
            np.testing.assert_allclose(got["distance_norms"], want.distance_norms, rtol=1e-9)
        assert "second pass" in result["tracker"]["unavailable"]["ncc_agreement"]
        assert result["evaluated"]["ncc"] == want.ncc_agreement  # the second pass, sharded
        assert result["evaluated"]["nc1"] == pytest.approx(want.nc1, rel=1e-9)


def test_two_gloo_processes_pass_the_collectives_check(gloo_ranks: list[dict[str, Any]]) -> None:
    assert [r["conformance"] for r in gloo_ranks] == [{"collectives": "passed"}] * WORLD


def test_collectives_with_reduce_scatter_still_pass_as_keywords() -> None:
    """The documented ``reduce_class_stats(stats, **collectives._asdict())`` keeps working."""
    features, labels = dataset(seed=6, k=3, d=2, n=30)
    stats = ClassStats.from_features(features, labels, 3)
    for group in (ALONE, ALONE._replace(reduce_scatter=lambda x: x)):
        reduced = reduce_class_stats(stats, **group._asdict())
        np.testing.assert_allclose(reduced.means, formulas(features, labels, 3)["means"])


def test_float32_shards_at_user_size_equal_float64_metrics() -> None:
    # 4 ranks stream 3,000 classes of 40 samples each (120,000 rows) in float32, shuffled,
    # batches of 4,096: collapsed features far from the origin (spread 2% of the means).
    k, d, world = 3000, 16, 4
    rng = np.random.default_rng(30)
    labels = rng.permutation(np.repeat(np.arange(k), 40))
    centres = 5.0 + rng.normal(size=(k, d))
    features = (centres[labels] + 0.1 * rng.normal(size=(labels.size, d))).astype(np.float32)
    parts = np.array_split(np.arange(labels.size), world)

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group, dtype=np.float32)
        for rows in np.array_split(parts[rank], 8):
            sharded.update(features[rows], labels[rows])
        shard = sharded.shard()
        names = ("cdnv", "etf_error", "equiangularity", "log_energy")
        return {**shard_metrics(shard, group), **shard_pair_metrics(shard, group, names)}

    want = nc_report((features.astype(np.float64), labels), num_classes=k, pairs="exact")
    for result in run_on_threads(world, work):
        assert len(result) == 9
        for name, value in result.items():
            assert value == pytest.approx(getattr(want, name), rel=2e-4), name
