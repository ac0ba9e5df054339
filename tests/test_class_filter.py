"""The class-count filter (``min_count``/``max_count``, both inclusive): the
metrics see the kept classes alone, as if the others had never been sampled."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ncgeom import ClassStats, nc_report
from ncgeom.metrics import CountFilter, populated

COUNTS = np.array([400, 3, 120, 9, 60, 1000])


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    k, d = len(COUNTS), 16
    labels = rng.permutation(np.repeat(np.arange(k), COUNTS))
    centres = rng.random((k, d)) * 4
    features = centres[labels] + 0.3 * rng.normal(size=(labels.size, d))
    classifier = centres + 0.2 * rng.normal(size=(k, d))
    bias = rng.normal(size=k)
    return features, labels, classifier, bias


def _nc1_of_kept(features, labels, kept):
    """float64 NC1 of the kept classes only (Sigma_B over K', Sigma_W over their samples)."""
    rows = np.isin(labels, kept)
    x, y = features[rows], labels[rows]
    mu = np.stack([x[y == c].mean(axis=0) for c in kept])
    centred = mu - x.mean(axis=0)
    sigma_b = centred.T @ centred / len(kept)
    dev = x - mu[np.searchsorted(kept, y)]
    sigma_w = dev.T @ dev / len(y)
    cutoff = max(sigma_b.shape) * np.finfo(float).eps
    return np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=cutoff)) / len(kept)


def _remapped(features, labels, classifier, bias, kept):
    rows = np.isin(labels, kept)
    return features[rows], np.searchsorted(kept, labels[rows]), classifier[kept], bias[kept]


@pytest.mark.parametrize(("low", "high"), [(9, None), (None, 400), (9, 400), (4, 120)])
def test_in_memory_report_is_the_report_of_the_kept_classes(low, high):
    features, labels, classifier, bias = _data()
    kept = np.flatnonzero(
        (COUNTS >= (low or 1)) & (COUNTS <= (high if high is not None else COUNTS.max()))
    )
    report = nc_report((features, labels), classifier, bias, min_count=low, max_count=high)
    alone = nc_report(
        _remapped(features, labels, classifier, bias, kept)[:2],
        *_remapped(features, labels, classifier, bias, kept)[2:],
    )
    assert report.nc1 == pytest.approx(_nc1_of_kept(features, labels, kept), rel=1e-9)
    for name in report.METRICS:
        ours, theirs = getattr(report, name), getattr(alone, name)
        if theirs is None:
            assert ours is None, name
        else:
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12, nan_ok=True), name
    left_out = sorted(set(range(len(COUNTS))) - set(kept.tolist()))
    assert [k for k, _ in report.excluded] == left_out
    for k, why in report.excluded:
        bound = "fewer than min_count" if COUNTS[k] < (low or 1) else "more than max_count"
        assert why == f"{COUNTS[k]} samples, {bound}={low if 'fewer' in bound else high}"


def test_statistics_leave_nc1_out_with_a_reason_and_keep_the_rest():
    features, labels, classifier, bias = _data()
    stats = ClassStats.from_features(features, labels, len(COUNTS), gram=True)
    report = nc_report(stats, classifier, bias, min_count=10)
    in_memory = nc_report((features, labels), classifier, bias, min_count=10)
    assert report.nc1 is None and "pools every class" in dict(report.unavailable)["nc1"]
    assert report.cdnv == pytest.approx(in_memory.cdnv, rel=1e-9)
    assert report.bias_collapse == pytest.approx(in_memory.bias_collapse, rel=1e-9)


def test_the_filter_is_silent_and_empty_classes_still_warn():
    features, labels, _, _ = _data()
    labels = np.where(labels == 1, 6, labels)  # class 1 empty, a seventh class of 3 rows
    stats = ClassStats.from_features(features, labels, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = populated(stats, min_count=10, warn=False)
    assert view.filtered == (3, 6) and view.excluded == (1, 3, 6)
    with pytest.warns(UserWarning, match=r"classes \[1\] have no samples"):
        populated(stats, min_count=10)


def test_objective_and_theory_say_the_filter_left_classes_out():
    from ncgeom.theory import ufm_relu_optimum

    opt = ufm_relu_optimum(COUNTS.tolist(), 1e-3, 1e-3)
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    features = np.asarray(opt.means())[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = nc_report((features, y), opt.classifier(), theory=opt, min_count=5)
    why = dict(report.unavailable)
    assert "`min_count`=5 left some out" in why["objective"]
    assert "`min_count`=5 left some out" in why["gof_error"]


@pytest.mark.parametrize(
    ("kwargs", "kind", "message"),
    [
        ({"min_count": 0}, ValueError, r"`min_count` must be a positive integer"),
        ({"max_count": 2.5}, TypeError, r"`max_count`"),
        ({"min_count": 10, "max_count": 5}, ValueError, r"`max_count` must be at least"),
        ({"min_count": 2000}, ValueError, r"`min_count`=2000 must keep at least two classes"),
    ],
)
def test_bad_bounds_name_the_argument(kwargs, kind, message):
    features, labels, _, _ = _data()
    with pytest.raises(kind, match=message):
        nc_report((features, labels), **kwargs)


def test_bounds_are_inclusive():
    bounds = CountFilter.of(min_count=3, max_count=9)
    assert [bounds.keeps(n) for n in (0, 2, 3, 9, 10)] == [False, False, True, True, False]


def test_the_filter_on_every_backend(backend):
    features, labels, classifier, bias = _data(1)
    kept = np.flatnonzero(COUNTS >= 9)
    report = nc_report(
        (backend.asarray(features), backend.asarray(labels)),
        backend.asarray(classifier),
        backend.asarray(bias),
        min_count=9,
    )
    assert report.nc1 == pytest.approx(_nc1_of_kept(features, labels, kept), rel=1e-9)
    rows = np.isin(labels, kept)
    mean = features[rows].mean(axis=0)
    expected = np.linalg.norm(classifier[kept] @ mean + bias[kept])
    assert report.bias_collapse == pytest.approx(expected, rel=1e-9)
    assert [k for k, _ in report.excluded] == [1]
