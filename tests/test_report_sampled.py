"""nc_report's pair metrics from sampled pairs: above `SAMPLED_PAIRS_FROM` classes
(or on request) the pair means are unbiased estimates with 95% intervals, marked
in `NCReport.estimated`; the pair metrics that have no such estimate are
unavailable with the reason, never silently exact-looking."""

from __future__ import annotations

import numpy as np
import pytest

import ncgeom.metrics
from ncgeom import ClassStats, nc_report

K, D, PER = 600, 16, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(K), PER)
    x = rng.normal(size=(K, D))[y] * 2 + rng.normal(size=(y.size, D))
    return x, y


def _exact(x, y):
    """float64 pair means written here: cdnv, equiangularity, orthogonality, log energy."""
    mu = np.stack([x[y == k].mean(axis=0) for k in range(K)])
    var = np.array([((x[y == k] - mu[k]) ** 2).sum(axis=1).mean() for k in range(K)])
    c = mu - x.mean(axis=0)
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    i, j = np.triu_indices(K, 1)
    dist2 = ((mu[i] - mu[j]) ** 2).sum(axis=1)
    cos = (u[i] * u[j]).sum(axis=1)
    unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    return {
        "cdnv": np.mean((var[i] + var[j]) / (2 * dist2)),
        "equiangularity": np.mean(np.abs(cos + 1 / (K - 1))),
        "orthogonality_error": np.mean(np.abs((unit[i] * unit[j]).sum(axis=1))),
        "log_energy": np.mean(-np.log(np.linalg.norm(u[i] - u[j], axis=1))),
        "interference_mean": np.mean(cos),
    }


def test_sampled_pairs_are_marked_estimates_within_their_intervals(data):
    x, y = data
    exact = _exact(x, y)
    w = np.random.default_rng(5).normal(size=(K, D))
    report = nc_report(ClassStats.from_features(x, y, K), w, pairs=100_000)
    estimated = dict(report.estimated)
    assert set(estimated) == {"cdnv", "equiangularity", "orthogonality_error", "log_energy"}
    for name, half in estimated.items():
        assert 0 < half < 0.05 * abs(exact[name]), name
        # 4 half widths: a 95% interval misses by more with probability ~1e-15
        assert abs(getattr(report, name) - exact[name]) <= 4 * half, name
    assert report.interference_mean == pytest.approx(exact["interference_mean"], abs=1e-12)
    why = dict(report.unavailable)
    for name in (
        "interference_min",
        "equiangularity_std",
        "riesz_log_energy",
        "etf_error",
        "classifier_etf_error",
    ):
        assert getattr(report, name) is None and 'pass pairs="exact"' in why[name], name
    assert report.to_dict()["estimated"] == estimated
    assert "estimated from sampled pairs: +-" in str(report)


def test_auto_samples_only_above_the_documented_size(data, monkeypatch):
    x, y = data
    stats = ClassStats.from_features(x, y, K)
    assert nc_report(stats).estimated == ()  # K = 600: exact
    monkeypatch.setattr(ncgeom.metrics, "SAMPLED_PAIRS_FROM", K - 1)
    monkeypatch.setattr("ncgeom.measure.report.SAMPLED_PAIRS", 50_000)
    sampled = nc_report(stats)
    assert dict(sampled.estimated).keys() == {
        "cdnv",
        "equiangularity",
        "orthogonality_error",
        "log_energy",
    }
    assert nc_report(stats, pairs="exact").estimated == ()


@pytest.mark.parametrize(
    ("pairs", "kind"), [("fast", ValueError), (1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_pairs_name_the_argument(data, pairs, kind):
    x, y = data
    with pytest.raises(kind, match="`pairs`"):
        nc_report((x, y), pairs=pairs)
