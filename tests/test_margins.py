"""Reference cases built so that each accuracy mechanism of NC1 matters by far.

Each case is constructed so that removing the mechanism makes NC1 wrong by far
more than ten times the test's tolerance, and the test checks that margin on
the independent float64 formula itself (what the result would be without the
mechanism), so the case cannot lose it silently.

* The residual correction. The report projects deviations from the shifts (the
  class means rounded to float32) and subtracts ``n_k (offset_k . v)^2``, the
  part that comes from the shift not being the exact mean
  (``correction`` in `ncgeom.report`'s in-memory pass; the offsets term of
  `ClassStats.scaled_scatter` on the statistics' path). Features one float32
  ulp apart make that part 70% of the within-class scatter.
* The size factor of the pseudo-inverse cut-off. `ncgeom.metrics.between_basis`
  drops eigenvalues of Sigma_B at most ``max(d, K) * eps * largest``. Class
  means with one between-class direction at ``8 eps`` of the largest eigenvalue,
  with d = 64, put that direction between ``eps`` and ``64 eps``: without the
  factor it is kept, and NC1 gains its within-class spread divided by
  ``8 eps``.

Measured by removing each mechanism (the function rebuilt without it, in a
scratch script), on numpy, array-api-strict, torch and JAX: without the residual
correction NC1 is off by 0.697 relative on both paths (tolerance 1e-5: a margin
of 7e4; with it, off by at most 1.9e-7); without the size factor by 9.7 to 10.0
in float32 (tolerance 1e-5: about 1e6; with it, 2.6e-7) and by 9.38 in float64
(tolerance 1e-10: about 9e10; with it, 4.4e-16).
"""

from __future__ import annotations

import numpy as np
import pytest

from ncgeom import ClassStats, metrics, nc_report

RTOL = {np.float32: 1e-5, np.float64: 1e-10}
#: Removing a mechanism must change NC1 by at least this many tolerances.
MARGIN = 10


def sample_jax(backend, path, sampled):
    """JAX compiles the in-memory report for 6-8 s a case: run one of them."""
    if backend.name == "jax" and path == "report" and not sampled:
        pytest.skip("JAX is sampled: one in-memory report case runs (the float32 cut-off)")


def nc1_about(x, y, k, centres=None, cutoff=None):
    """``tr(Sigma_W Sigma_B^+) / K`` in float64, with the within-class deviations
    taken from `centres` (default: the exact class means) and eigenvalues of
    Sigma_B at most ``cutoff * largest`` dropped (default: only exact zeros)."""
    x = x.astype(np.float64)
    mu = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    dev = x - (mu if centres is None else centres)[y]
    sigma_w = dev.T @ dev / len(x)
    centred = mu - x.mean(axis=0)
    lam, vec = np.linalg.eigh(centred.T @ centred / k)
    keep = lam > (cutoff or 1e-300) * lam.max()
    return float(sum(vec[:, j] @ sigma_w @ vec[:, j] / lam[j] for j in np.flatnonzero(keep)) / k)


def one_ulp_apart():
    """float32 features at most one ulp from their class point: the float32
    class mean sits 0.4 ulp from the exact one, with a variance of 0.24 ulp^2."""
    ulp = float(np.spacing(np.float32(1024.0)))
    points = np.array([[1024.0, 1024.0], [1100.0, 1030.0], [1050.0, 1070.0]])
    step = np.array([[i < 4, i % 5 < 2] for i in range(10)], dtype=np.float64) * ulp
    x = (points[:, None, :] + step[None, :, :]).reshape(-1, 2).astype(np.float32)
    return x, np.repeat(np.arange(3), 10)


@pytest.mark.parametrize("path", ["report", "stats"])
def test_nc1_removes_the_offset_of_the_rounded_means(backend, path):
    sample_jax(backend, path, sampled=False)
    x, y = one_ulp_apart()
    want = nc1_about(x, y, 3)
    rounded = np.stack([x[y == c].astype(np.float64).mean(axis=0) for c in range(3)])
    rounded = rounded.astype(np.float32).astype(np.float64)  # the float32 shifts
    without = nc1_about(x, y, 3, centres=rounded)
    assert abs(without - want) > MARGIN * RTOL[np.float32] * want  # 0.697 * want
    xb, yb = backend.asarray(x), backend.asarray(y)
    if path == "report":
        got = nc_report((xb, yb)).nc1
    else:
        got = float(backend.to_numpy(metrics.nc1(ClassStats.from_features(xb, yb, 3))))
    assert got == pytest.approx(want, rel=RTOL[np.float32])


def small_direction(dtype, dim=64):
    """Four classes whose Sigma_B has eigenvalues 1, 1 and 8 eps (relative): the
    third direction lies between ``eps`` and ``max(d, K) eps = 64 eps``."""
    s = 2 * np.sqrt(np.finfo(dtype).eps)
    mu = np.zeros((4, dim))
    mu[:, :3] = [[1, 0, s], [-1, 0, s], [0, 1, -s], [0, -1, -s]]
    # Each class: its mean plus and minus four steps (the class means are exact).
    steps = np.zeros((4, dim))
    steps[0, 0], steps[1, 1], steps[2, 2], steps[3, 5] = 0.01, 0.02, 0.1 * s, 0.3
    x = np.concatenate([mu[:, None] + steps, mu[:, None] - steps], axis=1)
    return x.reshape(-1, dim).astype(dtype), np.repeat(np.arange(4), 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["report", "stats"])
def test_pseudo_inverse_cutoff_grows_with_the_size(backend, dtype, path):
    sample_jax(backend, path, sampled=dtype is np.float32)
    x, y = small_direction(dtype)
    eps = float(np.finfo(dtype).eps)
    want = nc1_about(x, y, 4, cutoff=64 * eps)
    without = nc1_about(x, y, 4, cutoff=eps)
    assert abs(without - want) > MARGIN * RTOL[dtype] * want  # 9.4 to 10 * want
    xb, yb = backend.asarray(x), backend.asarray(y)
    if path == "report":
        got = nc_report((xb, yb)).nc1
    else:
        got = float(backend.to_numpy(metrics.nc1(ClassStats.from_features(xb, yb, 4))))
    assert got == pytest.approx(want, rel=RTOL[dtype])
