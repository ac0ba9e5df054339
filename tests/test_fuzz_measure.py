"""Fuzzing the measurement layer: statistics, metrics and the report.

The same contract as `test_fuzz`: for features, labels, classifiers, biases
and options drawn from valid and broken values (dtypes, shapes, NaN/Inf
placements, scales 1e-30..1e30, label ranges, chunk sizes), every call either
returns a result that obeys the metrics' own invariants or raises a
`TypeError`/`ValueError` that names one of its arguments.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import BUDGETS, expect_result_or_named_error, fuzz_settings

from ncgeom import ClassStats, metrics, nc_report

NAMES = (
    "features",
    "labels",
    "num_classes",
    "classifier",
    "bias",
    "chunk_size",
    "block_rows",
    "global_mean",
    "source",
    "means",
    "dim",
    "stats",
)


@st.composite
def measured_inputs(draw):
    n = draw(st.sampled_from([0, 1, 2, 7, 40]))
    d = draw(st.sampled_from([0, 1, 3, 6]))
    k = draw(st.sampled_from([1, 2, 3, 5]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.bool_]))
    scale = 10.0 ** draw(st.integers(-30, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (rng.normal(size=(n, d)) + 3 * np.eye(max(k, 1), d)[rng.integers(0, max(k, 1), n)]) * scale
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
    if n and d and draw(st.booleans()):
        x = x.astype(np.float64)
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    label_kind = draw(st.sampled_from(["ok", "range", "dtype", "shape"]))
    y = rng.integers(0, max(k, 1), n)
    if label_kind == "range" and n:
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, k, 10**9]))
    elif label_kind == "dtype":
        y = y.astype(draw(st.sampled_from([np.float64, np.uint8, np.int16, np.uint64, str])))
    elif label_kind == "shape":
        y = y[: max(n - 1, 0)]
    w = draw(st.sampled_from(["none", "ok", "transposed", "nan"]))
    classifier = None
    if w != "none" and d:
        classifier = rng.normal(size=(k, d))
        if w == "transposed":
            classifier = classifier.T
        elif w == "nan":
            classifier[0, 0] = math.nan
    return x, y, k, classifier


def _check_report(report) -> None:
    for name in ("nc1", "cdnv", "within_variance", "etf_error", "equinorm"):
        value = getattr(report, name)
        if value is None or math.isnan(value):
            continue
        assert value >= 0, (name, value)
    if report.orthogonality_error is not None and not math.isnan(report.orthogonality_error):
        assert 0 <= report.orthogonality_error <= 1 + 1e-6
    if report.ncc_agreement is not None:
        assert 0 <= report.ncc_agreement <= 1
    undefined = {name for name, _ in report.unavailable}
    for name in ("nc1", "cdnv", "etf_error", "equinorm", "equiangularity"):
        value = getattr(report, name)
        if value is not None and math.isnan(value):
            assert name in undefined, name  # NaN always comes with a reason


@pytest.mark.parametrize("budget", BUDGETS)
def test_report_and_statistics(budget: int) -> None:
    @fuzz_settings(budget)
    @given(
        data=measured_inputs(),
        given_k=st.booleans(),
        chunk=st.sampled_from([None, 1, 3, 0, -2, 2.5]),
        centre=st.sampled_from(["samples", "classes", "median"]),
    )
    def run(data, given_k, chunk, centre):
        x, y, k, classifier = data
        kwargs = {"num_classes": k} if given_k else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = expect_result_or_named_error(
                lambda: nc_report(
                    (x, y), classifier, chunk_size=chunk, global_mean=centre, **kwargs
                ),
                NAMES,
            )
            if report is not None:
                _check_report(report)
            stats = expect_result_or_named_error(
                lambda: ClassStats.from_features(x, y, k, chunk_size=chunk), NAMES
            )
            if stats is not None:
                assert int(stats.counts.sum()) == len(y)
                for metric in (metrics.cdnv, metrics.etf_error, metrics.orthogonality_error):
                    value = expect_result_or_named_error(
                        lambda m=metric: m(stats, block_rows=chunk), NAMES
                    )
                    if value is not None and not math.isnan(float(value)):
                        assert float(value) >= 0

    run()


@pytest.mark.parametrize("budget", BUDGETS)
def test_ncc_agreement(budget: int) -> None:
    @fuzz_settings(budget)
    @given(data=measured_inputs(), bias=st.sampled_from(["none", "ok", "nan", "shape"]))
    def run(data, bias):
        x, _, k, classifier = data
        if classifier is None:
            classifier = np.ones((k, max(x.shape[1], 1)))
        means = np.eye(k, max(x.shape[1], 1))
        b = {
            "none": None,
            "ok": np.zeros(k),
            "nan": np.full(k, math.nan),
            "shape": np.zeros(k + 1),
        }[bias]
        got = expect_result_or_named_error(
            lambda: metrics.ncc_agreement(x, classifier, means, b), NAMES
        )
        if got is not None:
            assert 0 <= int(got.matches) <= int(got.total) == x.shape[0]

    run()
