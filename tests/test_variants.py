"""The metric variants of `ncgeom.measure.variants` against float64 NumPy formulas.

Every formula below is written from the raw features (class means by
`np.add.at`, nothing from `ClassStats`), in float64, from the very values the
library was given (float32 features are widened, not regenerated).
"""

from __future__ import annotations

import math
import warnings

import array_api_compat
import numpy as np
import pytest

from ncgeom import ClassStats
from ncgeom.measure.classes import DEGENERATE_METRICS, DEGENERATE_REASONS, populated
from ncgeom.measure.variants import (
    VARIANT_FLAGS,
    bias_collapse,
    bias_collapse_of,
    classifier_equinorm,
    classifier_equinorm_of,
    distance_norms,
    distance_norms_of,
    log_equinorm,
    log_equinorm_of,
    nc1_trace_ratio,
    nc1_trace_ratio_of,
    ood_deviation,
    ood_deviation_of,
    uniform_duality,
    uniform_duality_of,
    uniform_duality_variance,
    uniform_duality_variance_of,
    variant_flags,
)

SCALAR = (
    "nc1_trace_ratio",
    "log_equinorm",
    "classifier_equinorm",
    "bias_collapse",
    "uniform_duality",
    "uniform_duality_variance",
    "ood_deviation",
)
#: The outputs in units of W times the features; the others are scale-free.
WITH_UNITS = ("bias_collapse", "uniform_duality_variance")
RTOL = {"float64": 1e-10, "float32": 2e-5}


# ----------------------------------------------------------------------------- reference
def _reference(x, y, k, w, b, ood, how="samples"):
    """Every variant in float64 from features `x` (N, d), labels `y`, classifier
    `w` (K, d), bias `b` (K,) and OOD mean `ood` (d,), as the docs define them."""
    x, w, b, ood = (np.asarray(a, dtype=np.float64) for a in (x, w, b, ood))
    n = np.bincount(y, minlength=k)
    keep = np.flatnonzero(n > 0)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)
    mu = sums[keep] / n[keep, None]
    centre = x.mean(axis=0) if how == "samples" else mu.mean(axis=0)
    c = mu - centre
    relabel = np.full(k, -1)
    relabel[keep] = np.arange(keep.size)
    dev = x - mu[relabel[y]]
    within = np.sum(dev * dev) / x.shape[0]
    between = np.mean(np.sum(c * c, axis=1))
    c_norms = np.linalg.norm(c, axis=1)
    wk = w[keep]
    w_norms = np.linalg.norm(wk, axis=1)
    s = np.sum(wk * c, axis=1)
    per_class = np.full(k, np.nan)
    with np.errstate(invalid="ignore"):  # a zero row: 0 / 0 gives its NaN
        per_class[keep] = np.linalg.norm(wk / w_norms[:, None] - c / c_norms[:, None], axis=1)
    mu_norms = np.linalg.norm(mu, axis=1)
    cosines = np.abs(mu @ ood) / (mu_norms * np.linalg.norm(ood))
    return {
        "nc1_trace_ratio": within / between,
        "log_equinorm": np.std(np.log(c_norms)),
        "classifier_equinorm": np.std(w_norms) / np.mean(w_norms),
        "bias_collapse": np.linalg.norm(wk @ centre + b[keep]),
        "uniform_duality": np.std(s) / abs(np.mean(s)),
        "uniform_duality_variance": np.var(s, ddof=1),
        "ood_deviation": np.mean(cosines),
        "distance_norms": per_class,
    }


def _measure(stats, w, b, ood, how="samples"):
    """Every variant from the library (arrays on the statistics' backend)."""
    return {
        "nc1_trace_ratio": nc1_trace_ratio(stats, global_mean=how),
        "log_equinorm": log_equinorm(stats, global_mean=how),
        "classifier_equinorm": classifier_equinorm(w, stats),
        "bias_collapse": bias_collapse(w, b, stats, global_mean=how),
        "uniform_duality": uniform_duality(w, stats, global_mean=how),
        "uniform_duality_variance": uniform_duality_variance(w, stats, global_mean=how),
        "ood_deviation": ood_deviation(stats, ood),
        "distance_norms": distance_norms(w, stats, global_mean=how),
    }


