"""The fixed criteria: class outcomes, the terminal phase, and one definition everywhere."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from ncgeom import criteria, nc_report, ufm_relu_optimum
from ncgeom.criteria import (
    ALIVE_FRACTION,
    COLLAPSED_FRACTION,
    GRAD_BOUND,
    KKT_BOUND,
    accuracy_classes,
    class_outcomes,
    terminal_phase,
)
from ncgeom.verdict import Verdict

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"


def test_the_fixed_values():
    assert (ALIVE_FRACTION, COLLAPSED_FRACTION, criteria.TRAIN_ACCURACY) == (0.5, 0.05, 1.0)
    assert (KKT_BOUND, GRAD_BOUND) == (0.02, 0.05)


def test_outcomes_at_and_around_each_boundary():
    predicted = [1.0, 1.0, 1.0, 0.8, 0.8, 0.0, 0.0]
    # largest measured norm among the classes predicted alive: 2.0 -> collapse bound 0.1
    measured = [2.0, 0.5, 0.4999, 0.1, 0.1001, 0.1, 0.1001]
    assert class_outcomes(measured, predicted) == [
        "alive",
        "alive",  # exactly half the prediction
        "partial",
        "collapsed",  # exactly 5% of the largest alive norm (and below half of 0.8)
        "partial",
        "collapsed",  # predicted dead, at the bound
        "partial",  # predicted dead, above it: never "alive"
    ]


def test_a_predicted_alive_class_with_a_small_prediction_is_alive_when_it_meets_it():
    # near the threshold the predicted norm itself is tiny: meeting half of it is "alive"
    assert class_outcomes([1.0, 0.01], [1.0, 0.015]) == ["alive", "alive"]
    assert class_outcomes([1.0, 0.004], [1.0, 0.015]) == ["alive", "collapsed"]


def test_no_class_predicted_alive_uses_the_given_scale():
    assert class_outcomes([1e-3, 0.2], [0.0, 0.0]) == ["collapsed", "partial"]
    assert class_outcomes([1e-3, 0.2], [0.0, 0.0], scale=10.0) == ["collapsed", "collapsed"]
    # with a class predicted alive the scale argument is not used
    assert class_outcomes([1.0, 0.2], [1.0, 0.0], scale=100.0) == ["alive", "partial"]


def test_nan_norms_are_partial_and_lengths_must_match():
    assert class_outcomes([1.0, math.nan], [1.0, 1.0]) == ["alive", "partial"]
    with pytest.raises(
        ValueError, match=r"`measured_norms` has 2 classes.*`predicted_norms` has 3"
    ):
        class_outcomes([1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`measured_norms` must be 1-D.*\(1, 2\)"):
        class_outcomes(np.ones((1, 2)), [1.0, 1.0])


def test_arrays_of_any_library(backend):
    measured = backend.asarray(np.array([2.0, 0.3, 0.05]))
    predicted = backend.asarray(np.array([2.0, 1.0, 0.0]))
    assert class_outcomes(measured, predicted) == ["alive", "partial", "collapsed"]


def test_terminal_phase_bounds_are_inclusive_and_each_failure_is_named():
    assert terminal_phase(1.0, KKT_BOUND).reached
    assert terminal_phase(1.0, KKT_BOUND, grad_norm=GRAD_BOUND).reached
    assert terminal_phase(1.0, 0.0, grad_norm=None).grad_norm is None
    short = terminal_phase(0.99, KKT_BOUND * 1.01, grad_norm=GRAD_BOUND * 2)
    assert not short.reached and len(short.reasons) == 3
    text = short.sentence()
    assert "train accuracy 0.99" in text and "KKT residual" in text and "gradient norm" in text
    assert not terminal_phase(1.0, math.nan).reached  # an unknown residual is not small
    assert terminal_phase(1.0, 0.001).to_dict()["reasons"] == []


def test_accuracy_classes_leave_out_only_the_collapsed():
    assert accuracy_classes(["collapsed", "alive", "partial", "collapsed"]) == [1, 2]


def test_the_verdict_uses_the_same_criteria():
    counts = [30, 20, 3, 1]
    opt = ufm_relu_optimum(counts, 2e-2, 2e-2)
    y = np.repeat(np.arange(4), counts)
    means = np.asarray(opt.means()).copy()
    means[2] *= 0.3  # class 2 predicted alive, measured at 0.3x its norm
    report = nc_report((means[y], y), opt.classifier(), theory=opt)
    verdict = Verdict.of(report)
    observed = [c.observed for c in verdict.classes]
    predicted_norms = np.asarray(opt.feature_norms)
    measured_norms = np.linalg.norm(means, axis=1)
    assert observed == class_outcomes(measured_norms, predicted_norms)
    assert observed == ["alive", "alive", "partial", "collapsed"]
    assert verdict.observed_partial == [2]
    assert [c.as_predicted for c in verdict.classes] == [True, True, False, True]
    saved = verdict.to_dict()
    assert saved["collapsed_fraction"] == COLLAPSED_FRACTION
    assert saved["alive_fraction"] == ALIVE_FRACTION
    assert "Partial (neither): class 2" in verdict.collapse_sentence()


def test_docs_state_the_same_numbers():
    text = DOCS.read_text()
    section = text[text.index("## Criteria") :]
    section = section[: section.index("\n## ", 5)]
    for value, what in (
        (ALIVE_FRACTION, "alive"),
        (COLLAPSED_FRACTION, "collapsed"),
        (KKT_BOUND, "KKT"),
        (GRAD_BOUND, "gradient"),
    ):
        assert re.search(rf"\b{value:g}\b", section), (value, what)
