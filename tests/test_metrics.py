"""Every metric against an independent float64 NumPy formula, on every backend."""

from __future__ import annotations

import dataclasses

import array_api_compat
import numpy as np
import pytest

import ncgeom
from ncgeom import ClassStats, metrics, nc_report

import reference as ref

RTOL = 1e-10


def _data(seed: int = 0, n: int = 240, d: int = 7, k: int = 5):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = 3 * rng.normal(size=(k, d))
    x = centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.2, 1.5, size=(k, 1))[y]
    w = centres + 0.3 * rng.normal(size=(k, d))
    return x, y, k, w


@pytest.fixture
def data():
    return _data()


def _assert_on(backend, value):
    """`value` lives in the backend's namespace and on its device; returned as a float."""
    like = backend.asarray(np.zeros(1))
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    return float(backend.to_numpy(value))


@pytest.mark.parametrize("how", ["samples", "classes"])
def test_centred_metrics_match_reference(backend, data, how):
    x, y, k, _ = data
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    got = {
        "nc1": metrics.nc1(stats, global_mean=how),
        "etf_error": metrics.etf_error(stats, global_mean=how),
        "equinorm": metrics.equinorm(stats, global_mean=how),
        "equiangularity": metrics.equiangularity(stats, global_mean=how),
    }
    want = {
        "nc1": ref.nc1(x, y, k, how),
        "etf_error": ref.etf_error(x, y, k, how),
        "equinorm": ref.equinorm(x, y, k, how),
        "equiangularity": ref.equiangularity(x, y, k, how),
    }
    for name, value in got.items():
        assert _assert_on(backend, value) == pytest.approx(want[name], rel=RTOL), name


def test_pair_and_classifier_metrics_match_reference(backend, data):
    x, y, k, w = data
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    wb = backend.asarray(w)
    pairs = [
        (metrics.cdnv(stats), ref.cdnv(x, y, k)),
        (metrics.cdnv(stats, block_rows=2), ref.cdnv(x, y, k)),
        (metrics.orthogonality_error(stats), ref.orthogonality_error(x, y, k)),
        (metrics.orthogonality_error(stats, block_rows=1), ref.orthogonality_error(x, y, k)),
        (metrics.equiangularity(stats, block_rows=3), ref.equiangularity(x, y, k)),
        (metrics.etf_error(stats, block_rows=2), ref.etf_error(x, y, k)),
        (metrics.self_duality_error(wb, stats), ref.self_duality_error(w, x, y, k)),
        (metrics.scaled_alignment_error(wb, stats), ref.scaled_alignment_error(w, x, y, k)),
    ]
    for got, want in pairs:
        assert _assert_on(backend, got) == pytest.approx(want, rel=RTOL)


def test_stats_derived_values_match_reference(backend, data):
    x, y, k, _ = data
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    np.testing.assert_allclose(backend.to_numpy(stats.means), ref.means(x, y, k), rtol=RTOL)
    np.testing.assert_allclose(
        backend.to_numpy(stats.global_mean), x.mean(axis=0), rtol=RTOL, atol=1e-14
    )
    np.testing.assert_allclose(
        backend.to_numpy(stats.class_variances), ref.variances(x, y, k), rtol=RTOL
    )
    np.testing.assert_allclose(
        backend.to_numpy(stats.within_covariance()), ref.within_covariance(x, y, k), rtol=RTOL
    )
    np.testing.assert_array_equal(backend.to_numpy(stats.counts), np.bincount(y, minlength=k))


@pytest.mark.parametrize("with_bias", [False, True])
def test_ncc_agreement_matches_reference(backend, data, with_bias):
    x, y, k, w = data
    mu = ref.means(x, y, k)
    rng = np.random.default_rng(1)
    w = w + 3 * rng.normal(size=w.shape)  # disagree on some rows
    b = rng.normal(size=k) if with_bias else None
    got = ncgeom.ncc_agreement(
        backend.asarray(x),
        backend.asarray(w),
        backend.asarray(mu),
        None if b is None else backend.asarray(b),
        chunk_size=17,
    )
    want = ref.ncc_agreement(x, w, mu, b)
    assert 0 < want < 1
    assert got.fraction == pytest.approx(want, abs=0)
    assert int(backend.to_numpy(got.merge(got).total)) == 2 * len(x)


