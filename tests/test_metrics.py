"""Every metric against an independent float64 NumPy formula, on every backend."""

from __future__ import annotations

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
        if name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
            assert getattr(from_stats, name) is getattr(in_memory, name) is None  # no theory
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
