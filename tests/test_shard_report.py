"""`shard_report`: the report of class shards equals `nc_report` of the whole table.

Ranks are simulated on threads (tests/world.py); the statistics are built on
each rank from its own samples and reduce-scattered, or accumulated at their
owners (`ShardedClassStats`). Every field of the report is compared with the
report of the whole table; NC1 also with a float64 formula written here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from world import run_on_threads

from ncgeom import ClassStats, nc_report
from ncgeom.plugins import (
    Collectives,
    ShardedClassStats,
    class_shards,
    reduce_scatter_class_stats,
    shard_counts,
    shard_report,
)
from ncgeom.theory import ufm_relu_optimum

ALONE = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)


def assert_same_report(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-9) -> None:
    """Two `NCReport.to_dict()`: the same keys, strings and NaN; numbers to `rel`."""
    assert set(got) == set(want)
    for key in want:
        _assert_same(got[key], want[key], rel, key)


def _assert_same(got: Any, want: Any, rel: float, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert set(got) == set(want), f"{where}: {sorted(set(got) ^ set(want))}"
        for key in want:
            _assert_same(got[key], want[key], rel, f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, rel, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want):
            assert got is not None and math.isnan(got), f"{where}: {got} is not NaN"
        else:
            assert got == pytest.approx(want, rel=rel, abs=1e-12 * max(1.0, abs(want))), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def data(
    seed: int, k: int, d: int, n: int, *, unseen: tuple[int, ...] = (), scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features of K clustered classes (those in `unseen` without samples), a
    classifier and a bias."""
    rng = np.random.default_rng(seed)
    kept = np.setdiff1d(np.arange(k), unseen)
    labels = np.concatenate([kept, rng.choice(kept, size=n - kept.size)])
    means = 3 * rng.normal(size=(k, d)) + 1.0
    features = scale * (means[labels] + rng.normal(size=(n, d)))
    return features, labels, rng.normal(size=(k, d)), rng.normal(size=k)


