"""The nearest simplex ETF and orthogonal frame: the closed form against a
numerical optimiser written here, exact ideal geometries, every backend in
float32 and float64, feature scales 1e-20..1e20, and the input checks."""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

from ncgeom import ClassStats
from ncgeom.measure.nearest import (
    NearestFrame,
    nearest_orthogonal_frame,
    nearest_simplex_etf,
)
from ncgeom.theory import ufm_relu_optimum


# ----------------------------------------------------------------------------- references
def _simplex(k: int) -> np.ndarray:
    """The standard simplex ETF, K x K: unit rows, pairwise cosines -1/(K-1)."""
    return np.sqrt(k / (k - 1)) * (np.eye(k) - 1 / k)


def _simplex_coordinates(k: int) -> np.ndarray:
    """K x (K-1) rows with the Gram of the simplex ETF (its vertices in R^(K-1))."""
    values, vectors = np.linalg.eigh(_simplex(k) @ _simplex(k).T)
    return vectors[:, 1:] * np.sqrt(values[1:])  # drops the zero eigenvalue of 1


def _etf_reference(a: np.ndarray) -> tuple[float, float]:
    """Distance and scale of the nearest simplex ETF, float64: with the rows
    centred at their mean (the ETF's rows sum to zero), d^2 = ||A||^2 -
    ||A - mean||_*^2 / (K - 1) and s = ||A - mean||_* / sqrt(K (K - 1))."""
    k = a.shape[0]
    nuclear = np.linalg.svd(a - a.mean(axis=0), compute_uv=False).sum()
    return np.sqrt((a * a).sum() - nuclear**2 / (k - 1)), nuclear / np.sqrt(k * (k - 1))


