"""Many classes: every K x K quantity in bounded memory, against a direct formula.

K = 4,096 runs by default; the K = 32,768 sweep (tens of seconds on two CPU
cores, a dense K x K float64 matrix would take 8 GiB) is marked slow. The
memory bound is measured with tracemalloc, which sees NumPy's allocations
only; the values are checked on every backend at K = 4,096.
"""

from __future__ import annotations

import functools
import tracemalloc

import array_api_compat
import numpy as np
import pytest

from ncgeom import ClassStats, metrics, nc_report

SIZES = [4096, pytest.param(32_768, marks=pytest.mark.slow)]


def _data(k: int, d: int = 6):
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(k), rng.integers(0, k, k)])
    x = rng.normal(size=(k, d))[y] * 4 + rng.normal(size=(len(y), d))
    return x, y


def _cdnv_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean over pairs, in row blocks written independently here."""
    n = np.bincount(y, minlength=k)
    mu = np.stack([np.bincount(y, weights=x[:, j], minlength=k) for j in range(x.shape[1])], 1)
    mu /= n[:, None]
    var = np.bincount(y, weights=np.sum((x - mu[y]) ** 2, axis=1), minlength=k) / n
    total = 0.0
    for lo in range(0, k, 256):
        block = mu[lo : lo + 256]
        dist = np.sum(block**2, 1)[:, None] + np.sum(mu**2, 1)[None, :] - 2 * block @ mu.T
        rows = np.arange(lo, lo + len(block))[:, None]
        upper = np.arange(k)[None, :] > rows
        ratio = (var[rows] + var[None, :]) / (2 * np.where(upper, dist, 1.0))
        total += np.sum(np.where(upper, ratio, 0.0))
    return total / (k * (k - 1) / 2)


@pytest.mark.parametrize("k", SIZES)
def test_cdnv_matches_and_memory_stays_bounded(k):
    x, y = _data(k)
    stats = ClassStats.from_features(x, y, k, gram=False)
    tracemalloc.start()
    value = float(metrics.cdnv(stats))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert value == pytest.approx(_cdnv_reference(x, y, k), rel=1e-9)
    # A few blocks of 4M entries; one dense K x K float64 matrix is 8 GiB at K = 32768.
    assert peak < 256 * 2**20


@pytest.mark.parametrize("k", SIZES)
def test_full_report_memory_stays_bounded(k):
    x, y = _data(k)
    tracemalloc.start()
    report = nc_report((x, y))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.num_classes == k and report.excluded == ()
    for name in ("nc1", "cdnv", "etf_error", "equiangularity", "orthogonality_error"):
        assert np.isfinite(getattr(report, name)), name
    assert peak < 256 * 2**20


@functools.cache
def _numpy_report(k: int):
    """The NumPy report the backends are compared with, computed once."""
    return nc_report(_data(k))


def test_many_classes_on_every_backend(backend):
    k = 4096
    x, y = _data(k)
    xb = backend.asarray(x)
    stats = ClassStats.from_features(xb, backend.asarray(y), k)
    assert array_api_compat.array_namespace(stats.means) is array_api_compat.array_namespace(xb)
    assert str(array_api_compat.device(stats.means)) == str(array_api_compat.device(xb))
    report, want = nc_report(stats), _numpy_report(k)
    assert report.num_classes == k and report.excluded == ()
    assert report.cdnv == pytest.approx(_cdnv_reference(x, y, k), rel=1e-9)
    for name in ("nc1", "etf_error", "equiangularity", "orthogonality_error"):
        assert getattr(report, name) == pytest.approx(getattr(want, name), rel=1e-9), name