def on_ranks(
    world: int,
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    accumulate: bool = False,
    **kwargs: Any,
) -> list[Any]:
    """`shard_report` on each of `world` simulated ranks (the samples dealt
    round-robin), with this rank's rows of ``kwargs["classifier"]``/``["bias"]``."""
    classifier, bias = kwargs.pop("classifier", None), kwargs.pop("bias", None)

    def work(rank: int, group: Collectives) -> Any:
        rows = np.arange(rank, labels.size, world)
        if accumulate:
            sharded = ShardedClassStats(k, features.shape[1], group)
            for part in np.array_split(rows, 3):
                sharded.update(features[part], labels[part])
            shard = sharded.shard()
        else:
            local = ClassStats.from_features(features[rows], labels[rows], k, gram=True)
            shard = reduce_scatter_class_stats(local, group)
        start, stop = class_shards(k, world)[rank]
        w = None if classifier is None else classifier[start:stop]
        b = None if bias is None else bias[start:stop]
        return shard_report(shard, group, w, b, **kwargs)

    with warnings.catch_warnings():  # the filters are the process's: every thread's
        warnings.simplefilter("ignore")
        results = run_on_threads(world, work)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def whole_report(features, labels, k, classifier=None, bias=None, **kwargs) -> Any:
    stats = ClassStats.from_features(features, labels, k, gram=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nc_report(stats, classifier, bias, pairs="exact", **kwargs)


def numpy_nc1(x: np.ndarray, y: np.ndarray) -> float:
    """tr(S_W pinv(S_B)) / K' over the classes with samples, in float64."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = means - x.mean(axis=0)
    dev = x - means[np.searchsorted(classes, y)]
    within = dev.T @ dev / len(y)
    between = centred.T @ centred / len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10)) / len(classes))


# ----------------------------------------------------------------------------- equal reports
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_every_field_equals_the_report_of_the_whole_table(world, global_mean):
    k, d = 7, 9
    x, y, w, b = data(world, k, d, 300, unseen=(2,))
    want = whole_report(x, y, k, w, b, global_mean=global_mean)
    for report in on_ranks(world, x, y, k, classifier=w, bias=b, global_mean=global_mean):
        assert_same_report(report.to_dict(), want.to_dict())
    assert ("ncc_agreement", "needs features, not statistics") in report.unavailable
    assert report.excluded == ((2, "no samples"),)
    if global_mean == "samples":
        seen = y != 2
        assert report.nc1 == pytest.approx(numpy_nc1(x[seen], y[seen]), rel=1e-9)


def test_accumulated_at_the_owners_and_k_above_d():
    k, d = 11, 4  # K > d: no ETF, no frame of K orthogonal rows
    x, y, w, b = data(5, k, d, 400)
    want = whole_report(x, y, k, w, b)
    for report in on_ranks(3, x, y, k, accumulate=True, classifier=w, bias=b):
        assert_same_report(report.to_dict(), want.to_dict())
    why = dict(report.unavailable)
    assert "needs dim >= 10" in why["nearest_etf_distance"]


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_units_at_extreme_feature_scales(scale):
    k, d = 5, 6
    x, y, w, b = data(8, k, d, 200, scale=scale)
    want = whole_report(x, y, k, w, b)
    (report, _) = on_ranks(2, x, y, k, classifier=w, bias=b)
    assert_same_report(report.to_dict(), want.to_dict())
    counts = np.bincount(y, minlength=k)
    spread = [((x[y == c] - x[y == c].mean(0)) ** 2).sum(1).mean() for c in range(k)]
    assert report.within_variance == pytest.approx(counts @ spread / y.size, rel=1e-9)


def test_with_the_theory_near_its_optimum():
    counts = [40, 25, 12, 6, 3]
    opt = ufm_relu_optimum(counts, 5e-3, 5e-3)
    y = np.repeat(np.arange(5), counts)
    rng = np.random.default_rng(3)
    x = opt.means()[y] + 1e-4 * rng.normal(size=(y.size, opt.means().shape[1]))
    w = opt.classifier() + 1e-5 * rng.normal(size=opt.classifier().shape)
    want = whole_report(x, y, 5, w, theory=opt, objective=1.5)
    for report in on_ranks(2, x, y, 5, classifier=w, theory=opt, objective=1.5):
        assert_same_report(report.to_dict(), want.to_dict())
    assert report.gof_error < 1e-3 and report.objective == 1.5


def test_theory_without_a_class_and_without_classifier():
    counts = [20, 10, 5, 5]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    x, y, _, _ = data(4, 4, 6, 60, unseen=(3,))
    want = whole_report(x, y, 4, theory=opt)
    (report, _) = on_ranks(2, x, y, 4, theory=opt)
    assert_same_report(report.to_dict(), want.to_dict())
    assert dict(report.unavailable)["gof_error"] == "the theory needs every class to have samples"


@pytest.mark.parametrize("bounds", [{"min_count": 30}, {"max_count": 40}])
def test_the_count_filter(bounds):
    k, d = 6, 8
    rng = np.random.default_rng(9)
    y = np.repeat(np.arange(k), [80, 50, 35, 20, 10, 5])
    x = 3 * rng.normal(size=(k, d))[y] + rng.normal(size=(y.size, d))
    w = rng.normal(size=(k, d))
    opt = ufm_relu_optimum(np.bincount(y), 1e-2, 1e-2)
    want = whole_report(x, y, k, w, theory=opt, **bounds)
    for report in on_ranks(3, x, y, k, classifier=w, theory=opt, **bounds):
        assert_same_report(report.to_dict(), want.to_dict())
    assert report.nc1 is None and report.excluded


def test_degenerate_geometry_gives_the_same_nan_and_reasons():
    x = np.repeat(np.eye(3), 4, axis=0) * 0.0 + 1.0  # every class at the same point
    y = np.tile(np.arange(3), 4)
    w = np.eye(3)
    want = whole_report(x, y, 3, w)
    reports = on_ranks(2, x, y, 3, classifier=w)
    assert_same_report(reports[0].to_dict(), want.to_dict())
    assert math.isnan(reports[0].nc1)
    with pytest.warns(UserWarning, match="degenerate class geometry"):
        stats = ClassStats.from_features(x, y, 3, gram=True)
        shard_report(reduce_scatter_class_stats(stats, ALONE), ALONE, w)


def test_pairs_none_leaves_the_pair_metrics_out():
    x, y, w, _ = data(2, 5, 6, 100)
    (report, _) = on_ranks(2, x, y, 5, classifier=w, pairs="none")
    why = dict(report.unavailable)
    for name in ("cdnv", "etf_error", "riesz_log_energy", "classifier_etf_error"):
        assert getattr(report, name) is None
        assert why[name] == 'left out: shard_report(..., pairs="none")'
    assert report.nc1 == pytest.approx(whole_report(x, y, 5).nc1, rel=1e-9)


@pytest.mark.parametrize("world", [1, 3])
def test_sampled_pairs_equal_those_of_the_whole_table(world):
    # The same seed draws the same pairs: the same estimates and intervals.
    k, d = 300, 8
    x, y, w, b = data(12, k, d, 1500, unseen=(7, 200))
    want = whole_report(x, y, k, w, b)  # exact, for the interval check below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = nc_report(ClassStats.from_features(x, y, k, gram=True), w, b, pairs=4000)
    for report in on_ranks(world, x, y, k, classifier=w, bias=b, pairs=4000):
        assert_same_report(report.to_dict(), sampled.to_dict())
    half = dict(report.estimated)
    assert set(half) == {"cdnv", "equiangularity", "orthogonality_error", "log_energy"}
    for name, width in half.items():
        assert abs(getattr(report, name) - getattr(want, name)) < 3 * width, name
    assert "sampled pairs" in dict(report.unavailable)["classifier_etf_error"]


def test_auto_samples_above_the_threshold_as_the_report_does(monkeypatch):
    import ncgeom.measure.metrics as metrics_module
    import ncgeom.measure.report as report_module

    monkeypatch.setattr(metrics_module, "SAMPLED_PAIRS_FROM", 50)
    monkeypatch.setattr(report_module, "SAMPLED_PAIRS", 3000)
    x, y, w, _ = data(13, 80, 6, 600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = nc_report(ClassStats.from_features(x, y, 80, gram=True), w)
    assert want.estimated
    (report, _) = on_ranks(2, x, y, 80, classifier=w)
    assert_same_report(report.to_dict(), want.to_dict())


def test_shard_counts_in_class_order():
    x, y, _, _ = data(6, 9, 3, 50, unseen=(4,))
    got = run_on_threads(
        3,
        lambda rank, group: shard_counts(
            reduce_scatter_class_stats(ClassStats.from_features(x[rank::3], y[rank::3], 9), group),
            group,
        ),
    )
    for counts in got:
        assert counts.tolist() == np.bincount(y, minlength=9).tolist()


# ----------------------------------------------------------------------------- errors
def _one_shard() -> Any:
    x, y, _, _ = data(1, 3, 4, 30)
    return reduce_scatter_class_stats(ClassStats.from_features(x, y, 3, gram=True), ALONE)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"bias": np.zeros(3)}, ValueError, "`bias` needs a `classifier`"),
        ({"classifier": np.zeros((2, 4))}, ValueError, r"`classifier` must have shape \(3, 4\)"),
        ({"pairs": "some"}, ValueError, "`pairs`"),
        ({"pairs": 1}, ValueError, "`pairs`"),
        ({"pairs": 2.5}, TypeError, "`pairs`"),
        ({"global_mean": "median"}, ValueError, "`global_mean`"),
        ({"min_count": 0}, ValueError, "`min_count`"),
        ({"objective": math.inf}, ValueError, "`objective`"),
        (
            {"theory": ufm_relu_optimum([2, 1], 1e-2, 1e-2)},
            ValueError,
            "theory",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, error, text):
    with pytest.raises(error, match=text):
        shard_report(_one_shard(), ALONE, **kwargs)


@pytest.mark.parametrize(
    ("change", "error", "text"),
    [
        ({"classifier": np.nan}, ValueError, "`classifier` must be finite"),
        ({"classifier": np.inf}, ValueError, "`classifier` must be finite"),
        ({"bias": np.nan}, ValueError, "`bias` must be finite"),
        ({"classifier": "int"}, TypeError, "`classifier` must have a real floating dtype"),
        ({"classifier": None}, ValueError, "given on every rank or on none"),
    ],
)
def test_a_classifier_refused_on_one_rank_raises_on_every_rank(change, error, text):
    # Nothing is computed from it: no NaN metric, and no rank left in a collective.
    k, d, world = 6, 4, 3
    x, y, w, b = data(4, k, d, 90)

    def work(rank: int, group: Collectives) -> Any:
        local = ClassStats.from_features(x[rank::world], y[rank::world], k, gram=True)
        shard = reduce_scatter_class_stats(local, group)
        start, stop = class_shards(k, world)[rank]
        rows, bias = w[start:stop].copy(), b[start:stop].copy()
        if rank == 1:
            name, value = next(iter(change.items()))
            if value is None:
                rows = bias = None
            elif value == "int":
                rows = rows.astype(np.int64)
            elif name == "classifier":
                rows[0, 0] = value
            else:
                bias[0] = value
        return shard_report(shard, group, rows, bias)

    results = run_on_threads(world, work)
    if change.get("classifier", 0) is None:
        assert all(isinstance(r, ValueError) and text in str(r) for r in results)
        return
    assert isinstance(results[1], error) and text in str(results[1])
    for rank in (0, 2):
        assert isinstance(results[rank], ValueError)
        assert "rank 1's `classifier` or `bias` was refused there" in str(results[rank])


def test_wrong_types():
    with pytest.raises(TypeError, match="`shard`"):
        shard_report(ClassStats.from_features(np.eye(2), np.arange(2), 2), ALONE)
    with pytest.raises(TypeError, match="`collectives`"):
        shard_report(_one_shard(), (0, 1))


# ----------------------------------------------------------------------------- user size
def test_float32_shards_at_user_size_equal_the_float64_report():
    # 3 ranks stream 2,000 classes of 20-60 samples in shuffled float32 batches, far
    # from the origin; the report of the shards against float64 nc_report of the rows.
    k, d, world = 2000, 48, 3
    rng = np.random.default_rng(11)
    counts = rng.integers(20, 61, size=k)
    y = rng.permutation(np.repeat(np.arange(k), counts))
    centres = 50.0 + 4 * rng.normal(size=(k, d))
    x = (centres[y] + rng.normal(size=(y.size, d))).astype(np.float32)
    w = rng.normal(size=(k, d)).astype(np.float32)

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group, dtype=np.float32)
        rows = np.arange(rank, y.size, world)
        for part in np.array_split(rows, 37):
            sharded.update(x[part], y[part])
        start, stop = class_shards(k, world)[rank]
        return shard_report(sharded.shard(), group, w[start:stop])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = run_on_threads(world, work)
        stats = ClassStats.from_features(x.astype(np.float64), y, k, gram=True)
        want = nc_report(stats, w.astype(np.float64), pairs="exact")
    assert reports[0].dtype == "float32" and reports[0].counts == tuple(counts.tolist())
    checked = 0
    for name in want.METRICS:
        value = getattr(want, name)
        if value is None or math.isnan(value):
            assert getattr(reports[0], name) is None or math.isnan(getattr(reports[0], name))
            continue
        for report in reports:
            assert getattr(report, name) == pytest.approx(value, rel=1e-4), name
        checked += 1
    assert checked == 25  # all but NC5, the NCC agreement, the nearest frames and the theory
    np.testing.assert_allclose(reports[2].distance_norms, want.distance_norms, rtol=1e-5)


def test_float32_shards_of_many_samples_a_class_far_from_the_origin():
    # 16 classes of 25,000 samples each at 1e3 from the origin, 2 ranks, 200 shuffled
    # float32 batches: the sums about far shifts are where float32 loses digits.
    k, d, world, per = 16, 8, 2, 25_000
    rng = np.random.default_rng(21)
    y = rng.permutation(np.repeat(np.arange(k), per))
    centres = 1e3 + rng.normal(size=(k, d))
    x = (centres[y] + rng.normal(size=(y.size, d))).astype(np.float32)

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group, dtype=np.float32)
        for part in np.array_split(np.arange(rank, y.size, world), 100):
            sharded.update(x[part], y[part])
        return shard_report(sharded.shard(), group)

    reports = run_on_threads(world, work)
    x64 = x.astype(np.float64)
    means = np.stack([x64[y == c].mean(0) for c in range(k)])
    spread = np.array([((x64[y == c] - means[c]) ** 2).sum(1).mean() for c in range(k)])
    for report in reports:
        assert report.within_variance == pytest.approx(spread.mean(), rel=1e-4)
        assert report.nc1 == pytest.approx(numpy_nc1(x64, y), rel=1e-4)


def test_float32_shards_at_vocabulary_size_with_sampled_pairs():
    # K = 20,000 token classes, Zipf counts (most classes rare), 2 ranks, float32,
    # sampled pairs: the report of the shards against float64 nc_report of the rows.
    k, d, world = 20_000, 16, 2
    rng = np.random.default_rng(22)
    y = np.concatenate([np.arange(k), np.minimum(rng.zipf(1.3, size=300_000) - 1, k - 1)])
    y = rng.permutation(y)
    x = (5.0 + rng.normal(size=(k, d))[y] + 0.3 * rng.normal(size=(y.size, d))).astype(np.float32)

    def work(rank: int, group: Collectives) -> Any:
        sharded = ShardedClassStats(k, d, group, dtype=np.float32)
        for part in np.array_split(np.arange(rank, y.size, world), 40):
            sharded.update(x[part], y[part])
        return shard_report(sharded.shard(), group, pairs=20_000)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = run_on_threads(world, work)
        stats = ClassStats.from_features(x.astype(np.float64), y, k, gram=True)
        want = nc_report(stats, pairs=20_000)
    for name in ("nc1", "within_variance", "nc1_trace_ratio", "equinorm", "log_equinorm",
                 "cdnv", "equiangularity", "orthogonality_error", "log_energy",
                 "interference_mean"):  # fmt: skip
        for report in reports:
            assert getattr(report, name) == pytest.approx(getattr(want, name), rel=1e-4), name
    assert dict(reports[0].estimated).keys() == dict(want.estimated).keys()