def _frame_reference(a: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """Distance and scale of the nearest frame with rows s l_k q_k, float64."""
    nuclear = np.linalg.svd(lengths[:, None] * a, compute_uv=False).sum()
    total = (lengths * lengths).sum()
    return np.sqrt((a * a).sum() - nuclear**2 / total), nuclear / total


def _optimised(a: np.ndarray, base: np.ndarray, rng: np.random.Generator, starts: int = 3):
    """min over s and Q (r, d) with orthonormal rows of ||A - s base Q||_F, by
    BFGS from random starts. Q = the first r rows of expm(S), S skew-symmetric
    with a zero (d-r, d-r) block (one parameter per dimension of the manifold);
    for r = d, one column of `base` is also flipped (the other half of O(d))."""
    dim, r = a.shape[1], base.shape[1]
    free = np.triu(np.ones((dim, dim), dtype=bool), 1)
    free[r:, r:] = False
    where = np.nonzero(free)

    def rows(theta: np.ndarray) -> np.ndarray:
        skew = np.zeros((dim, dim))
        skew[where] = theta
        return scipy.linalg.expm(skew - skew.T)[:r]

    best = np.inf
    for flip in (1.0, -1.0) if r == dim else (1.0,):
        flipped = base * np.r_[np.ones(r - 1), flip]
        for _ in range(starts):
            start = np.r_[rng.normal(size=len(where[0])), rng.uniform(0.1, 2.0)]
            found = scipy.optimize.minimize(
                lambda x, b=flipped: np.sum((a - x[-1] * b @ rows(x[:-1])) ** 2),
                start,
                method="BFGS",
                options={"gtol": 1e-9},
            )
            best = min(best, np.sqrt(found.fun))
    return best


def _data(k: int = 5, d: int = 7, seed: int = 0, n: int = 60):
    """Features (offset far from the origin), labels with unequal counts."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = 2 * rng.normal(size=(k, d)) + 1.5
    return centres[y] + 0.3 * rng.normal(size=(n, d)), y


def _means(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(y, minlength=k)
    nan = np.full(x.shape[1], np.nan)  # classes without samples
    return np.stack([x[y == c].mean(axis=0) if counts[c] else nan for c in range(k)]), counts


def _numpy(value) -> np.ndarray:
    from ncgeom._lib.backend import to_host

    return np.asarray(to_host(value), dtype=np.float64)


# ----------------------------------------------------------------------------- (a) optimiser
@pytest.mark.parametrize(("k", "d"), [(4, 5), (4, 3), (2, 3)])
def test_the_etf_closed_form_is_the_optimisers_minimum(k, d):
    rng = np.random.default_rng(k + d)
    a = rng.normal(size=(k, d)) + 0.5  # not centred: the all-ones part counts
    fit = nearest_simplex_etf(a)
    best = _optimised(a, _simplex_coordinates(k), rng)
    closed = float(fit.distance)
    assert closed <= best + 1e-9  # the optimiser does not beat it
    assert best <= closed + 1e-6  # and finds it
    # The returned target is a scaled simplex ETF at the returned distance.
    target, scale = np.asarray(fit.target), float(fit.scale)
    np.testing.assert_allclose(
        target @ target.T, scale**2 * _simplex(k) @ _simplex(k).T, atol=1e-12
    )
    assert np.linalg.norm(a - target) == pytest.approx(closed, rel=1e-12)
    assert float(fit.relative_distance) == pytest.approx(closed / np.linalg.norm(a), rel=1e-12)


@pytest.mark.parametrize(
    ("lengths", "d"),
    [("equal", 4), ([2.0, 1.0, 0.5], 3), ([1.0, 0.0, 2.0], 2), ([0.0, 3.0, 0.0], 2)],
)
def test_the_frame_closed_form_is_the_optimisers_minimum(lengths, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(3, d))
    fit = nearest_orthogonal_frame(a, lengths=lengths)
    ell = np.ones(3) if lengths == "equal" else np.asarray(lengths)
    base = np.diag(ell)[:, ell > 0]  # rows of zero length have no direction to fit
    best = _optimised(a, base, rng)
    closed = float(fit.distance)
    assert closed <= best + 1e-9
    assert best <= closed + 1e-6
    target, scale = np.asarray(fit.target), float(fit.scale)
    np.testing.assert_allclose(target @ target.T, scale**2 * np.diag(ell**2), atol=1e-12)
    assert np.linalg.norm(a - target) == pytest.approx(closed, rel=1e-12)


# ----------------------------------------------------------------------------- (b) exact
@pytest.mark.parametrize(("k", "d"), [(2, 1), (3, 2), (5, 4), (5, 9)])
def test_a_rotated_scaled_etf_is_its_own_nearest(k, d):
    rng = np.random.default_rng(k * d)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0][: k - 1]
    etf = 3.7 * _simplex_coordinates(k) @ rotation
    etf = etf[rng.permutation(k)]  # any order of the vertices is a simplex ETF
    fit = nearest_simplex_etf(etf)
    assert float(fit.distance) <= 1e-13 * np.linalg.norm(etf)
    assert float(fit.relative_distance) <= 1e-13
    assert float(fit.scale) == pytest.approx(3.7, rel=1e-13)
    np.testing.assert_allclose(np.asarray(fit.target), etf, atol=1e-13)


def test_an_etf_about_a_common_offset_is_measured_from_its_centre():
    k, d = 4, 6
    rng = np.random.default_rng(1)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0][: k - 1]
    means = 2.0 * _simplex_coordinates(k) @ rotation + 5.0  # the ETF about (5, ..., 5)
    counts = np.array([7, 3, 5, 1])
    x, y = np.repeat(means, counts, axis=0), np.repeat(np.arange(k), counts)
    stats = ClassStats.from_features(x, y, k)
    fit = nearest_simplex_etf(stats, global_mean="classes")
    assert float(fit.distance) <= 1e-12
    assert float(fit.scale) == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(np.asarray(fit.target), means - means.mean(axis=0), atol=1e-12)
    # Centred at the mean of all samples, the rows are off the ETF by the same
    # vector, the classes' mean minus the samples' mean, on every row.
    offset = means.mean(axis=0) - counts @ means / counts.sum()
    fit = nearest_simplex_etf(stats)
    assert float(fit.distance) == pytest.approx(np.sqrt(k) * np.linalg.norm(offset), rel=1e-12)
    assert float(fit.scale) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("dim", [None, 3, 6])
def test_the_ufm_optimum_is_at_distance_zero_from_its_frame(dim):
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2, dim=dim)
    assert opt.alive.tolist() == [True, True, True, False]
    means = opt.means()
    rng = np.random.default_rng(0)
    turned = means @ np.linalg.qr(rng.normal(size=(opt.dim, opt.dim)))[0]
    for rows in (means, turned):
        fit = nearest_orthogonal_frame(rows, lengths=opt.feature_norms)
        assert float(fit.distance) <= 1e-14
        assert float(fit.scale) == pytest.approx(1.0, rel=1e-14)
        np.testing.assert_allclose(np.asarray(fit.target), rows, atol=1e-14)
        # Lengths in other units: only their ratios count.
        fit = nearest_orthogonal_frame(rows, lengths=1e-30 * opt.feature_norms)
        assert float(fit.distance) <= 1e-14
        assert float(fit.scale) == pytest.approx(1e30, rel=1e-14)
    if opt.dim < 4:  # four equal-length directions need four dimensions
        return
    # Equal lengths are not the optimum's: the reference formula gives the distance.
    want, scale = _frame_reference(means, np.ones(4))
    fit = nearest_orthogonal_frame(means)
    assert float(fit.distance) == pytest.approx(want, rel=1e-12)
    assert float(fit.scale) == pytest.approx(scale, rel=1e-12)


def test_the_ufm_optimum_from_statistics():
    counts = np.array([30, 20, 3, 1])
    opt = ufm_relu_optimum(counts, 2e-2, 2e-2)
    means = opt.means()
    x, y = np.repeat(means, counts, axis=0), np.repeat(np.arange(4), counts)
    stats = ClassStats.from_features(x, y, 4)
    fit = nearest_orthogonal_frame(stats, lengths=opt.feature_norms)
    assert float(fit.distance) <= 1e-14
    assert float(fit.scale) == pytest.approx(1.0, rel=1e-14)
    np.testing.assert_allclose(np.asarray(fit.target), means, atol=1e-14)
    # Balanced, the centred orthogonal frame of equal lengths is a simplex ETF.
    balanced = ufm_relu_optimum([10, 10, 10], 1e-2, 1e-2)
    x, y = np.repeat(balanced.means(), 10, axis=0), np.repeat(np.arange(3), 10)
    fit = nearest_simplex_etf(ClassStats.from_features(x, y, 3))
    assert float(fit.relative_distance) <= 1e-14
    norm = float(balanced.feature_norms[0])
    assert float(fit.scale) == pytest.approx(norm * np.sqrt(2 / 3), rel=1e-14)


def test_classes_without_samples_get_nan_rows_and_their_lengths_are_not_read():
    x, y = _data(k=5, d=6)
    y = np.where(y == 2, 3, y)  # class 2 has no samples
    stats = ClassStats.from_features(x, y, 5)
    means, counts = _means(x, y, 5)
    kept = [0, 1, 3, 4]
    lengths = np.array([1.0, 2.0, 0.0, 0.5, 1.5])  # class 2: any length
    with pytest.warns(UserWarning, match=r"classes \[2\] have no samples"):
        fit = nearest_orthogonal_frame(stats, lengths=lengths)
    want, scale = _frame_reference(means[kept], lengths[kept])
    assert float(fit.distance) == pytest.approx(want, rel=1e-12)
    assert float(fit.scale) == pytest.approx(scale, rel=1e-12)
    target = np.asarray(fit.target)
    assert target.shape == (5, 6)
    assert np.isnan(target[2]).all() and np.isfinite(target[kept]).all()
    centre = counts[kept] @ means[kept] / counts.sum()
    with pytest.warns(UserWarning, match="no samples"):
        fit = nearest_simplex_etf(stats)
    want, scale = _etf_reference(means[kept] - centre)
    assert float(fit.distance) == pytest.approx(want, rel=1e-12)
    assert float(fit.scale) == pytest.approx(scale, rel=1e-12)
    assert np.isnan(np.asarray(fit.target)[2]).all()


def test_degenerate_statistics_give_nan():
    x = np.repeat(np.array([[1.0, 2.0, 3.0]]), 6, axis=0)
    stats = ClassStats.from_features(x, np.arange(6) % 3, 3)  # the class means coincide
    fit = nearest_simplex_etf(stats)
    for value in (fit.scale, fit.distance, fit.relative_distance, fit.target):
        assert np.isnan(np.asarray(value)).all()
    assert np.isfinite(float(nearest_orthogonal_frame(stats).distance))
    zero = ClassStats.from_features(np.zeros((6, 3)), np.arange(6) % 3, 3)  # dead features
    for fit in (nearest_simplex_etf(zero), nearest_orthogonal_frame(zero)):
        for value in (fit.scale, fit.distance, fit.relative_distance, fit.target):
            assert np.isnan(np.asarray(value)).all()


def test_equal_rows_are_nearest_to_the_zero_etf():
    rows = np.array([[1.0, -2.0, 0.5]] * 3)
    fit = nearest_simplex_etf(rows)
    assert float(fit.scale) <= 1e-15
    assert float(fit.relative_distance) == pytest.approx(1.0, abs=1e-15)


# ----------------------------------------------------------------------------- (c) backends
def _assert_on(backend, value, dtype) -> np.ndarray:
    """`value` in the backend's namespace, on its device, in `dtype`."""
    like = backend.asarray(np.zeros(1), dtype=dtype)
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    assert value.dtype == like.dtype
    return _numpy(value)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_every_backend_matches_the_reference(backend, precision):
    k, d = 5, 7
    x, y = _data(k, d)
    means, counts = _means(x, y, k)
    dtype = getattr(backend.xp, precision)
    rtol = 1e-10 if precision == "float64" else 2e-5
    stats = ClassStats.from_features(backend.asarray(x, dtype=dtype), backend.asarray(y), k)
    lengths = np.array([1.0, 0.5, 0.0, 2.0, 1.0])
    by_samples = means - counts @ means / counts.sum()
    by_classes = means - means.mean(axis=0)
    rows = backend.asarray(means, dtype=dtype)
    cases = [
        (nearest_simplex_etf(stats), by_samples, _etf_reference(by_samples)),
        (
            nearest_simplex_etf(stats, global_mean="classes"),
            by_classes,
            _etf_reference(by_classes),
        ),
        (nearest_orthogonal_frame(stats), means, _frame_reference(means, np.ones(k))),
        (
            nearest_orthogonal_frame(stats, lengths=lengths),
            means,
            _frame_reference(means, lengths),
        ),
        (nearest_simplex_etf(rows), means, _etf_reference(means)),
        (
            nearest_orthogonal_frame(rows, lengths=lengths),
            means,
            _frame_reference(means, lengths),
        ),
    ]
    wide = backend.xp.float64
    for fit, source, (distance, scale) in cases:
        assert isinstance(fit, NearestFrame)
        target = _assert_on(backend, fit.target, dtype)
        assert target.shape == (k, d)
        assert np.linalg.norm(source - target) == pytest.approx(distance, rel=10 * rtol)
        assert _assert_on(backend, fit.distance, wide) == pytest.approx(distance, rel=rtol)
        assert _assert_on(backend, fit.scale, wide) == pytest.approx(scale, rel=rtol)
        relative = _assert_on(backend, fit.relative_distance, dtype)
        assert relative == pytest.approx(distance / np.linalg.norm(source), rel=rtol)


def test_a_tensor_that_requires_grad_is_measured():
    torch = pytest.importorskip("torch")
    w = torch.tensor(_simplex(4) + 0.1, requires_grad=True)
    fit = nearest_simplex_etf(w)
    assert not fit.target.requires_grad
    assert float(fit.distance) == pytest.approx(_etf_reference(_simplex(4) + 0.1)[0], rel=1e-12)


# ----------------------------------------------------------------------------- (d) scales
@pytest.mark.parametrize("exponent", [-20, -10, 0, 10, 20])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_feature_scales_from_1e_minus_20_to_1e20(exponent, precision):
    k, d = 4, 5
    x, y = _data(k, d, seed=3)
    means, counts = _means(x, y, k)
    factor = 10.0**exponent
    rtol = 1e-10 if precision == "float64" else 2e-5
    features = (x * factor).astype(precision)
    stats = ClassStats.from_features(features, y, k, gram=False)
    held = _means(features.astype(np.float64), y, k)[0] / factor  # the stored features' means
    lengths = np.array([1.0, 2.0, 0.0, 1.0])
    fits = {
        "etf": nearest_simplex_etf(stats),
        "frame": nearest_orthogonal_frame(stats, lengths=lengths),
        "etf rows": nearest_simplex_etf((means * factor).astype(precision)),
        "frame rows": nearest_orthogonal_frame((means * factor).astype(precision)),
    }
    want = {
        "etf": _etf_reference(held - counts @ held / counts.sum()),
        "frame": _frame_reference(held, lengths),
        "etf rows": _etf_reference(means),
        "frame rows": _frame_reference(means, np.ones(k)),
    }
    for name, fit in fits.items():
        distance, scale = want[name]
        assert float(fit.distance) == pytest.approx(distance * factor, rel=rtol), name
        assert float(fit.scale) == pytest.approx(scale * factor, rel=rtol), name
        assert np.isfinite(np.asarray(fit.target)).all(), name
        assert np.asarray(fit.target).dtype == np.dtype(precision)
        target = np.asarray(fit.target, dtype=np.float64) / factor
        rows = held - counts @ held / counts.sum() if name == "etf" else held
        if name.endswith("rows"):
            rows = means
        assert np.linalg.norm(rows - target) == pytest.approx(distance, rel=10 * rtol), name


# ----------------------------------------------------------------------------- (e) inputs
BAD = [
    (
        lambda: nearest_simplex_etf(np.ones((5, 3))),
        ValueError,
        r"`source` must have dim >= num_classes - 1 = 4 .*got dim 3",
    ),
    (
        lambda: nearest_orthogonal_frame(np.ones((5, 4))),
        ValueError,
        r"`source` must have dim >= 5, .*got dim 4",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3)[:, :2], lengths=[1, 1, 1]),
        ValueError,
        "got dim 2",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[1.0, 2.0]),
        ValueError,
        r"`lengths` must be \"equal\" or an array of shape \(3,\); got shape \(2,\)",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=np.ones((3, 1))),
        ValueError,
        r"got shape \(3, 1\)",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[1.0, -2.0, 1.0]),
        ValueError,
        r"`lengths` must be finite and >= 0; got -2.0 at \[1\]",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[1.0, 1.0, np.nan]),
        ValueError,
        r"`lengths` must be finite and >= 0; got nan at \[2\]",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[np.inf, 1.0, 1.0]),
        ValueError,
        r"got inf at \[0\]",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[0, 0, 0]),
        ValueError,
        "`lengths` must be positive for at least one class; got all zero",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths="orthogonal"),
        ValueError,
        r"`lengths` must be \"equal\" or an array of shape \(3,\); got 'orthogonal'",
    ),
    (
        lambda: nearest_orthogonal_frame(np.eye(3), lengths=[True, False, True]),
        TypeError,
        r"`lengths` must be \"equal\" or an array of real numbers; got dtype bool",
    ),
    (lambda: nearest_orthogonal_frame(np.eye(3), lengths=None), TypeError, "`lengths` must be"),
    (
        lambda: nearest_simplex_etf(np.zeros((3, 4))),
        ValueError,
        r"`source` must have a non-zero entry .*got a \(3, 4\) array of zeros",
    ),
    (
        lambda: nearest_orthogonal_frame(np.zeros((3, 4))),
        ValueError,
        "`source` must have a non-zero entry",
    ),
    (
        lambda: nearest_simplex_etf(np.array([[1.0, np.nan], [0.0, 1.0]])),
        ValueError,
        r"`source` must be finite; got nan at \[0, 1\]",
    ),
    (
        lambda: nearest_simplex_etf(np.eye(3, dtype=np.int64)),
        TypeError,
        "`source` must have a real floating dtype; got int64",
    ),
    (
        lambda: nearest_simplex_etf(np.ones(3)),
        ValueError,
        r"`source` must be 2-D \(classes, dim\)",
    ),
    (
        lambda: nearest_simplex_etf(np.ones((1, 3))),
        ValueError,
        "`source` must have a row for each of at least 2 classes; got 1",
    ),
    (
        lambda: nearest_simplex_etf([[1.0, 0.0], [0.0, 1.0]]),
        TypeError,
        "`source` must be a ClassStats or a \\(num_classes, dim\\) array; got list",
    ),
    (
        lambda: nearest_simplex_etf(np.eye(3), global_mean="median"),
        ValueError,
        "`global_mean` must be one of",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_inputs_are_refused_with_a_one_line_message(call, error, message):
    with pytest.raises(error, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_statistics_are_checked_against_the_classes_with_samples():
    x, y = _data(k=4, d=3)
    stats = ClassStats.from_features(x, y, 4)
    with pytest.raises(ValueError, match=r"`source` must have dim >= 4, .*got dim 3"):
        nearest_orthogonal_frame(stats)
    # One length zero: three directions fit in three dimensions.
    assert np.isfinite(float(nearest_orthogonal_frame(stats, lengths=[1, 1, 0, 1]).distance))
    with pytest.raises(
        ValueError, match=r"`lengths` must be \"equal\" or an array of shape \(4,\)"
    ):
        nearest_orthogonal_frame(stats, lengths=[1.0, 1.0, 1.0])
    y = np.where(y == 3, 0, y)
    stats = ClassStats.from_features(x, y, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="positive for at least one class with samples"):
            nearest_orthogonal_frame(stats, lengths=[0, 0, 0, 1])
    wide = ClassStats.from_features(np.ones((6, 2)) * np.arange(6)[:, None], np.arange(6) % 4, 4)
    with pytest.raises(ValueError, match=r"num_classes - 1 = 3 .*got dim 2"):
        nearest_simplex_etf(wide)
