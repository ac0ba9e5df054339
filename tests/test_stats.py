"""ClassStats: streaming, merging, precision near collapse and input checks."""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest
import torch

from ncgeom import ClassStats, merge_stats, metrics, nc_report

import reference as ref


def _assert_on(value, like) -> None:
    """`value` lives in the namespace and on the device of the input `like`."""
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))


def _near_collapse(rng, n=4000, d=32, k=6, spread=1e-4):
    """float32 features whose within-class spread is `spread` of the mean norm."""
    means = rng.normal(size=(k, d)) + 3.0
    means *= 10.0 / np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    noise = rng.normal(size=(n, d)) / np.sqrt(d)
    x = means[y] + spread * 10.0 * noise
    return x.astype(np.float32), y


@pytest.mark.parametrize("path", ["from_features", "streaming", "in_memory_report"])
def test_float32_near_collapse_keeps_nc1_to_1e_3(backend, path):
    x32, y = _near_collapse(np.random.default_rng(0))
    k = 6
    exact = ref.nc1(x32.astype(np.float64), y, k)
    assert 1e-12 < exact < 1e-4  # really near collapse
    xb, yb = backend.asarray(x32), backend.asarray(y)
    if path == "from_features":
        value = float(backend.to_numpy(metrics.nc1(ClassStats.from_features(xb, yb, k))))
    elif path == "streaming":
        stats = ClassStats.empty(
            k, x32.shape[1], xp=backend.xp, device=backend.device, dtype=backend.xp.float32
        )
        for lo in range(0, len(y), 512):
            hi = min(lo + 512, len(y))
            stats = stats.update(xb[lo:hi, ...], yb[lo:hi])
        assert stats.dtype == backend.xp.float32
        value = float(backend.to_numpy(metrics.nc1(stats)))
    else:
        value = nc_report((xb, yb), chunk_size=700).nc1
    assert value == pytest.approx(exact, rel=1e-3)


def test_raw_second_moments_would_fail_here():
    # The same data through E[xx] - mu mu in float32 loses every digit: the
    # test above is a real test of the shifted accumulation.
    x32, y = _near_collapse(np.random.default_rng(0))
    raw = sum(
        (x32[y == c].T @ x32[y == c]) - np.outer(x32[y == c].sum(0), x32[y == c].mean(0))
        for c in range(6)
    ) / len(y)
    exact = ref.within_covariance(x32.astype(np.float64), y, 6)
    assert abs(np.trace(raw) - np.trace(exact)) > 0.1 * np.trace(exact)


def test_half_precision_accumulates_in_float32(backend):
    if not hasattr(backend.xp, "float16"):
        pytest.skip(f"{backend.name} has no float16")
    rng = np.random.default_rng(1)
    x16 = rng.normal(size=(64, 4)).astype(np.float16)
    y = rng.integers(0, 3, 64)
    xb, yb = backend.asarray(x16), backend.asarray(y)
    stats = ClassStats.from_features(xb, yb, 3)
    assert stats.dtype == backend.xp.float32
    _assert_on(stats.means, xb)
    want = ref.means(x16.astype(np.float64), y, 3)
    # float16 inputs are exact in float32; the sums in float32 leave ~1e-7 relative.
    np.testing.assert_allclose(backend.to_numpy(stats.means), want, rtol=1e-6, atol=1e-6)
    if backend.name.startswith("torch"):
        bf = ClassStats.from_features(xb.to(torch.bfloat16), yb, 3)
        assert bf.dtype == torch.float32


def test_update_keeps_namespace_and_returns_new_objects(backend):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 3)), rng.integers(0, 4, 30)
    start = ClassStats.empty(4, 3, xp=backend.xp, device=backend.device)
    after = start.update(backend.asarray(x), backend.asarray(y))
    assert after is not start
    assert int(backend.to_numpy(start.num_samples)) == 0
    assert int(backend.to_numpy(after.num_samples)) == 30
    assert type(after.sums) is type(backend.asarray(x))


def test_empty_batch_leaves_stats_unchanged(backend):
    stats = ClassStats.from_features(backend.asarray(np.eye(3)), backend.asarray(np.arange(3)), 3)
    empty_x, empty_y = backend.asarray(np.zeros((0, 3))), backend.asarray(np.zeros(0, np.int64))
    assert stats.update(empty_x, empty_y) is stats