@pytest.mark.parametrize("chunk", [None, 13])
def test_report_in_memory_matches_reference(backend, data, chunk):
    x, y, k, w = data
    b = np.random.default_rng(2).normal(size=k)
    rep = nc_report(
        (backend.asarray(x), backend.asarray(y)),
        backend.asarray(w),
        backend.asarray(b),
        chunk_size=chunk,
    )
    want = {
        "nc1": ref.nc1(x, y, k),
        "cdnv": ref.cdnv(x, y, k),
        "within_variance": ref.within_variance(x, y, k),
        "etf_error": ref.etf_error(x, y, k),
        "equinorm": ref.equinorm(x, y, k),
        "equiangularity": ref.equiangularity(x, y, k),
        "orthogonality_error": ref.orthogonality_error(x, y, k),
        "self_duality_error": ref.self_duality_error(w, x, y, k),
        "scaled_alignment_error": ref.scaled_alignment_error(w, x, y, k),
        "ncc_agreement": ref.ncc_agreement(x, w, ref.means(x, y, k), b),
    }
    for name, value in want.items():
        assert getattr(rep, name) == pytest.approx(value, rel=RTOL), name
    assert {name for name, _ in rep.unavailable} == {
        "gof_error",
        "classifier_gram_error",
        "logit_structure_error",
        "optimum_frame_distance",
        "ood_deviation",
    }
    assert rep.counts == tuple(np.bincount(y, minlength=k).tolist())
    assert rep.num_samples == len(x) and rep.dim == x.shape[1] and rep.num_classes == k


def test_report_from_stats_matches_in_memory(backend, data):
    x, y, k, w = data
    xb, yb, wb = backend.asarray(x), backend.asarray(y), backend.asarray(w)
    from_stats = nc_report(ClassStats.from_features(xb, yb, k), wb)
    in_memory = nc_report((xb, yb), wb)
    for name in ncgeom.NCReport.METRICS:
        if name == "ncc_agreement":
            assert from_stats.ncc_agreement is None
            assert "features" in dict(from_stats.unavailable)["ncc_agreement"]
            continue
        if name in (
            "gof_error",
            "classifier_gram_error",
            "logit_structure_error",
            "optimum_frame_distance",
            "ood_deviation",
        ):
            assert getattr(from_stats, name) is getattr(in_memory, name) is None  # not given
            continue
        assert getattr(from_stats, name) == pytest.approx(getattr(in_memory, name), rel=RTOL)


def test_report_without_gram_or_classifier_says_why(backend, data):
    x, y, k, _ = data
    rep = nc_report(
        ClassStats.from_features(backend.asarray(x), backend.asarray(y), k, gram=False)
    )
    why = dict(rep.unavailable)
    assert rep.nc1 is None and "Gram" in why["nc1"]
    assert rep.self_duality_error is None and "classifier" in why["self_duality_error"]
    assert rep.cdnv == pytest.approx(ref.cdnv(x, y, k), rel=RTOL)
    text = str(rep)
    assert "nc1" in text and "no classifier given" in text
    as_dict = rep.to_dict()
    assert as_dict["nc1"] is None and as_dict["counts"] == list(np.bincount(y, minlength=k))


def test_nc1_large_k_uses_the_dim_side(backend):
    # K > d: the between-class basis comes from the (d, d) Gram.
    x, y, k, _ = _data(seed=3, n=400, d=4, k=12)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    assert _assert_on(backend, metrics.nc1(stats)) == pytest.approx(ref.nc1(x, y, k), rel=RTOL)
    rep = nc_report((backend.asarray(x), backend.asarray(y)))
    assert rep.nc1 == pytest.approx(ref.nc1(x, y, k), rel=RTOL)


