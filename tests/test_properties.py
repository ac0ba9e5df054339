"""Invariants of the statistics and metrics, drawn by Hypothesis."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncgeom import ClassStats, NCReport, merge_stats, metrics, nc_report
from ncgeom.testing import strategies as nst

SETTINGS = settings(max_examples=40, deadline=None)
# Metrics of features alone (no NCC: it is an agreement count; no theory given).
SCALAR_METRICS = tuple(
    name
    for name in NCReport.METRICS
    if name
    not in (
        "ncc_agreement",
        "gof_error",
        "classifier_gram_error",
        "logit_structure_error",
        "optimum_frame_distance",
        "ood_deviation",
    )
)
#: Metrics with units: the features' (and the classifier's) scale shows in them.
WITH_UNITS = ("within_variance", "uniform_duality_variance", "bias_collapse")
SCALE_FREE = tuple(name for name in SCALAR_METRICS if name not in WITH_UNITS)


def _close(a, b, names, rtol=1e-10, atol=1e-12):
    for name in names:
        if getattr(b, name) is None:  # unavailable (e.g. a frame needs dim >= K): in both
            assert getattr(a, name) is None, name
            continue
        assert getattr(a, name) == pytest.approx(
            getattr(b, name), rel=rtol, abs=atol, nan_ok=True
        ), name


def _cdnv_conditioning(x, y, k):
    """``max_{k<l} (|c_k|^2 + |c_l|^2) / |c_k - c_l|^2`` of the centred class means.

    cdnv takes the squared distances of class means from their Gram
    (``|c_k|^2 + |c_l|^2 - 2 c_k.c_l``, which never forms the (K, K, d)
    differences), so its rounding is this factor times eps: two reports of
    the same data summed in another order can differ by that much.
    """
    means = np.stack([x[y == j].mean(axis=0) for j in range(k)])
    centred = means - x.mean(axis=0)
    sq = (centred**2).sum(axis=1)
    upper = np.triu_indices(k, 1)
    dist2 = ((centred[:, None, :] - centred[None, :, :]) ** 2).sum(axis=2)[upper]
    return float(np.max((sq[:, None] + sq[None, :])[upper] / dist2))


def _nc1_conditioning(x, y, k):
    """Largest over smallest kept eigenvalue of the between-class Gram.

    nc1 weighs the within scatter along each direction of the centred means
    by the inverse eigenvalue there: a direction barely above the cutoff
    amplifies rounding by this factor.
    """
    means = np.stack([x[y == j].mean(axis=0) for j in range(k)])
    centred = means - x.mean(axis=0)
    lam = np.linalg.eigvalsh(centred.T @ centred)
    kept = lam[lam > max(k, x.shape[1]) * np.finfo(np.float64).eps * lam.max()]
    return float(kept.max() / kept.min())


#: The kernel energies of the unit centred means: distances from cosines.
KERNELS = ("log_energy", "log_energy_variance", "riesz_log_energy", "riesz_log_variance")


def _kernel_conditioning(x, y, k):
    """``1 / min_{k<l} ||u_k - u_l||^2`` of the unit centred class means (inf
    when two coincide, as on a line).

    The kernels take ``||u_k - u_l||^2 = 2 - 2 cos`` from the cosines, so a
    pair's value moves by about eps over this squared distance
    (docs/metrics.md): rounding in another summation order moves them that much.
    """
    means = np.stack([x[y == j].mean(axis=0) for j in range(k)])
    centred = means - x.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    upper = np.triu_indices(k, 1)
    dist2 = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(axis=2)[upper]
    return float(np.inf if dist2.min() == 0 else 1 / dist2.min())


def _close_kernels(a, b, names, x, y, k, rtol):
    """`_close` for the kernel energies in `names`, `rtol` widened by their
    conditioning (skipped where two directions coincide: unbounded)."""
    eps = np.finfo(np.float64).eps
    kernel_rtol = rtol + 64 * eps * x.shape[1] * _kernel_conditioning(x, y, k)
    if np.isfinite(kernel_rtol):
        _close(a, b, names, rtol=kernel_rtol, atol=kernel_rtol)


def _close_with_cdnv(a, b, names, x, y, k, rtol):
    """`_close` for `names`; cdnv, nc1 and the kernel energies within `rtol`
    widened by their conditioning."""
    plain = [n for n in names if n not in ("cdnv", "nc1", *KERNELS)]
    _close(a, b, plain, rtol=rtol, atol=rtol * 1e-2)
    eps = np.finfo(np.float64).eps
    _close_kernels(a, b, [n for n in names if n in KERNELS], x, y, k, rtol)
    cdnv_rtol = rtol + 64 * eps * _cdnv_conditioning(x, y, k)
    assert a.cdnv == pytest.approx(b.cdnv, rel=cdnv_rtol), "cdnv"
    if "nc1" in names:
        nc1_rtol = rtol + 64 * eps * _nc1_conditioning(x, y, k)
        assert a.nc1 == pytest.approx(b.nc1, rel=nc1_rtol), "nc1"


def _populated(data):
    return all(n > 0 for n in data.counts)


@SETTINGS
@given(
    data=nst.labelled_features(), cuts=st.lists(st.floats(0, 1), max_size=5), seed=st.integers()
)
def test_any_batches_and_merge_order_give_the_same_report(data, cuts, seed):
    x, y, k = data.features, data.labels, len(data.counts)
    whole = nc_report(ClassStats.from_features(x, y, k))
    edges = sorted({0, len(y), *(int(c * len(y)) for c in cuts)})
    batches = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(edges)]
    streamed = ClassStats.empty(k, x.shape[1])
    for bx, by in batches:
        streamed = streamed.update(bx, by)
    parts = [ClassStats.from_features(bx, by, k) for bx, by in batches]
    order = np.random.default_rng(seed % 2**32).permutation(len(parts))
    merged = merge_stats(*(parts[i] for i in order))
    names = [n for n in SCALAR_METRICS if getattr(whole, n) is not None]
    _close_with_cdnv(nc_report(streamed), whole, names, x, y, k, rtol=1e-10)
    _close_with_cdnv(nc_report(merged), whole, names, x, y, k, rtol=1e-10)
    np.testing.assert_array_equal(merged.counts, whole_counts := np.bincount(y, minlength=k))
    np.testing.assert_array_equal(streamed.counts, whole_counts)


@SETTINGS
@given(a=nst.labelled_features(counts=nst.class_counts(3, 3)), seed=st.integers(0, 99))
def test_merge_is_associative_and_commutative(a, seed):
    x, y = a.features, a.labels
    third = len(y) // 3
    p, q, r = (
        ClassStats.from_features(x[s], y[s], 3)
        for s in (slice(0, third), slice(third, 2 * third), slice(2 * third, None))
    )
    left, right = p.merge(q).merge(r), p.merge(q.merge(r))
    swapped = r.merge(p).merge(q)
    for other in (right, swapped):
        np.testing.assert_allclose(other.means, left.means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            other.within_covariance(), left.within_covariance(), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            other.class_variances, left.class_variances, rtol=1e-9, atol=1e-12
        )


@SETTINGS
@given(data=nst.labelled_features(min_dim=2), seed=st.integers(0, 2**32 - 1))
def test_rotation_and_relabelling_leave_metrics_unchanged(data, seed):
    x, y, k = data.features, data.labels, len(data.counts)
    rng = np.random.default_rng(seed)
    w = data.means + rng.normal(size=data.means.shape)
    base = nc_report((x, y), w)
    rotation, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    perm = rng.permutation(k)
    w_perm = np.empty_like(w)
    w_perm[perm] = w
    moved = nc_report((x @ rotation, perm[y]), w_perm @ rotation, num_classes=k)
    names = [n for n in SCALAR_METRICS if getattr(base, n) is not None]
    _close_with_cdnv(moved, base, names, x, y, k, rtol=1e-7)
    assert moved.ncc_agreement == pytest.approx(base.ncc_agreement, abs=2 / len(y))


@SETTINGS
@given(data=nst.labelled_features(), factor=st.floats(1e-3, 1e3))
def test_scaling_features_leaves_scale_free_metrics_unchanged(data, factor):
    x, y, k = data.features, data.labels, len(data.counts)
    w = data.means[::-1].copy()
    base, scaled = nc_report((x, y), w), nc_report((factor * x, y), w, num_classes=k)
    _close(scaled, base, [n for n in SCALE_FREE if n not in KERNELS], rtol=1e-8, atol=1e-10)
    _close_kernels(scaled, base, KERNELS, x, y, k, rtol=1e-8)
    assert scaled.within_variance == pytest.approx(factor**2 * base.within_variance, rel=1e-8)


@SETTINGS
@given(data=nst.labelled_features(spread=st.just(0.0)))
def test_features_at_their_means_have_zero_nc1_and_cdnv(data):
    x, y, k = data.features, data.labels, len(data.counts)
    for source in (ClassStats.from_features(x, y, k), (x, y)):
        rep = nc_report(source, num_classes=k) if isinstance(source, tuple) else nc_report(source)
        assert abs(rep.nc1) < 1e-20
        assert abs(rep.cdnv) < 1e-20


@SETTINGS
@given(means=nst.simplex_etfs(), extra=st.integers(0, 3))
def test_simplex_etf_has_zero_etf_error_and_equiangularity(means, extra):
    k = means.shape[0]
    y = np.concatenate([np.arange(k)] * (1 + extra))  # balanced: mu_G is the ETF centre
    stats = ClassStats.from_features(means[y], y, k)
    assert float(metrics.etf_error(stats)) < 1e-7
    assert float(metrics.equiangularity(stats)) < 1e-12
    assert float(metrics.equinorm(stats)) < 1e-12


@SETTINGS
@given(means=nst.orthogonal_frames(), counts=st.lists(st.integers(1, 5), min_size=8, max_size=8))
def test_orthogonal_frame_has_zero_orthogonality_error(means, counts):
    k = means.shape[0]
    y = np.repeat(np.arange(k), counts[:k])
    stats = ClassStats.from_features(means[y], y, k)
    value = float(metrics.orthogonality_error(stats))
    # A mean has a direction when its square, next to the largest mean's, is
    # not 0 (the rule of the pair metrics, which work in units of that mean).
    largest = np.abs(means).max()
    squares = np.sum((means / (largest if largest > 0 else 1.0)) ** 2, axis=1)
    if np.count_nonzero(squares > 0) < 2:  # fewer than two means with a direction
        assert np.isnan(value)
    else:
        assert value < 1e-15
