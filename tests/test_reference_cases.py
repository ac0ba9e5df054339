"""Reference cases chosen so that a plausible bug changes the answer.

Each test names the bug it is there to catch: a bias that never moves an
argmax, K > d, uncentred distances in float32, statistics streamed and merged
on every backend with non-zero residual sums.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

from ncgeom import ClassStats, merge_stats, metrics, nc_report

import reference as ref


def _labelled(rng, n, d, k, spread=1.0, offset=0.0):
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = 3 * rng.normal(size=(k, d)) + offset
    return centres[y] + spread * rng.normal(size=(n, d)), y, centres


def test_the_bias_changes_which_rows_agree_with_the_nearest_centre(backend):
    # A bias that is ignored, negated or added twice gives another count here.
    rng = np.random.default_rng(0)
    x, y, centres = _labelled(rng, 400, 6, 4)
    w = centres + rng.normal(size=centres.shape)
    mu = ref.means(x, y, 4)
    b = np.array([4.0, -3.0, 2.5, -1.0])
    counts = {
        name: ref.ncc_agreement(x, w, mu, bias)
        for name, bias in {"b": b, "none": None, "-b": -b, "2b": 2 * b}.items()
    }
    assert len(set(counts.values())) == 4  # the bias matters in this data
    xb, yb, wb, bb = (backend.asarray(a) for a in (x, y, w, b))
    got = metrics.ncc_agreement(xb, wb, backend.asarray(mu), bb)
    assert int(backend.to_numpy(got.matches)) == round(counts["b"] * len(y))
    rep = nc_report((xb, yb), wb, bb)
    assert rep.ncc_agreement == pytest.approx(counts["b"], abs=0)


@pytest.mark.parametrize("k, d", [(12, 5), (40, 3)])
def test_pair_metrics_with_more_classes_than_dimensions(backend, k, d):
    # etf_error takes the smaller Gram; K > d is the other side of that choice.
    rng = np.random.default_rng(1)
    x, y, _ = _labelled(rng, 20 * k, d, k)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    for name, want in (
        ("etf_error", ref.etf_error(x, y, k)),
        ("equiangularity", ref.equiangularity(x, y, k)),
        ("orthogonality_error", ref.orthogonality_error(x, y, k)),
        ("cdnv", ref.cdnv(x, y, k)),
        ("nc1", ref.nc1(x, y, k)),
    ):
        got = float(backend.to_numpy(getattr(metrics, name)(stats)))
        assert got == pytest.approx(want, rel=1e-9), name


def test_cdnv_in_float32_with_a_large_common_mean(backend):
    # Distances from uncentred means of norm ~1000 lose every digit in float32.
    rng = np.random.default_rng(2)
    x, y, _ = _labelled(rng, 3000, 16, 6, spread=0.05, offset=1000.0)
    x32 = x.astype(np.float32)
    want = ref.cdnv(x32.astype(np.float64), y, 6)
    xb, yb = backend.asarray(x32), backend.asarray(y)
    got = nc_report((xb, yb)).cdnv
    assert got == pytest.approx(want, rel=1e-4)
    stats = ClassStats.from_features(xb, yb, 6)
    value = metrics.cdnv(stats)
    assert value.dtype == backend.xp.float32
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(xb)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(xb))
    assert float(backend.to_numpy(value)) == pytest.approx(want, rel=1e-4)


def test_streamed_and_merged_statistics_match_the_reference_on_every_backend(backend):
    # Batches whose class means differ from the running means give non-zero
    # residual sums and re-centring terms in every update and merge.
    rng = np.random.default_rng(3)
    k, d = 5, 4
    x, y, _ = _labelled(rng, 600, d, k, offset=20.0)
    x[:100] += 3.0  # the first batches sit away from the final means
    xb, yb = backend.asarray(x), backend.asarray(y)
    streamed = ClassStats.empty(k, d, xp=backend.xp, device=backend.device)
    for lo in range(0, 600, 75):
        streamed = streamed.update(xb[lo : lo + 75, ...], yb[lo : lo + 75])
    parts = [
        ClassStats.from_features(xb[lo : lo + 150, ...], yb[lo : lo + 150], k)
        for lo in range(0, 600, 150)
    ]
    merged = merge_stats(parts[2], parts[0], parts[3], parts[1])
    for stats in (streamed, merged):
        np.testing.assert_array_equal(backend.to_numpy(stats.counts), np.bincount(y, minlength=k))
        np.testing.assert_allclose(backend.to_numpy(stats.means), ref.means(x, y, k), rtol=1e-12)
        np.testing.assert_allclose(
            backend.to_numpy(stats.within_covariance()),
            ref.within_covariance(x, y, k),
            rtol=1e-10,
            atol=1e-12,
        )
        np.testing.assert_allclose(
            backend.to_numpy(stats.class_variances), ref.variances(x, y, k), rtol=1e-10
        )
        assert float(backend.to_numpy(metrics.nc1(stats))) == pytest.approx(
            ref.nc1(x, y, k), rel=1e-9
        )