def test_empty_class_is_excluded_with_warning(backend, data):
    x, y, k, w = data
    y = np.where(y == 2, 1, y)
    keep = np.array([0, 1, 3, 4])
    xb, yb = backend.asarray(x), backend.asarray(y)
    with pytest.warns(UserWarning, match=r"classes \[2\] have no samples"):
        rep = nc_report((xb, yb), backend.asarray(w))
    relabel = np.searchsorted(keep, y)
    assert rep.excluded == ((2, "no samples"),)
    assert rep.nc1 == pytest.approx(ref.nc1(x, relabel, 4), rel=RTOL)
    assert rep.cdnv == pytest.approx(ref.cdnv(x, relabel, 4), rel=RTOL)
    assert rep.scaled_alignment_error == pytest.approx(
        ref.scaled_alignment_error(w[keep], x, relabel, 4), rel=RTOL
    )
    stats = ClassStats.from_features(xb, yb, k)
    with pytest.warns(UserWarning, match=r"\[2\]"):
        nc1 = _assert_on(backend, metrics.nc1(stats))
    assert nc1 == pytest.approx(ref.nc1(x, relabel, 4), rel=RTOL)
    assert np.isnan(backend.to_numpy(stats.means)[2]).all()
    assert np.isnan(backend.to_numpy(stats.class_variances)[2])


def test_fewer_than_two_populated_classes_is_an_error():
    x = np.ones((4, 3))
    stats = ClassStats.from_features(x, np.zeros(4, dtype=np.int64), 3)
    with pytest.raises(ValueError, match="at least two classes with samples; got 1"):
        metrics.cdnv(stats)


def test_global_mean_option_is_checked(data):
    x, y, k, _ = data
    with pytest.raises(ValueError, match="`global_mean` must be one of"):
        metrics.nc1(ClassStats.from_features(x, y, k), global_mean="median")


def test_classifier_shape_and_namespace_are_checked(data):
    x, y, k, w = data
    stats = ClassStats.from_features(x, y, k)
    with pytest.raises(ValueError, match=r"`classifier` must have shape \(num_classes, dim\)"):
        metrics.self_duality_error(w[:, :3], stats)
    import torch

    with pytest.raises(TypeError, match="same array library"):
        metrics.self_duality_error(torch.asarray(w), stats)


# ----------------------------------------------------------------------------- degenerate geometry
def _optimum_features(counts, decay):
    """Features at the ReLU UFM optimum: every sample at its class mean."""
    from ncgeom.theory import ufm_relu_optimum

    opt = ufm_relu_optimum(counts, decay, decay)
    y = np.repeat(np.arange(len(counts)), counts)
    return opt.means()[y], y, opt


def test_one_class_alive_leaves_the_orthogonality_undefined(backend):
    # All classes but the largest collapse to the origin: no pair of directions.
    x, y, opt = _optimum_features([300, 3, 2, 1], 3e-2)
    assert (np.linalg.norm(opt.means(), axis=1) > 0).tolist() == [True, False, False, False]
    xb, yb = backend.asarray(x), backend.asarray(y)
    with pytest.warns(UserWarning, match="fewer than two class means are non-zero"):
        rep = nc_report((xb, yb), backend.asarray(opt.classifier()))
    assert np.isnan(rep.orthogonality_error)
    assert dict(rep.unavailable)["orthogonality_error"] == (
        "fewer than two class means are non-zero (no pair of directions to compare)"
    )
    stats = ClassStats.from_features(xb, yb, 4)
    assert np.isnan(_assert_on(backend, metrics.orthogonality_error(stats)))
    # The metrics that stay defined keep their values (three classes share the mean 0).
    assert rep.etf_error == pytest.approx(ref.etf_error(x, y, 4), rel=RTOL)
    assert rep.equinorm == pytest.approx(ref.equinorm(x, y, 4), rel=RTOL)


def test_two_classes_alive_give_their_orthogonality():
    # Two surviving classes: one pair with a direction; the collapsed mean counts as cosine 0.
    x, y, opt = _optimum_features([100, 10, 1], 1.5e-2)
    assert (np.linalg.norm(opt.means(), axis=1) > 0).tolist() == [True, True, False]
    tilted = x + np.where(y[:, None] == 1, 0.3 * opt.means()[0], 0.0)
    rep = nc_report((tilted, y))
    assert rep.orthogonality_error == pytest.approx(
        ref.orthogonality_error(tilted, y, 3), rel=RTOL
    )
    assert rep.orthogonality_error > 0.05
    assert "orthogonality_error" not in dict(rep.unavailable)