def test_merge_promotes_dtype_and_keeps_the_values(backend):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    x[:20] = x[:20].astype(np.float32)  # exact in both precisions
    a = ClassStats.from_features(
        backend.asarray(x[:20].astype(np.float32)), backend.asarray(y[:20]), 3
    )
    b = ClassStats.from_features(backend.asarray(x[20:]), backend.asarray(y[20:]), 3)
    merged = a.merge(b)
    assert merged.dtype == backend.xp.float64
    _assert_on(merged.means, backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(merged.counts), np.bincount(y, minlength=3))
    # The float32 half's sums carry float32 rounding (~1e-7 relative).
    np.testing.assert_allclose(backend.to_numpy(merged.means), ref.means(x, y, 3), rtol=1e-6)
    np.testing.assert_allclose(
        backend.to_numpy(merged.within_covariance()), ref.within_covariance(x, y, 3), rtol=1e-5
    )


def test_merge_checks_compatibility():
    a = ClassStats.from_features(np.eye(2, dtype=np.float32), np.arange(2), 2)
    b = ClassStats.from_features(np.eye(2), np.arange(2), 2)
    with pytest.raises(ValueError, match="different shape: `self` has 2 classes x 2 dims"):
        a.merge(ClassStats.from_features(np.eye(3), np.arange(3), 3))
    with pytest.raises(ValueError, match="with and without a Gram: `other`"):
        b.merge(ClassStats.from_features(np.eye(2), np.arange(2), 2, gram=False))
    with pytest.raises(TypeError, match="same array library; got numpy and torch"):
        b.merge(ClassStats.from_features(torch.eye(2, dtype=torch.float64), torch.arange(2), 2))
    with pytest.raises(TypeError, match="`other` must be a ClassStats"):
        b.merge("stats")
    with pytest.raises(ValueError, match="at least one ClassStats"):
        merge_stats()


def test_within_covariance_needs_gram():
    stats = ClassStats.from_features(np.eye(2), np.arange(2), 2, gram=False)
    with pytest.raises(ValueError, match="gram=True"):
        stats.within_covariance()
    with pytest.raises(ValueError, match="nc1 needs the within-class Gram"):
        metrics.nc1(stats)


# ----------------------------------------------------------------------------- bad input
GOOD_X = np.ones((4, 3))
GOOD_Y = np.array([0, 1, 1, 0])


@pytest.mark.parametrize(
    ("features", "labels", "k", "error", "match"),
    [
        (
            np.ones(4),
            GOOD_Y,
            2,
            ValueError,
            r"`features` must be 2-D \(samples, dim\); got shape \(4,\)",
        ),
        (GOOD_X, GOOD_Y[:, None], 2, ValueError, r"`labels` must be 1-D; got shape \(4, 1\)"),
        (
            GOOD_X,
            GOOD_Y.astype(float),
            2,
            TypeError,
            "`labels` must have an integer dtype; got float64",
        ),
        (GOOD_X, GOOD_Y[:3], 2, ValueError, r"one entry per row of `features` \(4\); got 3"),
        (
            GOOD_X,
            np.array([0, 1, 12, 0]),
            10,
            ValueError,
            r"`labels` must lie in \[0, 10\); got max 12 at row 2",
        ),
        (
            GOOD_X,
            np.array([0, -1, 1, 0]),
            2,
            ValueError,
            r"`labels` must lie in \[0, 2\); got min -1 at row 1",
        ),
        (GOOD_X, GOOD_Y, 1, ValueError, "`num_classes` must be at least 2; got 1"),
        (GOOD_X, GOOD_Y, 2.0, TypeError, "`num_classes` must be an integer; got 2.0"),
        (GOOD_X.astype(int), GOOD_Y, 2, TypeError, "`features` must have a real floating dtype"),
        (
            [[1.0]],
            GOOD_Y,
            2,
            TypeError,
            "`features` must be an array of an array-API library; got list",
        ),
    ],
)
def test_bad_input_is_named(features, labels, k, error, match):
    with pytest.raises(error, match=match):
        ClassStats.from_features(features, labels, k)


