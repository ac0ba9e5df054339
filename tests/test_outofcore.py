"""Dask arrays reduce to the same ClassStats as in-memory features."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ncgeom import ClassStats, nc_report
from ncgeom.outofcore import stats_from_dask

da = pytest.importorskip("dask.array")


def _data(n=20_000, d=12, k=7, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = 5 * rng.normal(size=(k, d))[y] + rng.normal(size=(n, d))
    return x, y, k


def _assert_same(lazy: ClassStats, eager: ClassStats) -> None:
    np.testing.assert_array_equal(lazy.counts, eager.counts)
    np.testing.assert_allclose(lazy.means, eager.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lazy.class_variances, eager.class_variances, rtol=1e-10)
    np.testing.assert_allclose(
        lazy.within_covariance(), eager.within_covariance(), rtol=1e-10, atol=1e-13
    )


@pytest.mark.parametrize("split_every", [2, 8])
def test_local_scheduler_matches_in_memory(split_every):
    x, y, k = _data()
    chunks = ((1500,) * 13 + (500,), (5, 7))  # uneven rows, split columns
    lazy = stats_from_dask(
        da.from_array(x, chunks=chunks),
        da.from_array(y, chunks=3000),
        k,
        split_every=split_every,
        scheduler="threads",
    )
    eager = ClassStats.from_features(x, y, k)
    _assert_same(lazy, eager)
    got, want = nc_report(lazy), nc_report(eager)
    for name in ("nc1", "cdnv", "etf_error", "orthogonality_error"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-10)


def test_lazy_result_is_a_delayed_object():
    x, y, k = _data(n=600)
    delayed = stats_from_dask(da.from_array(x, chunks=(100, 12)), y, k, compute=False)
    _assert_same(delayed.compute(scheduler="sync"), ClassStats.from_features(x, y, k))


def test_two_worker_distributed_cluster_matches_in_memory():
    distributed = pytest.importorskip("distributed")
    x, y, k = _data(n=8000)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        lazy = stats_from_dask(da.from_array(x, chunks=(700, 12)), y, k, split_every=3)
    _assert_same(lazy, ClassStats.from_features(x, y, k))


def test_bad_input_is_named():
    x, y, k = _data(n=50)
    with pytest.raises(TypeError, match=r"`features` must be a dask\.array\.Array; got ndarray"):
        stats_from_dask(x, y, k)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(50,\)"):
        stats_from_dask(da.from_array(x), y[:10], k)
    with pytest.raises(ValueError, match=r"`split_every` must be an integer >= 2; got 1"):
        stats_from_dask(da.from_array(x), y, k, split_every=1)
    bad = y.copy()
    bad[37] = k
    # Rows are named by their place in the whole array, not in their block.
    with pytest.raises(
        ValueError, match=rf"`labels` must lie in \[0, {k}\); got max {k} at row 37"
    ):
        stats_from_dask(da.from_array(x, chunks=(10, 12)), bad, k, scheduler="sync")
    nan = x.copy()
    nan[43, 2] = np.nan
    with pytest.raises(ValueError, match=r"the first is row 43"):
        stats_from_dask(da.from_array(nan, chunks=(10, 12)), y, k, scheduler="sync")


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import dask, dask.array as da
    from ncgeom.outofcore import stats_from_dask
    n, d, k, rows = 4_000_000, 256, 100, 65_536      # 8 GB of float64 features
    x = da.random.default_rng(0).standard_normal((n, d), chunks=(rows, d))
    y = da.random.default_rng(1).integers(0, k, n, chunks=rows)
    stats = stats_from_dask(x, y, k, gram=True, scheduler="threads", num_workers=2)
    assert int(stats.counts.sum()) == n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


@pytest.mark.slow
def test_peak_memory_of_an_8_gb_array_is_bounded_by_the_block_size():
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True
    )
    peak = int(run.stdout.strip().splitlines()[-1])
    block = 65_536 * 256 * 8  # 128 MiB
    assert peak < 12 * block, f"peak RSS {peak / 2**20:.0f} MiB for {block / 2**20:.0f} MiB blocks"
