"""Lanes: the engine's passes split over threads give the statistics of one pass."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from ncgeom import ClassStats, nc_report
from ncgeom._lib import lanes

pytest.importorskip("threadpoolctl")


@pytest.fixture
def four_lanes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every pass of at least 1 KiB split in four lanes, whatever the machine."""
    monkeypatch.setattr(lanes, "MIN_LANE_BYTES", 1024)
    monkeypatch.setattr(lanes, "_usable_cores", lambda: 4)
    blas = lanes._blas()
    if blas is None:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")
    monkeypatch.setattr(lanes, "lane_count", lambda feature_bytes, table_bytes: 4)
    run = lanes.run_lanes

    def counted(work, num_rows, count):  # type: ignore[no-untyped-def]
        split.append(count)
        return run(work, num_rows, count)

    split: list[int] = []
    monkeypatch.setattr(lanes, "run_lanes", counted)
    return split


@pytest.mark.parametrize(("num_rows", "count"), [(10, 3), (7, 7), (3, 5), (1000, 4), (0, 2)])
def test_lane_ranges_cover_the_rows_in_order_and_evenly(num_rows: int, count: int) -> None:
    ranges = lanes.lane_ranges(num_rows, count)
    covered = [i for start, stop in ranges for i in range(start, stop)]
    assert covered == list(range(num_rows))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert len(ranges) == max(1, min(count, num_rows))


def test_lane_count_respects_size_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    if lanes._blas() is None:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")
    monkeypatch.setattr(lanes, "_usable_cores", lambda: 8)
    big = 64 * lanes.MIN_LANE_BYTES
    assert lanes.lane_count(lanes.MIN_LANE_BYTES - 1, 0) == 1
    with lanes._blas().limit(limits=1):
        assert lanes.lane_count(big, 0) == 1  # BLAS held to one thread: one lane
    with lanes._blas().limit(limits=3):
        assert lanes.lane_count(big, 0) == 3
        # Tables larger than a chunk: each lane would add more than a chunk.
        assert lanes.lane_count(big, lanes.MAX_LANE_TABLE_BYTES) == 3
        assert lanes.lane_count(big, lanes.MAX_LANE_TABLE_BYTES + 1) == 1
    monkeypatch.setattr(lanes, "_usable_cores", lambda: 1)
    assert lanes.lane_count(big, 0) == 1


def test_run_lanes_returns_in_lane_order_and_raises_the_first_error() -> None:
    if lanes._blas() is None:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")
    names = lanes.run_lanes(lambda a, b: (a, b, threading.current_thread().name), 9, 3)
    assert [n[:2] for n in names] == [(0, 3), (3, 6), (6, 9)]
    assert names[0][2] == threading.current_thread().name  # lane 0 in the caller

    def work(start: int, stop: int) -> int:
        if start > 0:
            raise ValueError(f"lane at {start}")
        return start

    with pytest.raises(ValueError, match="lane at 3"):
        lanes.run_lanes(work, 9, 3)


def test_lanes_see_the_callers_errstate() -> None:
    if lanes._blas() is None:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")

    def work(start: int, stop: int) -> float:
        return float(np.float64(0.0) / np.float64(0.0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(invalid="ignore"):
            values = lanes.run_lanes(work, 4, 4)
    assert all(np.isnan(v) for v in values)


def _float64_moments(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    x = x.astype(np.float64)
    counts = np.bincount(y, minlength=k)
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, y, x)
    means /= np.maximum(counts, 1)[:, None]
    dev = x - means[y]
    variances = np.bincount(y, weights=(dev * dev).sum(1), minlength=k) / np.maximum(counts, 1)
    return means, variances, dev.T @ dev


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gram", [False, True])
def test_statistics_in_lanes_equal_a_float64_formula(
    four_lanes: list[int], dtype: type, gram: bool
) -> None:
    rng = np.random.default_rng(3)
    k, d, n = 7, 16, 3000
    y = rng.integers(0, k, n)
    centres = 1e3 * rng.standard_normal((k, d))  # collapsed: deviations 1e-3 of the means
    x = (centres[y] + rng.standard_normal((n, d))).astype(dtype)
    stats = ClassStats.from_features(x, y, k, gram=gram, chunk_size=64)
    assert four_lanes and set(four_lanes) == {4}  # both passes ran in four lanes
    means, variances, scatter = _float64_moments(x, y, k)
    spread = float(np.sqrt(variances.mean()))
    assert np.max(np.abs(stats.means - means)) <= 1e-4 * spread
    np.testing.assert_allclose(stats.class_variances, variances, rtol=1e-4)
    if gram:
        np.testing.assert_allclose(
            stats.within_scatter(), scatter, rtol=1e-4, atol=1e-4 * np.abs(scatter).max()
        )


def test_the_report_in_lanes_equals_float64_nc1(four_lanes: list[int]) -> None:
    rng = np.random.default_rng(4)
    k, d, n = 5, 12, 4000
    y = rng.integers(0, k, n)
    centres = 10 * rng.standard_normal((k, d))
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    means, _, scatter = _float64_moments(x, y, k)
    counts = np.bincount(y, minlength=k)
    centred = means - counts @ means / n
    sigma_b = centred.T @ centred / k
    expected = np.trace(scatter / n @ np.linalg.pinv(sigma_b)) / k
    report = nc_report((x, y), chunk_size=50)
    assert len(four_lanes) >= 2 and set(four_lanes) == {4}
    assert report.nc1 == pytest.approx(expected, rel=1e-5)


def test_lanes_do_not_depend_on_timing(four_lanes: list[int]) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 9, 5000)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    first = ClassStats.from_features(x, y, 9, chunk_size=100)
    for _ in range(5):
        again = ClassStats.from_features(x, y, 9, chunk_size=100)
        assert np.array_equal(again.sums, first.sums)
        assert np.array_equal(again.sqnorms, first.sqnorms)


@pytest.mark.parametrize("sort", [False, True])
def test_float32_at_user_sizes_in_lanes(four_lanes: list[int], sort: bool) -> None:
    # 100 classes of 10,000 collapsed float32 samples, in random or sorted order,
    # streamed in batches: every batch of both passes split in four lanes.
    rng = np.random.default_rng(7)
    k, d, per = 100, 8, 10_000
    y = np.repeat(np.arange(k), per)
    if not sort:
        rng.shuffle(y)
    centres = 1e3 * rng.standard_normal((k, d))
    x = (centres[y] + 1e-1 * rng.standard_normal((y.size, d))).astype(np.float32)
    stats = ClassStats.empty(k, d, gram=True, dtype=np.float32)
    for part in np.array_split(np.arange(y.size), 7):
        stats = stats.update(x[part], y[part])
    assert set(four_lanes) == {4}
    means, variances, scatter = _float64_moments(x, y, k)
    # The means are float32: their rounding, not the sums, bounds their error.
    assert np.max(np.abs(stats.means - means)) <= np.finfo(np.float32).eps * np.abs(means).max()
    np.testing.assert_allclose(stats.class_variances, variances, rtol=1e-5)
    counts = np.bincount(y, minlength=k)
    centred = means - counts @ means / y.size
    expected = np.trace(scatter / y.size @ np.linalg.pinv(centred.T @ centred / k)) / k
    report = nc_report(stats)
    assert report.nc1 == pytest.approx(expected, rel=1e-5)
