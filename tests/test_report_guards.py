"""nc_report refuses what it cannot use and uses everything it is given.

A non-finite classifier or bias once gave a plausible NCC agreement (0.31
instead of 1.0), a bias without a classifier a KeyError, a bias beside
statistics was ignored (it now gives `bias_collapse`), and a report given the
theory said "no theory given" in its verdict.
"""

from __future__ import annotations

import numpy as np
import pytest

from ncgeom import ClassStats, nc_report, ufm_relu_optimum

COUNTS = [30, 20, 3, 1]
LW = LH = 2e-2


def _at_optimum():
    opt = ufm_relu_optimum(COUNTS, LW, LH)
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    rng = np.random.default_rng(0)
    x = np.asarray(opt.means())[y] + 1e-3 * rng.random((len(y), len(COUNTS)))
    return opt, x, y, np.asarray(opt.classifier())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("source", ["features", "stats"])
def test_a_non_finite_classifier_is_refused(backend, bad, source):
    _, x, y, w = _at_optimum()
    w = w.copy()
    w[1, 2] = bad
    data = (backend.asarray(x), backend.asarray(y))
    if source == "stats":
        data = ClassStats.from_features(*data, len(COUNTS))
    with pytest.raises(ValueError, match="`classifier` must be finite"):
        nc_report(data, backend.asarray(w))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_bias_is_refused(backend, bad):
    _, x, y, w = _at_optimum()
    bias = np.zeros(len(COUNTS))
    bias[2] = bad
    args = (backend.asarray(x), backend.asarray(y))
    with pytest.raises(ValueError, match="`bias` must be finite"):
        nc_report(args, backend.asarray(w), backend.asarray(bias))


def test_a_finite_classifier_gives_full_agreement_at_the_optimum():
    # The value the non-finite classifier used to be mistaken for.
    _, x, y, w = _at_optimum()
    assert nc_report((x, y), w).ncc_agreement == pytest.approx(
        np.mean(np.argmax(x @ w.T, axis=1) == _nearest(x, y))
    )


def _nearest(x, y):
    means = np.stack([x[y == k].mean(axis=0) for k in range(len(COUNTS))])
    return np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)


def test_a_bias_needs_a_classifier():
    _, x, y, _ = _at_optimum()
    with pytest.raises(ValueError, match="`bias` needs a `classifier`"):
        nc_report((x, y), bias=np.zeros(len(COUNTS)))


def test_a_bias_beside_statistics_is_used_not_ignored():
    _, x, y, w = _at_optimum()
    stats = ClassStats.from_features(x, y, len(COUNTS))
    bias = np.linspace(-1.0, 2.0, len(COUNTS))
    report = nc_report(stats, w, bias)
    expected = np.linalg.norm(np.asarray(w, dtype=float) @ x.mean(axis=0) + bias)
    assert report.bias_collapse == pytest.approx(expected, rel=1e-12)
    assert nc_report(stats, w).bias_collapse == pytest.approx(
        np.linalg.norm(np.asarray(w, dtype=float) @ x.mean(axis=0)), rel=1e-12
    )
    with pytest.raises(ValueError, match="`bias`"):
        nc_report(stats, w, np.full(len(COUNTS), np.nan))


def test_an_integer_bias_is_a_type_error():
    _, x, y, w = _at_optimum()
    with pytest.raises(TypeError, match="`bias` must have a real floating dtype"):
        nc_report((x, y), w, np.zeros(len(COUNTS), dtype=np.int64))


@pytest.mark.parametrize("bad", [np.nan, "0.5", None])
def test_a_bad_objective_names_it(bad):
    _, x, y, w = _at_optimum()
    if bad is None:
        assert nc_report((x, y), w, objective=None).objective is None
        return
    with pytest.raises((TypeError, ValueError), match="`objective`"):
        nc_report((x, y), w, objective=bad)


def test_the_verdict_uses_the_theory_it_is_given():
    opt, x, y, w = _at_optimum()
    report = nc_report((x, y), w, theory=opt)
    assert report.theory is not None
    verdict = report.verdict()
    # The objective is measured from the features (float64 formula in the test).
    z = x @ w.T
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
    f = ce.mean() + 0.5 * LW * np.sum(w * w) + 0.5 * LH * np.sum(x * x)
    assert report.objective == pytest.approx(f, rel=1e-12)
    assert verdict.gap == pytest.approx(f - float(opt.objective), rel=1e-9)
    assert verdict.predicted_collapsed == [3]
    text = str(report)
    assert "no theory given" not in text
    assert "Predicted to collapse: class 3" in text
    assert "gap" in verdict.gap_sentence()


def test_without_theory_the_hint_names_the_real_keyword():
    _, x, y, w = _at_optimum()
    text = str(nc_report((x, y), w))
    assert "pass theory=ncgeom.ufm_relu_optimum(counts, lambda_w, lambda_h)" in text
    assert "lambda_w and lambda_h" not in text.replace("(counts, lambda_w, lambda_h)", "")


def test_with_theory_is_the_same_context_as_the_keyword():
    opt, x, y, w = _at_optimum()
    one_call = nc_report((x, y), w, theory=opt, objective=0.75)
    later = nc_report((x, y), w).with_theory(opt, objective=0.75)
    assert one_call.theory == later.theory
    assert one_call.verdict().gap == later.verdict().gap


def test_targets_at_the_optimum_need_no_sample_level_work():
    # 2 classes of 10**7 samples: the metrics at the optimum come from its K means.
    big = ufm_relu_optimum([10**7, 10**7 // 3], 1e-9, 1e-9)
    stats = ClassStats.from_features(
        np.asarray(big.means()), np.arange(2), 2
    )  # any statistics of two classes
    report = nc_report(stats, theory=big)
    assert report.theory["targets"]["etf_error"] is not None
    # Both classes alive with orthogonal means: the NCC rule and the optimal
    # classifier agree on both classes.
    assert report.theory["targets"]["ncc_agreement"] == 1.0
