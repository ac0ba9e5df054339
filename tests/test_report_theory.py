"""nc_report with a predicted optimum: theory metrics against independent formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ncgeom import ClassStats, nc_report
from ncgeom.theory import ufm_relu_optimum

from reference import ufm_closed_form

COUNTS = np.array([30, 20, 3, 1])
LW = LH = 2e-2


def _nf(a):
    return a / np.linalg.norm(a)


def _instance(seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    margins, sq_norms = ufm_closed_form(COUNTS, LW, LH)[:2]
    k, d = len(COUNTS), 6
    means = np.zeros((k, d))
    means[np.arange(k), np.arange(k)] = np.sqrt(sq_norms)
    means = np.abs(means + noise * rng.random((k, d)))
    y = np.repeat(np.arange(k), COUNTS)
    x = means[y] + noise * rng.random((len(y), d))
    w = rng.normal(size=(k, d))
    return x, y, w, margins, sq_norms


def _optimum(backend, **kwargs):
    return ufm_relu_optimum(COUNTS, LW, LH, xp=backend.xp, device=backend.device, **kwargs)


def test_theory_metrics_match_direct_formulas(backend):
    x, y, w, margins, sq_norms = _instance()
    k = len(COUNTS)
    opt = _optimum(backend, dim=x.shape[1])
    rep = nc_report((backend.asarray(x), backend.asarray(y)), backend.asarray(w), theory=opt)
    mu = np.stack([x[y == c].mean(0) for c in range(k)])
    gof = np.linalg.norm(_nf(mu @ mu.T) - _nf(np.diag(sq_norms)))
    j = np.ones((k, k))
    wwt_target = (k * np.eye(k) - j) @ np.diag(np.sqrt(COUNTS) * margins) @ (k * np.eye(k) - j)
    wwt = np.linalg.norm(_nf(w @ w.T) - _nf(wwt_target))
    wh = np.linalg.norm(_nf(w @ mu.T) - _nf((np.eye(k) - j / k) @ np.diag(margins)))
    assert rep.gof_error == pytest.approx(gof, rel=1e-10)
    assert rep.classifier_gram_error == pytest.approx(wwt, rel=1e-10)
    assert rep.logit_structure_error == pytest.approx(wh, rel=1e-10)
    logits = mu @ w.T
    other = np.where(np.eye(k, dtype=bool), -np.inf, logits).max(axis=1)
    np.testing.assert_allclose(rep.margins_measured, np.diag(logits) - other, rtol=1e-10)
    np.testing.assert_allclose(rep.margins_predicted, margins, rtol=1e-10)
    np.testing.assert_allclose(rep.feature_norms_measured, np.linalg.norm(mu, axis=1), rtol=1e-10)
    np.testing.assert_allclose(rep.feature_norms_predicted, np.sqrt(sq_norms), rtol=1e-10)
    text = str(rep)
    assert "predicted" in text and "gof_error" in text
    assert rep.to_dict()["margins_predicted"] == list(rep.margins_predicted)


def test_theory_optimum_itself_scores_zero(backend):
    opt = _optimum(backend, dim=4)
    means, w = opt.means(), opt.classifier()
    y = backend.asarray(np.repeat(np.arange(4), COUNTS))
    rep = nc_report(
        ClassStats.from_features(backend.xp.take(means, y, axis=0), y, 4), w, theory=opt
    )
    for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
        assert getattr(rep, name) < 1e-12, name
    assert rep.orthogonality_error < 1e-12
    assert rep.scaled_alignment_error < 1e-12
    np.testing.assert_allclose(rep.feature_norms_measured, rep.feature_norms_predicted, atol=1e-12)
    alive = backend.to_numpy(opt.alive)
    np.testing.assert_allclose(
        np.asarray(rep.margins_measured)[alive],
        np.asarray(rep.margins_predicted)[alive],
        rtol=1e-10,
    )


def test_theory_without_classifier_and_with_empty_class(backend):
    x, y, _, _, sq_norms = _instance()
    opt = _optimum(backend)
    rep = nc_report((backend.asarray(x), backend.asarray(y)), theory=opt)
    mu = np.stack([x[y == c].mean(0) for c in range(len(COUNTS))])
    gof = np.linalg.norm(_nf(mu @ mu.T) - _nf(np.diag(sq_norms)))
    assert rep.gof_error == pytest.approx(gof, rel=1e-10)
    np.testing.assert_allclose(rep.feature_norms_measured, np.linalg.norm(mu, axis=1), rtol=1e-10)
    assert dict(rep.unavailable)["margins_measured"] == "no classifier given"
    keep = y != 3
    with pytest.warns(UserWarning, match="no samples"):
        partial = nc_report(
            (backend.asarray(x[keep]), backend.asarray(y[keep])), num_classes=4, theory=opt
        )
    assert partial.gof_error is None
    assert "every class" in dict(partial.unavailable)["gof_error"]


def test_theory_must_match_the_classes():
    x, y, _, _, _ = _instance()
    with pytest.raises(ValueError, match="`theory` describes 3 classes but the features have 4"):
        nc_report((x, y), theory=ufm_relu_optimum([5, 5, 5], LW, LH))
    with pytest.raises(TypeError, match="`theory` must be a UFMOptimum"):
        nc_report((x, y), theory=[1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("dead", [True, False])
def test_a_theory_that_collapses_every_class_leaves_the_frame_unavailable(dead):
    # lambda_W lambda_H above every class's critical product: the optimum is zero.
    theory = ufm_relu_optimum([10, 10, 10], 1.0, 1.0)
    assert not any(theory.alive)
    y = np.arange(30) % 3
    rng = np.random.default_rng(0)
    x = np.zeros((30, 4)) if dead else np.abs(rng.normal(size=(30, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead features: the geometry's own warning
        report = nc_report((x, y), theory=theory)
    reasons = dict(report.unavailable)
    assert report.optimum_frame_distance is None
    assert "collapses every class" in reasons["optimum_frame_distance"]


def test_theory_errors_of_dead_features_or_a_zero_classifier_say_why():
    # NaN with the reason of the degenerate geometry, as the other metrics.
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    y = np.repeat(np.arange(4), [30, 20, 3, 1])
    dead = ClassStats.from_features(np.zeros((54, 4)), y, 4, gram=True)
    alive = ClassStats.from_features(np.asarray(opt.means())[y], y, 4, gram=True)
    with pytest.warns(UserWarning, match="degenerate class geometry"):
        report = nc_report(dead, opt.classifier(), theory=opt)
    why = dict(report.unavailable)
    for name in ("gof_error", "logit_structure_error"):
        assert np.isnan(getattr(report, name))
        assert why[name] == "every class mean is zero (dead features)"
    assert report.classifier_gram_error < 1e-12
    with pytest.warns(UserWarning, match="degenerate class geometry"):
        report = nc_report(alive, np.zeros((4, 4)), theory=opt)
    why = dict(report.unavailable)
    for name in ("classifier_gram_error", "logit_structure_error"):
        assert np.isnan(getattr(report, name))
        assert why[name].startswith("the classifier is zero")
    assert report.gof_error < 1e-12