def test_non_finite_rows_are_counted_and_located(backend):
    x = np.ones((6, 2))
    x[3, 1] = np.nan
    x[5, 0] = np.inf
    y = np.array([0, 1, 0, 1, 0, 1])
    xb, yb = backend.asarray(x), backend.asarray(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error alone, no NumPy warning first
        with pytest.raises(ValueError, match=r"2 row\(s\) hold NaN or Inf, the first is row 3"):
            ClassStats.from_features(xb, yb, 2)
        zeros = backend.asarray(np.zeros((2, 2)))
        stats = ClassStats.from_features(zeros, backend.asarray(np.array([0, 1])), 2)
        empty = ClassStats.empty(2, 2, xp=backend.xp, device=backend.device)
        for start in (empty, stats):
            with pytest.raises(ValueError, match=r"2 row.*the first is row 3"):
                start.update(xb, yb)
        with pytest.raises(ValueError, match=r"2 row.*the first is row 3"):
            nc_report((xb, yb))
    with np.errstate(invalid="ignore"):
        skipped = ClassStats.from_features(xb, yb, 2, check_finite=False)
    assert np.isnan(backend.to_numpy(skipped.means)[1, 1])  # the scan was skipped; NaN propagates


def test_mixed_namespaces_and_devices_are_refused():
    with pytest.raises(
        TypeError, match="`features` and `labels` must come from the same array library"
    ):
        ClassStats.from_features(GOOD_X, torch.tensor(GOOD_Y), 2)
    stats = ClassStats.empty(2, 3)
    with pytest.raises(TypeError, match="`stats` and `features` must come from the same"):
        stats.update(torch.ones(4, 3, dtype=torch.float64), torch.tensor(GOOD_Y))
    strict = pytest.importorskip("array_api_strict")
    other = strict.asarray(GOOD_X, device=strict.Device("device1"))
    with pytest.raises(ValueError, match="must be on the same device"):
        ClassStats.from_features(other, strict.asarray(GOOD_Y), 2)


def test_update_checks_dimension_and_chunk_size():
    with pytest.raises(
        ValueError, match="`features` must have 3 columns like the statistics; got 2"
    ):
        ClassStats.empty(2, 3).update(np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer; got 0"):
        ClassStats.from_features(GOOD_X, GOOD_Y, 2, chunk_size=0)
    with pytest.raises(ValueError, match="`dim` must be a positive integer; got 0"):
        ClassStats.empty(2, 0)


def test_a_non_floating_dtype_is_refused_by_name():
    from ncgeom.solve import solve_ufm

    with pytest.raises(TypeError, match=r"`dtype` must be a real floating dtype of .*; got"):
        ClassStats.empty(2, 3, dtype=np.int64)
    with pytest.raises(TypeError, match=r"`dtype` must be a real floating dtype of .*; got"):
        solve_ufm([3, 2], 1e-2, 1e-2, 3, dtype=np.int32)


@pytest.mark.parametrize("offset", [1e8, 1e12])
def test_float64_features_far_from_the_origin_keep_their_variances(offset):
    # float64 sums of float64 features are rounded by about n eps offset: the
    # class sums of the deviations must come from the deviations themselves.
    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    step = 2.0 ** (np.floor(np.log2(offset)) - 50)  # a grid float64 holds exactly
    x = offset + np.round((np.eye(3)[y] + 0.05 * rng.normal(size=(600, 3))) / step) * step
    centred = x - offset  # exact: the same spread at the origin
    want = ref.variances(centred, y, 3)
    cov = ref.within_covariance(centred, y, 3)
    streamed = ClassStats.empty(3, 3).update(x[:250], y[:250]).update(x[250:], y[250:])
    parts = [ClassStats.from_features(x[p], y[p], 3) for p in (slice(0, 250), slice(250, None))]
    for stats in (ClassStats.from_features(x, y, 3), streamed, merge_stats(*parts)):
        np.testing.assert_allclose(stats.class_variances, want, rtol=1e-10)
        np.testing.assert_allclose(stats.within_covariance(), cov, rtol=1e-9, atol=1e-12)