def _data(seed=0, n=240, d=7, k=5, dtype="float64"):
    """Spread classes, a classifier near the means, a bias that nearly cancels
    the global mean's logits, and an OOD mean, in `dtype`."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = 3 * rng.normal(size=(k, d)) + 1.0
    x = centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.2, 1.5, size=(k, 1))[y]
    w = centres + 0.5 * rng.normal(size=(k, d))
    b = -(w @ x.mean(axis=0)) + rng.normal(size=k)
    ood = rng.normal(size=d)
    x, w, b, ood = (a.astype(dtype) for a in (x, w, b, ood))
    return x, y, k, w, b, ood


def _on_backend(backend, value):
    """`value` as a NumPy array, after checking its namespace and device."""
    like = backend.asarray(np.zeros(1))
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    return np.asarray(backend.to_numpy(value), dtype=np.float64)


def _compare(got, want, rtol):
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, err_msg=name)


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("how", ["samples", "classes"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_variant_matches_numpy(backend, dtype, how):
    x, y, k, w, b, ood = _data(dtype=dtype)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    assert stats.dtype == getattr(backend.xp, dtype)
    values = _measure(stats, backend.asarray(w), backend.asarray(b), backend.asarray(ood), how)
    got = {name: _on_backend(backend, value) for name, value in values.items()}
    for name in SCALAR:
        assert got[name].shape == (), name
    assert got["distance_norms"].shape == (k,)
    _compare(got, _reference(x, y, k, w, b, ood, how), RTOL[dtype])


def test_kernels_on_a_view_match_numpy(backend):
    x, y, k, w, b, ood = _data(seed=1)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    view = populated(stats)
    wb = backend.asarray(w)
    got = {
        "nc1_trace_ratio": nc1_trace_ratio_of(view),
        "log_equinorm": log_equinorm_of(view),
        "classifier_equinorm": classifier_equinorm_of(wb, view),
        "bias_collapse": bias_collapse_of(wb, backend.asarray(b), view),
        "uniform_duality": uniform_duality_of(wb, view),
        "uniform_duality_variance": uniform_duality_variance_of(wb, view),
        "ood_deviation": ood_deviation_of(view, backend.asarray(ood)),
        "distance_norms": distance_norms_of(wb, view),
    }
    got = {name: _on_backend(backend, value) for name, value in got.items()}
    _compare(got, _reference(x, y, k, w, b, ood), RTOL["float64"])
    flags = {name: bool(_on_backend(backend, f)) for name, f in variant_flags(view, wb).items()}
    assert flags == dict.fromkeys(VARIANT_FLAGS, False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_classifier_equinorm_without_statistics_takes_every_row(backend, dtype):
    w = np.random.default_rng(2).normal(size=(6, 5)).astype(dtype)
    w[3] *= 40.0
    norms = np.linalg.norm(w.astype(np.float64), axis=1)
    got = _on_backend(backend, classifier_equinorm(backend.asarray(w)))
    assert got == pytest.approx(np.std(norms) / np.mean(norms), rel=RTOL[dtype])


def test_bias_none_is_a_bias_free_classifier():
    x, y, k, w, _, ood = _data(seed=3)
    stats = ClassStats.from_features(x, y, k)
    want = _reference(x, y, k, w, np.zeros(k), ood)["bias_collapse"]
    assert float(bias_collapse(w, None, stats)) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- units
#: Feature scales: both sides of the engine's switch to scaled storage (2**16)
#: and the ends of the documented range.
SCALES = [1e-20, 1e-6, 2.0**-17, 1.0, 3.0, 2.0**17, 2.0**20, 1e6, 1e20]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_variant_is_right_at_every_feature_scale(backend, dtype):
    x0, y, k, w0, b0, ood0 = _data(seed=4)
    rtol = {"float64": 1e-9, "float32": 2e-5}[dtype]
    for h_scale, w_scale in [(s, 1.0) for s in SCALES] + [
        (1.0, 1e20),
        (1.0, 1e-20),
        (1e20, 1e15),
        (1e-20, 1e-15),
    ]:
        x = (x0 * h_scale).astype(dtype)
        w = (w0 * w_scale).astype(dtype)
        b = (b0 * h_scale * w_scale).astype(dtype)
        ood = (ood0 * h_scale).astype(dtype)
        stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
        values = _measure(stats, backend.asarray(w), backend.asarray(b), backend.asarray(ood))
        got = {name: _on_backend(backend, value) for name, value in values.items()}
        want = _reference(x, y, k, w, b, ood)
        for name in WITH_UNITS:
            assert 0 < want[name] < math.inf
        for name in want:
            np.testing.assert_allclose(
                got[name], want[name], rtol=rtol, err_msg=f"{name} at {h_scale}, {w_scale}"
            )


def test_outputs_with_units_are_float64():
    x, y, k, w, b, _ = _data(dtype="float32")
    stats = ClassStats.from_features(x * np.float32(1e20), y, k)
    w = w * np.float32(1e15)
    b = b * np.float32(1e35)
    assert np.isfinite(b).all()
    assert bias_collapse(w, b, stats).dtype == np.float64
    variance = uniform_duality_variance(w, stats)
    assert variance.dtype == np.float64
    assert 1e60 < float(variance) < np.inf  # far beyond float32's range
    assert uniform_duality(w, stats).dtype == np.float32


# ----------------------------------------------------------------------------- user sizes
@pytest.mark.parametrize("how", ["samples", "classes"])
def test_float32_at_many_samples_a_class(how):
    rng = np.random.default_rng(5)
    counts = np.array([100_000, 40_000, 10_000, 3_000, 1_000, 1_000, 20_000, 5_000])
    k, d = counts.size, 32
    y = rng.permutation(np.repeat(np.arange(k), counts))
    centres = rng.normal(size=(k, d)) + 2.0
    x = (centres[y] + 0.3 * rng.normal(size=(y.size, d))).astype(np.float32)
    w = (centres + 0.2 * rng.normal(size=(k, d))).astype(np.float32)
    b = (-(w @ x[:1000].mean(axis=0)) + rng.normal(size=k)).astype(np.float32)
    ood = rng.normal(size=d).astype(np.float32)
    stats = ClassStats.from_features(x, y, k)
    values = _measure(stats, w, b, ood, how)
    got = {name: np.asarray(value, dtype=np.float64) for name, value in values.items()}
    _compare(got, _reference(x, y, k, w, b, ood, how), 2e-5)


@pytest.mark.slow
def test_float32_at_a_vocabulary_of_classes():
    rng = np.random.default_rng(6)
    k, d, per_class = 32_768, 32, 16
    y = rng.permutation(np.repeat(np.arange(k), per_class))
    centres = rng.normal(size=(k, d)).astype(np.float32)
    x = centres[y] + np.float32(0.2) * rng.normal(size=(y.size, d)).astype(np.float32)
    w = centres + np.float32(0.3) * rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    ood = rng.normal(size=d).astype(np.float32)
    stats = ClassStats.from_features(x, y, k, gram=False)
    got = {name: np.asarray(v, dtype=np.float64) for name, v in _measure(stats, w, b, ood).items()}
    _compare(got, _reference(x, y, k, w, b, ood), 2e-5)


# ----------------------------------------------------------------------------- classes left out
def test_classes_without_samples_are_left_out(backend):
    x, y, k, w, b, ood = _data(seed=7, k=6)
    y = np.where(y == 2, 1, y)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    with pytest.warns(UserWarning, match=r"classes \[2\] have no samples"):
        values = _measure(stats, backend.asarray(w), backend.asarray(b), backend.asarray(ood))
    got = {name: _on_backend(backend, value) for name, value in values.items()}
    want = _reference(x, y, k, w, b, ood)
    assert np.isnan(want["distance_norms"][2]) and np.isnan(got["distance_norms"][2])
    _compare(got, want, RTOL["float64"])
    # The kernel spreads the populated classes over all K, NaN for the class left out.
    with pytest.warns(UserWarning):
        view = populated(stats)
    spread = _on_backend(backend, distance_norms_of(backend.asarray(w), view))
    np.testing.assert_allclose(spread, want["distance_norms"], rtol=RTOL["float64"])


@pytest.mark.parametrize("how", ["samples", "classes"])
def test_the_rows_of_classes_without_samples_do_not_count(how):
    x, y, k, w, b, ood = _data(seed=8, k=6)
    y = np.where(y == 4, 0, y)
    stats = ClassStats.from_features(x, y, k)
    wild = w.copy()
    wild[4] = 1e6  # class 4 has no samples: its row and bias must not matter
    wild_b = b.copy()
    wild_b[4] = -1e9
    want = _reference(x, y, k, w, b, ood, how)
    with pytest.warns(UserWarning, match=r"\[4\]"):
        values = _measure(stats, wild, wild_b, ood, how)
    got = {name: np.asarray(value, dtype=np.float64) for name, value in values.items()}
    _compare(got, want, 1e-10)


# ----------------------------------------------------------------------------- degenerate
def test_a_zero_classifier_is_undefined_with_its_reason():
    x, y, k, _, b, _ = _data(seed=9)
    stats = ClassStats.from_features(x, y, k)
    zero = np.zeros((k, x.shape[1]))
    assert np.isnan(float(classifier_equinorm(zero, stats)))
    assert np.isnan(float(classifier_equinorm(zero)))
    assert np.isnan(float(uniform_duality(zero, stats)))
    assert np.isnan(np.asarray(distance_norms(zero, stats))).all()
    # Defined: no spread of zero similarities, and the logits are the bias.
    assert float(uniform_duality_variance(zero, stats)) == 0.0
    assert float(bias_collapse(zero, b, stats)) == pytest.approx(np.linalg.norm(b), rel=1e-14)
    for name in ("classifier_equinorm", "uniform_duality", "distance_norms"):
        assert "classifier" in DEGENERATE_METRICS[name]


def test_a_zero_classifier_row_is_nan_for_its_class_only():
    x, y, k, w, b, ood = _data(seed=10)
    w[1] = 0.0
    got = np.asarray(distance_norms(w, ClassStats.from_features(x, y, k)))
    want = _reference(x, y, k, w, b, ood)["distance_norms"]  # NaN at 1: 0 / 0
    assert np.isnan(got[1]) and np.isnan(want[1])
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_a_class_at_the_global_mean_leaves_the_log_equinorm_undefined():
    x = np.array([[-1.0, 2.0], [0.0, 0.0], [1.0, -2.0]])
    stats = ClassStats.from_features(x, np.arange(3), 3)
    assert np.isnan(float(log_equinorm(stats)))
    view = populated(stats)
    assert bool(variant_flags(view)["centred_zero"])
    assert DEGENERATE_METRICS["log_equinorm"][-1] == "centred_zero"
    assert "global mean" in DEGENERATE_REASONS["centred_zero"]
    # Its distance norm has no direction either; the others do.
    w = np.array([[-1.0, 2.0], [5.0, 5.0], [2.0, -4.0]])
    got = np.asarray(distance_norms(w, stats))
    assert np.isnan(got[1]) and np.allclose(got[[0, 2]], 0.0, atol=1e-15)


def test_a_zero_mean_similarity_leaves_uniform_duality_undefined():
    # s = (+4, -4): the mean is exactly zero, the variance is not.
    x = np.array([[2.0, 0.0], [-2.0, 0.0]])
    stats = ClassStats.from_features(x, np.arange(2), 2)
    w = np.array([[2.0, 1.0], [2.0, -1.0]])
    assert np.isnan(float(uniform_duality(w, stats)))
    assert bool(variant_flags(populated(stats), w)["duality_mean"])
    assert float(uniform_duality_variance(w, stats)) == pytest.approx(32.0, rel=1e-15)
    assert DEGENERATE_METRICS["uniform_duality"][-1] == "duality_mean"
    assert "w_k . (mu_k - mu_G)" in DEGENERATE_REASONS["duality_mean"]


def test_coinciding_means_leave_the_centred_variants_undefined():
    x = np.ones((6, 3))
    y = np.repeat(np.arange(3), 2)
    stats = ClassStats.from_features(x + 1e-3 * np.arange(6)[:, None] * [[1, -1, 0]], y, 3)
    same = ClassStats.from_features(x, y, 3)
    w = np.random.default_rng(11).normal(size=(3, 3))
    for metric in (nc1_trace_ratio, log_equinorm):
        assert np.isfinite(float(metric(stats))) and np.isnan(float(metric(same)))
    assert np.isnan(float(uniform_duality(w, same)))
    assert np.isnan(np.asarray(distance_norms(w, same))).all()
    # Uncentred: the means still have a direction.
    assert float(ood_deviation(same, np.array([1.0, 1.0, 1.0]))) == pytest.approx(1.0)


def test_zero_class_means_count_as_orthogonal_and_all_zero_is_undefined():
    x = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 4.0]])
    stats = ClassStats.from_features(x, np.array([0, 1, 1, 2]), 3)
    ood = np.array([1.0, 0.0])
    want = (1.0 + 0.0 + math.sqrt(0.5)) / 3
    assert float(ood_deviation(stats, ood)) == pytest.approx(want, rel=1e-15)
    dead = ClassStats.from_features(np.zeros((4, 2)), np.array([0, 1, 1, 2]), 3)
    assert np.isnan(float(ood_deviation(dead, ood)))
    assert DEGENERATE_METRICS["ood_deviation"] == ("means",)


def test_every_new_flag_has_a_reason():
    for name in ("nc1_trace_ratio", "log_equinorm", "classifier_equinorm", "uniform_duality"):
        for flag in DEGENERATE_METRICS[name]:
            assert flag in DEGENERATE_REASONS
    assert set(VARIANT_FLAGS) <= set(DEGENERATE_REASONS)


# ----------------------------------------------------------------------------- the optimum
def _optimum_stats(counts):
    from ncgeom.theory import ufm_relu_optimum

    opt = ufm_relu_optimum(counts, 2e-2, 2e-2)
    y = np.repeat(np.arange(len(counts)), counts)
    return ClassStats.from_features(np.asarray(opt.means())[y], y, len(counts)), opt


def test_values_at_the_optimum():
    # Balanced: every variant that measures a spread is zero; NC1 is zero always.
    stats, opt = _optimum_stats([40, 40, 40, 40])
    w = np.asarray(opt.classifier())
    for value in (
        nc1_trace_ratio(stats),
        log_equinorm(stats),
        classifier_equinorm(w, stats),
        bias_collapse(w, None, stats),
        uniform_duality(w, stats),
        uniform_duality_variance(w, stats),
    ):
        assert abs(float(value)) < 1e-12
    assert np.abs(np.asarray(distance_norms(w, stats))).max() < 1e-7
    # Imbalanced: NC1 stays zero; the others take values that depend on the counts.
    stats, opt = _optimum_stats([30, 20, 3, 1])
    w = np.asarray(opt.classifier())
    assert float(nc1_trace_ratio(stats)) == 0.0
    for value in (
        log_equinorm(stats),
        classifier_equinorm(w, stats),
        bias_collapse(w, None, stats),
        uniform_duality(w, stats),
        uniform_duality_variance(w, stats),
    ):
        assert float(value) > 0.1


# ----------------------------------------------------------------------------- bad inputs
def _bad_cases():
    torch = pytest.importorskip("torch")
    x, y, k, w, b, ood = _data()
    stats = ClassStats.from_features(x, y, k)
    nan_w = w.copy()
    nan_w[2, 3] = np.nan
    nan_b = b.copy()
    nan_b[1] = np.inf
    nan_ood = ood.copy()
    nan_ood[0] = np.nan
    return {
        "w_shape": (
            lambda: uniform_duality(w.T, stats),
            ValueError,
            "`classifier` must have shape",
        ),
        "w_int": (
            lambda: distance_norms(w.astype(np.int64), stats),
            TypeError,
            "`classifier` must have a real floating dtype; got int64",
        ),
        "w_nan": (
            lambda: uniform_duality_variance(nan_w, stats),
            ValueError,
            "`classifier` must be finite; got nan at [2, 3]",
        ),
        "w_nan_bias": (
            lambda: bias_collapse(nan_w, b, stats),
            ValueError,
            "`classifier` must be finite; got nan at [2, 3]",
        ),
        "w_library": (
            lambda: classifier_equinorm(torch.asarray(w), stats),
            TypeError,
            "`stats` and `classifier` must come from the same array library",
        ),
        "w_1d": (
            lambda: classifier_equinorm(w[0]),
            ValueError,
            "`classifier` must be 2-D (classes, dim); got shape (7,)",
        ),
        "w_one_row": (
            lambda: classifier_equinorm(w[:1]),
            ValueError,
            "`classifier` must have a row for each of at least 2 classes; got 1",
        ),
        "w_nan_alone": (
            lambda: classifier_equinorm(nan_w),
            ValueError,
            "`classifier` must be finite; got nan at [2, 3]",
        ),
        "b_shape": (
            lambda: bias_collapse(w, b[:3], stats),
            ValueError,
            f"`bias` must have shape ({k},); got (3,)",
        ),
        "b_int": (
            lambda: bias_collapse(w, np.arange(k), stats),
            TypeError,
            "`bias` must have a real floating dtype; got int64",
        ),
        "b_nan": (
            lambda: bias_collapse(w, nan_b, stats),
            ValueError,
            "`bias` must be finite; got inf at [1]",
        ),
        "b_library": (
            lambda: bias_collapse(w, torch.asarray(b), stats),
            TypeError,
            "`stats` and `bias` must come from the same array library",
        ),
        "ood_shape": (
            lambda: ood_deviation(stats, ood[:3]),
            ValueError,
            "`ood_mean` must have shape (7,), one entry per feature; got (3,)",
        ),
        "ood_2d": (
            lambda: ood_deviation(stats, ood[None, :]),
            ValueError,
            "`ood_mean` must have shape (7,), one entry per feature; got (1, 7)",
        ),
        "ood_nan": (
            lambda: ood_deviation(stats, nan_ood),
            ValueError,
            "`ood_mean` must be finite; got nan at [0]",
        ),
        "ood_zero": (
            lambda: ood_deviation(stats, np.zeros(7)),
            ValueError,
            "`ood_mean` must be non-zero (a direction); got all 7 entries 0",
        ),
        "ood_int": (
            lambda: ood_deviation(stats, np.ones(7, dtype=np.int64)),
            TypeError,
            "`ood_mean` must have a real floating dtype; got int64",
        ),
        "ood_library": (
            lambda: ood_deviation(stats, torch.asarray(ood)),
            TypeError,
            "`stats` and `ood_mean` must come from the same array library",
        ),
        "ood_list": (
            lambda: ood_deviation(stats, ood.tolist()),
            TypeError,
            "`ood_mean` must be an array",
        ),
        "global_mean": (
            lambda: nc1_trace_ratio(stats, global_mean="median"),
            ValueError,
            "`global_mean` must be one of ('samples', 'classes'); got 'median'",
        ),
        "stats_type": (
            lambda: log_equinorm(x),
            TypeError,
            "`stats` must be a ClassStats; got ndarray",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "w_shape",
        "w_int",
        "w_nan",
        "w_nan_bias",
        "w_library",
        "w_1d",
        "w_one_row",
        "w_nan_alone",
        "b_shape",
        "b_int",
        "b_nan",
        "b_library",
        "ood_shape",
        "ood_2d",
        "ood_nan",
        "ood_zero",
        "ood_int",
        "ood_library",
        "ood_list",
        "global_mean",
        "stats_type",
    ],
)
def test_bad_inputs_raise_the_documented_errors(case):
    call, error, message = _bad_cases()[case]
    with pytest.raises(error) as caught:
        call()
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


# ----------------------------------------------------------------------------- host reads
def test_kernels_read_nothing_back_and_the_metrics_read_once():
    torch = pytest.importorskip("torch")
    from host_sync import HostSyncAudit

    x, y, k, w, b, ood = _data(seed=12)
    x, y, w, b, ood = (torch.asarray(a) for a in (x, y, w, b, ood))
    stats = ClassStats.from_features(x, y, k)
    view = populated(stats)
    with HostSyncAudit() as audit:
        for kernel in (nc1_trace_ratio_of, log_equinorm_of):
            kernel(view)
        for kernel in (
            classifier_equinorm_of,
            uniform_duality_of,
            uniform_duality_variance_of,
            distance_norms_of,
        ):
            kernel(w, view)
        bias_collapse_of(w, b, view)
        ood_deviation_of(view, ood)
        variant_flags(view, w)
    assert audit.kinds() == []
    # The public metrics: the read of `populated`, and one for their other inputs.
    with HostSyncAudit() as audit:
        nc1_trace_ratio(stats)
    assert len(audit.kinds()) == 1
    for call in (
        lambda: uniform_duality(w, stats),
        lambda: bias_collapse(w, b, stats),
        lambda: ood_deviation(stats, ood),
    ):
        with HostSyncAudit() as audit:
            call()
        assert len(audit.kinds()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gapped = ClassStats.from_features(x, torch.where(y == 1, 0, y), k)
        view = populated(gapped)
    with HostSyncAudit() as audit:
        distance_norms_of(w, view)
    assert [kind for kind, _ in audit.kinds()] == ["upload", "upload"]  # take and spread