def test_cdnv_at_the_optimum_is_zero_or_undefined():
    """docs/metrics.md: CDNV is 0 at the optimum while at most one class collapses,
    NaN once two have (their means coincide at the origin: 0 / 0)."""
    x, y, _ = _optimum_features([100, 10, 1], 1.5e-2)  # one class collapsed
    assert nc_report((x, y)).cdnv == pytest.approx(0.0, abs=1e-25)
    x, y, _ = _optimum_features([300, 3, 2, 1], 3e-2)  # three collapsed
    with pytest.warns(UserWarning, match="two class means coincide"):
        rep = nc_report((x, y))
    assert np.isnan(rep.cdnv)
    assert dict(rep.unavailable)["cdnv"].startswith("two class means coincide")


# ----------------------------------------------------------------------------- empty classes
def test_many_empty_classes_are_summarised_in_the_warning():
    k = 32_768
    rng = np.random.default_rng(4)
    populated = np.array([3, 4, 5, 17, 1000, k - 1])
    y = np.repeat(populated, 5)
    x = 3 * rng.normal(size=(k, 4))[y] + rng.normal(size=(y.size, 4))
    with pytest.warns(UserWarning) as caught:
        rep = nc_report((x, y), num_classes=k)
    (message,) = [str(w.message) for w in caught]
    assert message == (
        "classes [0-2, 6-16, 18-999, 1001-32766] have no samples and are left out of the "
        "metrics (32,762 of 32,768 classes; NCReport.excluded and "
        "metrics.populated(stats).excluded list them all)"
    )
    empty = sorted(set(range(k)) - set(populated.tolist()))
    assert [c for c, _ in rep.excluded] == empty
    # Every other class empty: 16,384 runs, the first eight shown.
    y = np.arange(0, k, 2)
    stats = ClassStats.from_features(rng.normal(size=(y.size, 3)), y, k)
    with pytest.warns(UserWarning) as caught:
        view = metrics.populated(stats)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("classes [1, 3, 5, 7, 9, 11, 13, 15, ... 16,376 more] have no")
    assert len(message) < 250
    assert view.excluded == tuple(range(1, k, 2))


def test_a_short_list_of_empty_classes_is_given_in_full():
    x, y, k, _ = _data()
    y = np.where(np.isin(y, [1, 2]), 0, y)
    with pytest.warns(UserWarning) as caught:
        metrics.cdnv(ClassStats.from_features(x, y, k))
    assert [str(w.message) for w in caught] == [
        "classes [1, 2] have no samples and are left out of the metrics"
    ]


# ----------------------------------------------------------------------------- hostile statistics
def _edited(**fields):
    x, y, k, _ = _data()
    stats = ClassStats.from_features(x, y, k)
    return dataclasses.replace(stats, **{f: v(getattr(stats, f)) for f, v in fields.items()})


HOSTILE_STATS = {
    "nan_sqnorms": (
        {"sqnorms": lambda a: np.where(np.arange(a.size) == 1, np.nan, a)},
        ValueError,
        "`stats` are not finite: their class variances (from `sqnorms`) hold NaN or Inf",
    ),
    "inf_sqnorms": (
        {"sqnorms": lambda a: a * np.inf},
        ValueError,
        "`stats` are not finite: their class variances (from `sqnorms`) hold NaN or Inf",
    ),
    "nan_gram": (
        {"gram": lambda a: a * np.nan},
        ValueError,
        "`stats` are not finite: their Gram holds NaN or Inf",
    ),
    "zero_scale": (
        {"scale": lambda a: np.zeros(())},
        ValueError,
        "`stats.scale` must be a finite positive number; got 0.0",
    ),
    "negative_counts": (
        {"counts": lambda a: a * np.array([-1, 1, 1, 1, 1])},
        ValueError,
        "`stats.counts` must be non-negative; got -",
    ),
    "float_counts": (
        {"counts": lambda a: a + 0.5},
        TypeError,
        "`stats.counts` must have an integer dtype; got float64",
    ),
    "float32_sums": (
        {"sums": lambda a: a.astype(np.float32)},
        TypeError,
        "`stats.sums` must have the dtype of `stats.shift`, float64; got float32",
    ),
    "broadcast_sqnorms": (
        {"sqnorms": lambda a: a[:1]},
        ValueError,
        "`stats.sqnorms` must have shape (5,) to match `stats.shift` (5, 7); got (1,)",
    ),
    "broadcast_sums": (
        {"sums": lambda a: a[:1]},
        ValueError,
        "`stats.sums` must have shape (5, 7) to match `stats.shift` (5, 7); got (1, 7)",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_STATS))
