"""The nearest simplex ETF and orthogonal frame from class shards: `shard_nearest_metrics`.

Ranks are simulated on threads (tests/world.py). Every value is compared
with ``nc_report`` of the whole table and with the Procrustes fits written
here in float64 NumPy (the simplex ETF as ``E = sqrt(K/(K-1)) (I - 11^T/K)``,
the frame as ``diag(w)``: ``min ||A - s T0 Q||`` at ``Q = U V^T`` of the SVD of
``T0^T A``), independent of the library's reflection and Gram identities.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from world import run_on_threads, shard_on_threads

from ncgeom import ClassStats, nc_report, ufm_relu_optimum
from ncgeom.measure.shard_nearest import ShardValues, shard_nearest_metrics
from ncgeom.plugins import ClassShard, Collectives, reduce_scatter_class_stats

ETF, FRAME, OPTIMUM = "nearest_etf_distance", "nearest_frame_distance", "optimum_frame_distance"
ALONE = Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)


# ----------------------------------------------------------------------------- references
def procrustes(a: np.ndarray, target: np.ndarray) -> float:
    """``min ||A - s T0 Q|| / ||A||`` over s >= 0 and Q with orthonormal rows
    (T0 (K, K) with ``||T0 e||`` the target rows' lengths), by the SVD of T0^T A."""
    u, sv, vt = np.linalg.svd(target.T @ a, full_matrices=False)
    scale = sv.sum() / np.sum(target * target)
    return float(np.linalg.norm(a - scale * target @ (u @ vt)) / np.linalg.norm(a))


def etf_formula(means: np.ndarray, counts: np.ndarray, global_mean: str) -> float:
    """The relative distance of the centred means (classes with samples) to the
    nearest simplex ETF."""
    seen = counts > 0
    means, counts = means[seen], counts[seen]
    k = len(means)
    centre = counts @ means / counts.sum() if global_mean == "samples" else means.mean(axis=0)
    simplex = np.sqrt(k / (k - 1)) * (np.eye(k) - 1 / k)
    return procrustes(means - centre, simplex)


def frame_formula(means: np.ndarray, counts: np.ndarray, lengths: Any = None) -> float:
    """The relative distance of the means (classes with samples) to the nearest
    orthogonal frame of equal (or the given) lengths."""
    seen = counts > 0
    weights = np.ones(seen.sum()) if lengths is None else np.asarray(lengths)[seen]
    return procrustes(means[seen], np.diag(weights))


# ----------------------------------------------------------------------------- worlds
def dataset(
    seed: int, means: np.ndarray, n: int, spread: float, present: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Samples about `means`; the first `present` classes (all by default) have samples."""
    rng = np.random.default_rng(seed)
    k = len(means) if present is None else present
    labels = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])
    return means[labels] + spread * rng.normal(size=(n, means.shape[1])), labels


def shards_of(
    features: np.ndarray, labels: np.ndarray, k: int, world: int, seed: int = 0
) -> list[ClassShard]:
    """The shards of `world` simulated ranks, each holding a random part of the samples."""
    owner = np.random.default_rng(seed).integers(0, world, size=labels.size)
    parts = [
        ClassStats.from_features(features[owner == r], labels[owner == r], k) for r in range(world)
    ]
    shards = shard_on_threads(parts)
    for shard in shards:
        assert isinstance(shard, ClassShard), shard
    return shards


def whole(shards: list[ClassShard]) -> ClassStats:
    """The table of all classes, rows of the shards as they are (the same means)."""

    def rows(field: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(s.stats, field)) for s in shards])

    scale = shards[0].stats.scale
    return ClassStats(rows("counts"), rows("shift"), rows("sums"), rows("sqnorms"), None, scale)


def nearest_on_threads(shards: list[ClassShard], lengths: Any = None, **kwargs: Any) -> list[Any]:
    """`shard_nearest_metrics` on every rank (with its rows of `lengths`)."""

    def work(rank: int, group: Collectives) -> Any:
        shard = shards[rank]
        own = None
        if lengths is not None:
            own = np.asarray(lengths)[shard.offset : shard.offset + shard.stats.num_classes]
        return shard_nearest_metrics(shard, group, lengths=own, **kwargs)

    results = run_on_threads(len(shards), work)
    for result in results:
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, ShardValues)
    return results


def report_of(source: Any, **kwargs: Any) -> Any:
    """`nc_report`, its warnings about unseen classes and degenerate geometry silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nc_report(source, **kwargs)


def assert_like_report(
    result: ShardValues, report: Any, names: tuple[str, ...], rtol: float, atol: float = 0.0
) -> None:
    """The values of `names` equal the report's (NaN where it has none, with its reason)."""
    reasons = dict(report.unavailable)
    assert set(result.values) == set(names)
    for name in names:
        want = getattr(report, name)
        if want is None or np.isnan(want):
            assert np.isnan(result.values[name]), name
            assert result.unavailable[name] == reasons[name], name
        else:
            assert name not in result.unavailable, name
            assert result.values[name] == pytest.approx(want, rel=rtol, abs=atol), name


def random_means(seed: int, k: int, d: int, offset: float = 0.0) -> np.ndarray:
    return offset + np.random.default_rng(seed).normal(size=(k, d))


# ----------------------------------------------------------------------------- equal to the report
@pytest.mark.parametrize(("world", "k", "d"), [(1, 5, 7), (2, 6, 6), (3, 7, 9), (4, 3, 5)])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_equal_to_the_report_and_the_formulas(
    world: int, k: int, d: int, global_mean: str
) -> None:
    # (4, 3, 5): a rank without classes; (2, 6, 6): K = d
    means = random_means(world + k, k, d, offset=0.5)
    features, labels = dataset(world, means, 240, spread=0.4)
    shards = shards_of(features, labels, k, world, seed=world)
    report = report_of((features, labels), num_classes=k, global_mean=global_mean)
    stats = whole(shards)
    counts, centres = np.asarray(stats.counts), np.asarray(stats.means)
    etf = etf_formula(centres, counts, global_mean)
    frame = frame_formula(centres, counts)
    for result in nearest_on_threads(shards, global_mean=global_mean):
        assert_like_report(result, report, (ETF, FRAME), rtol=1e-10)
        assert result.unavailable == {}
        assert result.values[ETF] == pytest.approx(etf, rel=1e-10)
        assert result.values[FRAME] == pytest.approx(frame, rel=1e-10)


def optimum_data(
    seed: int, d: int, noise: float, decay: float = 5e-3
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Samples of 6 classes about the UFM+ optimum's means (the rarest collapsed to
    zero) plus `noise` (the same size for the samples about them)."""
    counts = [300, 200, 100, 30, 10, 3]
    optimum = ufm_relu_optimum(counts, decay, decay)
    rng = np.random.default_rng(seed)
    at = np.asarray(optimum.means())
    means = np.zeros((len(counts), d))
    means[:, : at.shape[1]] = at
    means += noise * rng.normal(size=means.shape)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    features = means[labels] + noise * rng.normal(size=(labels.size, d))
    return optimum, features, labels


@pytest.mark.parametrize("world", [1, 2, 4])
def test_optimum_frame_equals_the_report(world: int) -> None:
    optimum, features, labels = optimum_data(world, 7, noise=0.05)
    lengths = np.asarray(optimum.feature_norms)
    assert lengths[-1] == 0 and lengths[0] > 0  # collapsed classes: zero target rows
    shards = shards_of(features, labels, 6, world, seed=world)
    stats = whole(shards)
    report = report_of(stats, theory=optimum)
    want = frame_formula(np.asarray(stats.means), np.asarray(stats.counts), lengths)
    for result in nearest_on_threads(shards, lengths=lengths * 3.0):  # only ratios count
        assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-10)
        assert result.values[OPTIMUM] == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------------- near the ideal
def near_ideal(kind: str, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples of 6 classes in 8 dimensions at a simplex ETF of row length 3 (offset
    by 5 for odd seeds) or an orthonormal frame of length 2, plus `noise`."""
    rng = np.random.default_rng(seed)
    k, d = 6, 8
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    if kind == "etf":
        means = 3 * np.sqrt(k / (k - 1)) * (np.eye(k) - 1 / k) @ basis.T + 5.0 * (seed % 2)
    else:
        means = 2 * basis.T
    means = means + noise * rng.normal(size=(k, d))
    labels = rng.permutation(np.repeat(np.arange(k), 20 + 7 * np.arange(k)))
    return means[labels] + noise * rng.normal(size=(labels.size, d)), labels


#: The relative distances near the ideal geometry carry the rounding of the
#: means, a few eps whatever the method (the report and the shards alike: see
#: the 40-digit check below), so they agree to this much as well as to 1e-10.
ROUNDING = 2e-15


@pytest.mark.parametrize("kind", ["etf", "frame", "optimum"])
@pytest.mark.parametrize("noise", [1e-5, 1e-8])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_near_the_ideal_geometry(kind: str, noise: float, global_mean: str) -> None:
    optimum, lengths = None, None
    if kind == "optimum":  # unequal lengths (their squares span a factor 30), two collapsed
        optimum, features, labels = optimum_data(2, 8, noise, decay=2e-2)
        lengths = np.asarray(optimum.feature_norms)
    else:
        features, labels = near_ideal(kind, noise, seed=1)
    shards = shards_of(features, labels, 6, 3, seed=2)
    stats = whole(shards)  # the same means as the shards: only the methods differ
    report = report_of(stats, global_mean=global_mean, theory=optimum)
    names = (ETF, FRAME) if optimum is None else (ETF, FRAME, OPTIMUM)
    ideal = {"etf": ETF, "frame": FRAME, "optimum": OPTIMUM}[kind]
    means, counts = np.asarray(stats.means), np.asarray(stats.counts)
    formulas = {
        ETF: etf_formula(means, counts, global_mean),
        FRAME: frame_formula(means, counts),
        OPTIMUM: frame_formula(means, counts, lengths),
    }
    for result in nearest_on_threads(shards, lengths=lengths, global_mean=global_mean):
        if global_mean == "classes" or kind != "etf":
            assert result.values[ideal] < 100 * noise  # near the ideal indeed
        for name in names:
            want = getattr(report, name)
            assert result.values[name] == pytest.approx(want, rel=1e-10, abs=ROUNDING), name
            assert result.values[name] == pytest.approx(formulas[name], rel=1e-10, abs=ROUNDING)


def test_near_the_ideal_geometry_to_40_digits() -> None:
    """Near a perfect simplex ETF (relative distance 4e-9) the shards' value is
    within a few eps of the exact distance of the shards' float64 means."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    features, labels = near_ideal("etf", 1e-8, seed=0)
    shards = shards_of(features, labels, 6, 3, seed=0)
    means = [[mpmath.mpf(float(v)) for v in row] for row in np.asarray(whole(shards).means)]
    k, d = len(means), len(means[0])
    centre = [sum(row[j] for row in means) / k for j in range(d)]
    a = mpmath.matrix([[row[j] - centre[j] for j in range(d)] for row in means])
    sv = sorted(mpmath.svd_r(a, compute_uv=False), reverse=True)[: k - 1]
    scale = sum(sv) / (k - 1)  # the rows sum to zero: only the singular values count
    exact = mpmath.sqrt(sum((s - scale) ** 2 for s in sv) / sum(x**2 for x in a))
    for result in nearest_on_threads(shards, global_mean="classes"):
        assert abs(result.values[ETF] - float(exact)) < ROUNDING
        assert float(exact) < 1e-8


@pytest.mark.parametrize("world", [1, 3])
def test_means_of_lower_rank_than_the_fit(world: int) -> None:
    # singular values of B at 1e-9..1e-6 of the largest: below what the Gram
    # resolves, computed from the Gram of the rest of B
    rng = np.random.default_rng(world)
    k, d = 6, 6
    etf = np.sqrt(k / (k - 1)) * (np.eye(k) - 1 / k) @ np.linalg.qr(rng.normal(size=(d, k)))[0].T
    for noise in (1e-9, 1e-6):
        means = etf + noise * rng.normal(size=(k, d))  # the frame: one tiny direction
        flat = rng.normal(size=(k, 2)) @ rng.normal(size=(2, d)) + noise * rng.normal(size=(k, d))
        for centres in (means, flat):
            labels = np.repeat(np.arange(k), 10)
            features = centres[labels] + noise * rng.normal(size=(labels.size, d))
            shards = shards_of(features, labels, k, world, seed=world)
            report = report_of(whole(shards), global_mean="classes")
            for result in nearest_on_threads(shards, global_mean="classes"):
                assert_like_report(result, report, (ETF, FRAME), rtol=1e-10, atol=ROUNDING)


def test_optimum_frame_of_means_of_lower_rank() -> None:
    # rows of positive length that (nearly) coincide or are parallel: B loses rank
    optimum = ufm_relu_optimum([300, 200, 100, 30, 10, 3], 5e-3, 5e-3)
    lengths = np.asarray(optimum.feature_norms)
    rng = np.random.default_rng(8)
    signs = rng.choice([-0.125, 0.125], size=(6, 5, 7))
    spread = np.concatenate([np.concatenate([s, -s]) for s in signs])  # sums to 0 a class
    labels = np.repeat(np.arange(6), 10)
    for noise in (0.0, 1e-9, 1e-6):
        means = rng.normal(size=(6, 7))
        means[1] = means[0] + noise * rng.normal(size=7)
        means[2] = 0.5 * means[3] + noise * rng.normal(size=7)
        shards = shards_of(means[labels] + spread, labels, 6, 3, seed=8)
        stats = whole(shards)
        report = report_of(stats, theory=optimum)
        want = frame_formula(np.asarray(stats.means), np.asarray(stats.counts), lengths)
        for result in nearest_on_threads(shards, lengths=lengths):
            assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-10)
            assert result.values[OPTIMUM] == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------------- where not defined
@pytest.mark.parametrize(("k", "d"), [(8, 5), (6, 5), (6, 6)])
def test_too_few_dimensions_as_the_report(k: int, d: int) -> None:
    # K - 1 > d: neither; K - 1 = d: the ETF only; K = d: both
    means = random_means(k, k, d)
    features, labels = dataset(k, means, 200, spread=0.3)
    shards = shards_of(features, labels, k, 3, seed=k)
    report = report_of((features, labels), num_classes=k)
    for result in nearest_on_threads(shards):
        assert_like_report(result, report, (ETF, FRAME), rtol=1e-10)
        assert (ETF in result.unavailable, FRAME in result.unavailable) == (d < k - 1, d < k)


@pytest.mark.parametrize("world", [2, 4])
def test_classes_without_samples_as_the_report(world: int) -> None:
    k = 7  # classes 5 and 6 have no samples anywhere
    means = random_means(3, k, 8, offset=1.0)
    features, labels = dataset(4, means, 200, spread=0.3, present=5)
    shards = shards_of(features, labels, k, world, seed=world)
    optimum = ufm_relu_optimum([40, 30, 30, 20, 20, 10, 10], 5e-3, 5e-3)
    report = report_of((features, labels), num_classes=k, theory=optimum)
    assert dict(report.unavailable)[OPTIMUM] == "the theory needs every class to have samples"
    stats = whole(shards)
    etf = etf_formula(np.asarray(stats.means), np.asarray(stats.counts), "samples")
    lengths = np.asarray(optimum.feature_norms)
    for result in nearest_on_threads(shards, lengths=lengths):
        assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-10)
        assert result.values[ETF] == pytest.approx(etf, rel=1e-10)


def test_the_optimum_frame_where_the_report_leaves_it_out() -> None:
    optimum = ufm_relu_optimum([300, 200, 100, 30, 10, 3], 5e-3, 5e-3)
    lengths = np.asarray(optimum.feature_norms)
    alive = int(np.count_nonzero(lengths))
    assert alive == 4
    means = random_means(5, 6, 3, offset=1.0)  # dim 3 < 4 non-zero rows
    features, labels = dataset(5, means, 150, spread=0.3)
    shards = shards_of(features, labels, 6, 2, seed=5)
    report = report_of((features, labels), num_classes=6, theory=optimum)
    for result in nearest_on_threads(shards, lengths=lengths):
        assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-10)
        assert result.unavailable[OPTIMUM] == (
            f"the optimum's frame has {alive} non-zero rows, more than dim = 3"
        )
    # every class collapsed: no non-zero row (as the report says of such an optimum)
    for result in nearest_on_threads(shards, lengths=np.zeros(6)):
        assert np.isnan(result.values[OPTIMUM])
        assert result.unavailable[OPTIMUM] == (
            "the optimum collapses every class: its frame has no non-zero row to fit"
        )


def test_degenerate_geometry_as_the_report() -> None:
    # every class mean exactly the same (samples +-0.5 about it, sums exact)
    rng = np.random.default_rng(7)
    signs = rng.choice([-0.5, 0.5], size=(4, 8, 5))
    noise = np.concatenate([np.concatenate([s, -s]) for s in signs])
    labels = np.repeat(np.arange(4), 16)
    optimum = ufm_relu_optimum([16, 16, 16, 16], 1e-3, 1e-3)
    lengths = np.asarray(optimum.feature_norms)
    for offset in (np.arange(1.0, 6.0), np.zeros(5)):  # equal means, then all zero
        features = offset + noise
        shards = shards_of(features, labels, 4, 2, seed=1)
        report = report_of(whole(shards), theory=optimum)
        for result in nearest_on_threads(shards, lengths=lengths):
            assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-10)
            assert np.isnan(result.values[ETF])
            assert np.isnan(result.values[FRAME]) == (not offset.any())
            assert np.isnan(result.values[OPTIMUM]) == (not offset.any())


def test_fewer_than_two_classes_with_samples() -> None:
    features, labels = dataset(1, random_means(1, 3, 4), 20, spread=0.3, present=1)
    shards = shards_of(features, labels, 3, 2)
    for result in nearest_on_threads(shards, lengths=np.ones(3)):
        assert all(np.isnan(v) for v in result.values.values())
        assert set(result.unavailable.values()) == {"fewer than two classes have samples"}
    with pytest.raises(ValueError, match="at least two classes"):
        nc_report((features, labels), num_classes=3)


@pytest.mark.parametrize("size", [1e-20, 1e20])
def test_feature_scales(size: float) -> None:
    optimum, features, labels = optimum_data(3, 7, noise=1e-4)
    lengths = np.asarray(optimum.feature_norms)
    report = report_of((features, labels), num_classes=6, theory=optimum)
    shards = shards_of(features * size, labels, 6, 3, seed=3)
    for result in nearest_on_threads(shards, lengths=lengths, global_mean="samples"):
        assert_like_report(result, report, (ETF, FRAME, OPTIMUM), rtol=1e-9)


# ----------------------------------------------------------------------------- arguments
def test_arguments_are_checked() -> None:
    features, labels = dataset(2, random_means(2, 3, 4), 30, spread=0.3)
    shard = reduce_scatter_class_stats(ClassStats.from_features(features, labels, 3), ALONE)
    with pytest.raises(TypeError, match=r"^`shard` must be a ClassShard; got ClassStats$"):
        shard_nearest_metrics(shard.stats, ALONE)
    with pytest.raises(TypeError, match=r"^`collectives` must be a Collectives; got tuple$"):
        shard_nearest_metrics(shard, tuple(ALONE))
    with pytest.raises(ValueError, match=r"^`global_mean` must be one of .*; got 'median'$"):
        shard_nearest_metrics(shard, ALONE, global_mean="median")
    finite = r"^`lengths` must be finite and >= 0; got "
    real = r"^`lengths` must be an array of real numbers; got "
    bad = [
        (
            np.ones(4),
            ValueError,
            r"^`lengths` must be an array of shape \(3,\) \(this shard's classes\); ",
        ),
        (np.array([1.0, -2.0, 1.0]), ValueError, finite + r"-2\.0 at \[1\] \(1 of 3 entries\)$"),
        (
            np.array([np.nan, 1.0, np.inf]),
            ValueError,
            finite + r"nan at \[0\] \(2 of 3 entries\)$",
        ),
        (np.array(["a", "b", "c"]), TypeError, real + r"dtype <U1$"),
        (object(), TypeError, real + r"dtype object$"),
    ]
    for lengths, error, message in bad:
        with pytest.raises(error, match=message):
            shard_nearest_metrics(shard, ALONE, lengths=lengths)
    found = shard_nearest_metrics(shard, ALONE, lengths=[1, 2, 3])  # a list of integers
    assert set(found.values) == {ETF, FRAME, OPTIMUM}


def test_on_every_backend(backend: Any) -> None:
    k, d = 5, 6
    means = random_means(6, k, d, offset=0.5)
    features, labels = dataset(6, means, 80, spread=0.3)
    shards = shards_of(features, labels, k, 2, seed=6)
    stats = whole(shards)
    report = report_of(stats)
    lengths = np.linspace(0.0, 1.0, k)
    want = frame_formula(np.asarray(stats.means), np.asarray(stats.counts), lengths)

    def on_backend(shard: ClassShard) -> ClassShard:
        fields = ("counts", "shift", "sums", "sqnorms")
        rows = [backend.asarray(np.asarray(getattr(shard.stats, f))) for f in fields]
        scale = backend.asarray(np.asarray(shard.stats.unit_scale))
        return shard._replace(stats=ClassStats(*rows, None, scale), gram=None)

    def work(rank: int, group: Collectives) -> Any:
        shard = on_backend(shards[rank])
        rows = slice(shard.offset, shard.offset + shard.stats.num_classes)
        return shard_nearest_metrics(shard, group, lengths=backend.asarray(lengths[rows]))

    for result in run_on_threads(2, work):
        assert isinstance(result, ShardValues), result
        assert result.values.pop(OPTIMUM) == pytest.approx(want, rel=1e-10)
        assert_like_report(result, report, (ETF, FRAME), rtol=1e-10)


# ----------------------------------------------------------------------------- float32
def float32_world(
    k: int, d: int, world: int, seed: int
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """`world` ranks stream float32 samples (20 a class, shuffled, 4 batches each)
    into `ShardedClassStats`: means 3 + N(0, 1) (a frame far from the origin)
    with a spread 0.1; returns the shards and the float64 means and counts."""
    from ncgeom.plugins import ShardedClassStats

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(k), 20))
    centres = 3.0 + rng.normal(size=(k, d))
    features = (centres[labels] + 0.1 * rng.normal(size=(labels.size, d))).astype(np.float32)
    parts = np.array_split(np.arange(labels.size), world)

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group, gram=False, dtype=np.float32)
        for rows in np.array_split(parts[rank], 4):
            sharded.update(features[rows], labels[rows])
        return sharded.shard()

    shards = run_on_threads(world, work)
    x = features.astype(np.float64)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    return shards, means, np.bincount(labels, minlength=k)


def check_float32(k: int, d: int, world: int, rtol: float) -> None:
    shards, means, counts = float32_world(k, d, world, seed=k)
    lengths = np.linspace(0.5, 1.0, k)
    want = {
        ETF: etf_formula(means, counts, "samples"),
        FRAME: frame_formula(means, counts),
        OPTIMUM: frame_formula(means, counts, lengths),
    }
    for result in nearest_on_threads(shards, lengths=lengths):
        assert result.unavailable == {}
        for name, value in want.items():
            assert result.values[name] == pytest.approx(value, rel=rtol), name


def test_float32_shards_equal_float64_formulas() -> None:
    check_float32(k=120, d=128, world=3, rtol=1e-5)


@pytest.mark.slow
def test_float32_shards_at_user_size() -> None:
    # 1,000 classes in 1,024 dimensions on 4 ranks (20,000 float32 rows)
    check_float32(k=1000, d=1024, world=4, rtol=1e-5)


def test_host_reads_do_not_grow_with_the_classes() -> None:
    torch = pytest.importorskip("torch")
    from host_sync import HostSyncAudit

    records = []
    for k in (6, 40):
        features, labels = dataset(1, random_means(1, k, 48), 400, spread=0.3)
        stats = ClassStats.from_features(torch.asarray(features), torch.asarray(labels), k)
        shard = reduce_scatter_class_stats(stats, ALONE)
        lengths = torch.linspace(0.5, 1.0, k, dtype=torch.float64)
        with HostSyncAudit() as audit:
            found = shard_nearest_metrics(shard, ALONE, lengths=lengths)
        assert found.unavailable == {}
        records.append(audit.kinds())
    # lengths, sizes, flags, largest length, values; three eigenproblems a fit
    reads = [kind for kind in records[0] if kind[0] == "read"]
    assert reads == [("read", "cpu")] * 5
    assert records[0].count(("checked", "linalg_eigh")) == 6
    assert records[0] == records[1]
