"""Bad input to the statistics, metrics and report: a clear error or a correct result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncgeom import ClassStats, metrics, nc_report


def _data(n=60, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return np.eye(k, d)[y] * 3 + 0.1 * rng.normal(size=(n, d)), y


def test_no_rows_with_num_classes_says_no_class_has_samples():
    with pytest.raises(ValueError, match=r"`features` must hold at least one sample; got 0 rows"):
        nc_report((np.zeros((0, 4)), np.zeros(0, dtype=np.int64)), num_classes=3)
    with pytest.raises(ValueError, match=r"`num_classes` must be given when there are no samples"):
        nc_report((np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))


@pytest.mark.parametrize(
    "build",
    [
        lambda x, y: nc_report((x, y), num_classes=3),
        lambda x, y: ClassStats.from_features(x, y, 3),
    ],
)
def test_no_columns_is_named(build):
    with pytest.raises(
        ValueError, match=r"`features` must have at least one column; got shape \(6, 0\)"
    ):
        build(np.zeros((6, 0)), np.arange(6) % 3)


def test_a_stray_label_does_not_make_a_huge_class_count():
    x, y = _data()
    y[5] = 10**9
    with pytest.raises(
        ValueError, match=r"`num_classes` must be given: the largest label is 1000000000"
    ):
        nc_report((x, y))


def test_nan_with_the_scan_skipped_is_named_not_a_linalg_error():
    x, y = _data()
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"not finite.*check_finite=False"):
        nc_report((x, y), check_finite=False)
    with np.errstate(invalid="ignore"):
        stats = ClassStats.from_features(x, y, 3, check_finite=False)
    with pytest.raises(ValueError, match=r"not finite"):
        nc_report(stats)


@pytest.mark.parametrize(
    "metric",
    [metrics.cdnv, metrics.etf_error, metrics.equiangularity, metrics.orthogonality_error],
)
@pytest.mark.parametrize("rows", [-1, 0, 1.5, True])
def test_bad_block_rows_is_named(metric, rows):
    x, y = _data()
    stats = ClassStats.from_features(x, y, 3)
    error = TypeError if isinstance(rows, (bool, float)) else ValueError
    with pytest.raises(error, match=r"`block_rows`"):
        metric(stats, block_rows=rows)


@pytest.mark.parametrize("where", ["features", "classifier", "means", "bias"])
def test_ncc_agreement_refuses_nan(where):
    x, _ = _data()
    args = {
        "features": x,
        "classifier": np.eye(3, 4),
        "means": np.eye(3, 4) * 3,
        "bias": np.zeros(3),
    }
    args[where] = args[where].copy()
    args[where].flat[1] = np.nan
    with pytest.raises(ValueError, match=rf"`{where}` must be finite"):
        metrics.ncc_agreement(args["features"], args["classifier"], args["means"], args["bias"])


def test_ncc_agreement_skips_means_of_missing_classes():
    x, _ = _data()
    means = np.eye(3, 4) * 3
    means[2] = np.nan  # a class without samples
    got = metrics.ncc_agreement(x, np.eye(3, 4), means)
    nearest = np.argmin(((x[:, None, :2] - means[None, :2, :2]) ** 2).sum(-1), axis=1)
    assert int(got.matches) == int(np.sum(np.argmax(x @ np.eye(3, 4).T, axis=1) == nearest))


def test_a_transposed_classifier_is_named_as_such():
    x, y = _data(d=8)
    w = np.ones((8, 3))
    with pytest.raises(ValueError, match=r"got \(8, 3\); it looks transposed"):
        nc_report((x, y), w)
    with pytest.raises(ValueError, match=r"\(3, 8\); got \(8, 3\); it looks transposed"):
        metrics.self_duality_error(w, ClassStats.from_features(x, y, 3))


def test_swapped_features_and_labels_are_named():
    x, y = _data()
    with pytest.raises(ValueError, match=r"`features` must be 2-D"):
        nc_report((y, x))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_labels_through_the_engine(dtype):
    x, y = _data()
    got = nc_report((torch.from_numpy(x), torch.from_numpy(y).to(dtype)))
    want = nc_report((x, y))
    assert got.nc1 == pytest.approx(want.nc1, rel=1e-12)