def test_corrupt_statistics_are_refused_not_measured(case):
    fields, error, message = HOSTILE_STATS[case]
    stats = _edited(**fields)
    for measure in (metrics.cdnv, metrics.nc1, metrics.orthogonality_error, nc_report):
        with pytest.raises(error) as caught:
            measure(stats)
        assert str(caught.value).startswith(message), (measure, str(caught.value))


def test_a_zero_classifier_is_flagged_as_undefined():
    x, y, k, w = _data()
    y = np.where(y == 2, 1, y)  # class 2 has no samples: its row does not count
    stats = ClassStats.from_features(x, y, k)
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        view = metrics.populated(stats)
    only_empty_row = np.zeros_like(w)
    only_empty_row[2] = 1.0
    assert bool(metrics.classifier_flags(only_empty_row, view)["classifier"])
    assert not bool(metrics.classifier_flags(w, view)["classifier"])
    for name in ("self_duality_error", "scaled_alignment_error"):
        assert "classifier" in metrics.DEGENERATE_METRICS[name]
        with pytest.warns(UserWarning, match=r"classes \[2\]"):
            assert np.isnan(getattr(metrics, name)(only_empty_row, stats))
    assert metrics.DEGENERATE_REASONS["classifier"] == (
        "the classifier is zero on the classes with samples (no direction)"
    )


def test_one_populated_class_among_many_is_named_briefly():
    k = 32_768
    stats = ClassStats.from_features(np.ones((3, 2)), np.full(3, 7), k)
    with pytest.raises(ValueError) as caught:
        metrics.cdnv(stats)
    assert str(caught.value) == (
        "`stats` must hold at least two classes with samples; got 1 "
        "(classes with samples: [7] of 32,768)"
    )


@pytest.mark.parametrize("how", ["samples", "classes"])
@pytest.mark.parametrize("offset", [1e10, 1e12])
def test_nc1_far_from_the_origin_sees_only_the_spread(offset, how):
    # A common offset: the centre rounds by eps * offset, which (before the
    # second centring of `Classes.centred`) gave Sigma_B a spurious direction
    # with an eigenvalue of that rounding squared: NC1 came out near 1e8.
    rng = np.random.default_rng(8)
    k, d = 4, 6
    y = np.concatenate([np.arange(k), rng.integers(0, k, 60)])
    spread = 3 * rng.normal(size=(k, d))[y] + 0.2 * rng.normal(size=(len(y), d))
    step = 2.0 ** (np.floor(np.log2(offset)) - 51)  # float64's grid at the offset
    x = offset + np.round(spread / step) * step
    want = ref.nc1(x - offset, y, k, how)  # exact: x - offset is on the grid
    rtol = 50 * np.finfo(np.float64).eps * offset  # the means' own rounding
    got = {
        "stats": float(metrics.nc1(ClassStats.from_features(x, y, k), global_mean=how)),
        "report": nc_report((x, y), global_mean=how).nc1,
    }
    for path, value in got.items():
        assert value == pytest.approx(want, rel=rtol), path


def test_ncc_agreement_follows_the_dtype_rule():
    x, y, k, w = _data()
    mu = ref.means(x, y, k)
    w = w + 3 * np.random.default_rng(1).normal(size=w.shape)
    want = ref.ncc_agreement(x, w, mu, None)
    # longdouble: computed in float64 with the rule's warning (NumPy's linalg has no float128)
    wide = x.astype(np.longdouble)
    if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        with pytest.warns(UserWarning, match="accumulated in float64"):
            got = ncgeom.ncc_agreement(wide, w, mu)
    else:  # longdouble is float64 here
        got = ncgeom.ncc_agreement(wide, w, mu)
    assert got.fraction == want
    # float16 everywhere: computed in float32, not in float16
    half = [a.astype(np.float16) for a in (x, w, mu)]
    values = [a.astype(np.float64) for a in half]
    assert ncgeom.ncc_agreement(*half).fraction == ref.ncc_agreement(*values, None)


def test_ncc_agreement_names_features_without_columns():
    with pytest.raises(ValueError, match=r"^`features` must have at least one column; got shape"):
        ncgeom.ncc_agreement(np.ones((3, 0)), np.ones((2, 4)), np.ones((2, 4)))
