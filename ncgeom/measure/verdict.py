"""The verdict a report leads with: how close to the optimum, which classes collapse.

`Verdict.of` reads an `NCReport` and its theory context (the plain numbers
that `ncgeom.report.theory_context` takes from a `UFMOptimum`: lambdas,
counts, threshold, which classes the theorem keeps alive, the optimal
objective, and every metric's value at the optimum) and answers three
questions:

- the gap between the measured objective and the optimum, absolute and in %;
- which classes the theorem predicts to collapse (``n_k <= n_crit`` at the
  report's total N), and the observed outcome of every class by the fixed
  criteria of `ncgeom.criteria` (alive: at least half its predicted norm;
  collapsed: at most 5% of the largest norm among the classes predicted
  alive; partial: anything else);
- for each metric of `ncgeom.vocabulary.METRICS`, its value at the optimum
  (zero, one, or a count-dependent value) and the distance of the
  measurement from it.

Every missing number carries the reason it is missing. This module reads
reports; it makes none (`ncgeom.report` imports it, not the reverse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .criteria import ALIVE_FRACTION, COLLAPSED_FRACTION, class_outcomes
from .vocabulary import METRICS

__all__ = [
    "ALIVE_FRACTION",
    "COLLAPSED_FRACTION",
    "NOT_COLLAPSED",
    "ClassCheck",
    "MetricCheck",
    "Verdict",
]

#: The observed outcome of a class that did not collapse when no predicted
#: norms are known (without a theory nothing says what "alive" would need).
NOT_COLLAPSED = "not collapsed"
#: Why a metric with ``expect="none"`` has no value at the optimum.
NO_OPTIMUM_VALUE = "the theorem has no out-of-distribution data: no value at the optimum"
_NO_THEORY = (
    "no theory given: pass theory=ncgeom.ufm_relu_optimum(counts, lambda_w, lambda_h) to nc_report"
)


@dataclass(frozen=True)
class MetricCheck:
    """One metric: measured value, the optimum's value and their distance."""

    name: str
    label: str
    measured: float | None
    target: float | None
    expect: str
    distance: float | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ClassCheck:
    """One class: count, predicted fate, observed fate, measured and optimal norms."""

    index: int
    count: int
    predicted: str | None
    observed: str | None
    norm_measured: float | None
    norm_optimum: float | None
    margin_measured: float | None
    margin_optimum: float | None

    @property
    def as_predicted(self) -> bool | None:
        """Whether the observed fate is the predicted one (None if either is unknown)."""
        if self.predicted is None or self.observed is None:
            return None
        return self.predicted == self.observed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**self.__dict__, "as_predicted": self.as_predicted}


@dataclass(frozen=True)
class Verdict:
    """The answers a report leads with (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import nc_report
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.verdict import Verdict
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> y = np.repeat(np.arange(4), [30, 20, 3, 1])
    >>> report = nc_report((opt.means()[y], y), opt.classifier(), theory=opt, objective=0.75)
    >>> verdict = Verdict.of(report)
    >>> round(verdict.gap, 4), [c.predicted for c in verdict.classes]
    (0.0198, ['alive', 'alive', 'alive', 'collapsed'])
    """

    objective: float | None
    optimum: float | None
    gap: float | None
    gap_percent: float | None
    gap_reason: str | None
    collapse_count: float | None
    collapse_reason: str | None
    classes: tuple[ClassCheck, ...]
    metrics: tuple[MetricCheck, ...]

    @classmethod
    def of(cls, report: Any) -> Verdict:
        """The verdict of an `NCReport` (uses its ``theory`` and ``objective`` fields)."""
        context: Mapping[str, Any] | None = report.theory
        why = dict(report.unavailable)
        objective = report.objective
        optimum = gap = percent = None
        if context is None:
            gap_reason = _NO_THEORY
        elif objective is None:
            optimum = context["objective"]
            gap_reason = "no measured objective: " + why.get(
                "objective", "pass objective= to nc_report"
            )
        else:
            optimum = context["objective"]
            gap = objective - optimum
            percent = 100.0 * gap / optimum if optimum > 0 else None
            gap_reason = None if percent is not None else "optimum is 0"
        collapse_count = None if context is None else context["collapse_count"]
        collapse_reason = None if context is not None else _NO_THEORY
        return cls(
            objective=objective,
            optimum=optimum,
            gap=gap,
            gap_percent=percent,
            gap_reason=gap_reason,
            collapse_count=collapse_count,
            collapse_reason=collapse_reason,
            classes=_class_checks(report, context),
            metrics=_metric_checks(report, context, why),
        )

    # ------------------------------------------------------------------ views
    @property
    def predicted_collapsed(self) -> list[int]:
        """Classes the theorem predicts to collapse."""
        return [c.index for c in self.classes if c.predicted == "collapsed"]

    @property
    def observed_collapsed(self) -> list[int]:
        """Classes whose measured mean collapsed (see `ncgeom.criteria`)."""
        return [c.index for c in self.classes if c.observed == "collapsed"]

    @property
    def observed_partial(self) -> list[int]:
        """Classes neither alive nor collapsed (see `ncgeom.criteria`)."""
        return [c.index for c in self.classes if c.observed == "partial"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``report.json`` holds under ``verdict``)."""
        return {
            "objective": self.objective,
            "optimum": self.optimum,
            "gap": self.gap,
            "gap_percent": self.gap_percent,
            "gap_reason": self.gap_reason,
            "collapse_count": self.collapse_count,
            "collapse_reason": self.collapse_reason,
            "alive_fraction": ALIVE_FRACTION,
            "collapsed_fraction": COLLAPSED_FRACTION,
            "predicted_collapsed": self.predicted_collapsed,
            "observed_collapsed": self.observed_collapsed,
            "observed_partial": self.observed_partial,
            "classes": [c.to_dict() for c in self.classes],
            "metrics": {m.name: m.to_dict() for m in self.metrics},
        }

    def gap_sentence(self) -> str:
        """One sentence on the objective's gap to the optimum."""
        if self.gap is None:
            head = "Objective gap: -"
            if self.optimum is not None:
                head = f"Optimum f* = {self.optimum:.6g}; objective gap: -"
            return f"{head} ({self.gap_reason})."
        percent = "-" if self.gap_percent is None else f"{self.gap_percent:.2f}%"
        return (
            f"Objective {self.objective:.6g} against the optimum f* = {self.optimum:.6g}: "
            f"gap {self.gap:.4g} ({percent} of f*)."
        )

    def collapse_sentence(self) -> str:
        """One sentence on predicted and observed minority collapse."""
        if self.collapse_count is None:
            return f"Minority collapse: - ({self.collapse_reason})."
        predicted = self.predicted_collapsed
        rule = (
            f"the theorem collapses every class with n_k <= n_crit = {self.collapse_count:.4g} "
            "samples (at this total N and these lambdas)"
        )
        if not predicted:
            text = f"No class is predicted to collapse: {rule}, and the smallest class is larger."
        else:
            text = f"Predicted to collapse: {_classes(predicted)}: {rule}."
        known = [c for c in self.classes if c.observed is not None]
        if not known:
            return text + " Observed: - (no measured class-mean norms)."
        observed = self.observed_collapsed
        wrong = [c.index for c in known if not c.as_predicted]
        seen = _classes(observed) if observed else "no class"
        verdict = "as predicted" if not wrong else f"not as predicted for {_classes(wrong)}"
        partial = self.observed_partial
        middle = f" Partial (neither): {_classes(partial)}." if partial else ""
        return (
            f"{text} Observed collapsed (‖h_k‖ <= {COLLAPSED_FRACTION:g} x the largest "
            f"norm among the classes predicted alive; alive: >= {ALIVE_FRACTION:g} x the "
            f"predicted norm): {seen}, {verdict}.{middle}"
        )

    def metric_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(metric, optimum, measured, distance, note) per metric, as text."""
        rows = []
        for check in self.metrics:
            target = _fmt(check.target)
            if check.target is not None and check.expect == "value":
                target += " (value at the optimum)"
            note = check.reason or ""
            rows.append(
                (check.label, target, _fmt(check.measured), _fmt(check.distance), note or "")
            )
        return rows

    def lines(self) -> list[str]:
        """The verdict as indented plain-text lines."""
        out = ["Verdict", "  " + self.gap_sentence(), "  " + self.collapse_sentence()]
        rows = self.metric_rows()
        width = max([34, *(len(row[0]) for row in rows)])
        out.append(f"  {'metric':<{width}} {'optimum':<30} {'measured':>10} {'distance':>10}")
        for name, target, measured, distance, note in rows:
            line = f"  {name:<{width}} {target:<30} {measured:>10} {distance:>10}"
            out.append(line + (f"  - {note}" if note else ""))
        return out

    def markdown(self) -> str:
        """The verdict as Markdown: two sentences and a metric table."""
        rows = [
            "## Verdict",
            "",
            f"- {self.gap_sentence()}",
            f"- {self.collapse_sentence()}",
            "",
            "| metric | at the optimum | measured | distance | why a value is `-` |",
            "|---|---|---|---|---|",
        ]
        for name, target, measured, distance, note in self.metric_rows():
            rows.append(f"| {name} | {target} | {measured} | {distance} | {note} |")
        return "\n".join(rows) + "\n"

    def class_table(self) -> str:
        """Per-class Markdown table with one header per column."""
        rows = [
            "| class | n_k | ‖h_k‖ measured | ‖h_k‖ at the optimum | M_k measured "
            "| M_k at the optimum | predicted fate | observed fate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in self.classes:
            rows.append(
                f"| {c.index} | {c.count} | {_fmt(c.norm_measured)} | {_fmt(c.norm_optimum)} "
                f"| {_fmt(c.margin_measured)} | {_fmt(c.margin_optimum)} "
                f"| {c.predicted or '-'} | {c.observed or '-'} |"
            )
        return "\n".join(rows) + "\n"

    def class_lines(self) -> list[str]:
        """Per-class plain-text table with one header per column."""
        head = (
            f"  {'class':>5} {'n_k':>8} {'|h_k|_meas':>11} {'|h_k|_opt':>11}"
            f" {'M_k_meas':>10} {'M_k_opt':>10} {'predicted':>10} {'observed':>10}"
        )
        out = [head]
        for c in self.classes:
            out.append(
                f"  {c.index:>5} {c.count:>8} {_fmt(c.norm_measured):>11} "
                f"{_fmt(c.norm_optimum):>11} {_fmt(c.margin_measured):>10} "
                f"{_fmt(c.margin_optimum):>10} {c.predicted or '-':>10} {c.observed or '-':>10}"
            )
        return out


def _classes(values: Sequence[int]) -> str:
    word = "class" if len(values) == 1 else "classes"
    return f"{word} " + ", ".join(str(v) for v in values)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _class_checks(report: Any, context: Mapping[str, Any] | None) -> tuple[ClassCheck, ...]:
    counts = report.counts
    norms = report.feature_norms_measured
    predicted_norms = report.feature_norms_predicted
    margins = report.margins_measured
    predicted_margins = report.margins_predicted
    observed_all = _observed(norms, predicted_norms, context)
    checks = []
    for k, count in enumerate(counts):
        if context is not None:
            predicted = "alive" if context["alive"][k] else "collapsed"
        elif predicted_norms is not None:
            predicted = "alive" if predicted_norms[k] > 0 else "collapsed"
        else:
            predicted = None
        observed = None if observed_all is None else observed_all[k]
        checks.append(
            ClassCheck(
                index=k,
                count=int(count),
                predicted=predicted,
                observed=observed,
                norm_measured=None if norms is None else _finite(norms[k]),
                norm_optimum=None if predicted_norms is None else _finite(predicted_norms[k]),
                margin_measured=None if margins is None else _finite(margins[k]),
                margin_optimum=_finite(
                    None if predicted_margins is None else predicted_margins[k]
                ),
            )
        )
    return tuple(checks)


def _observed(
    norms: Sequence[float] | None,
    predicted_norms: Sequence[float] | None,
    context: Mapping[str, Any] | None,
) -> list[str | None] | None:
    """Observed outcome per class by `ncgeom.criteria.class_outcomes`.

    Without predicted norms a class is "collapsed" at most 5% of the largest
    class-mean norm, else `NOT_COLLAPSED`.
    """
    if norms is None:
        return None
    finite = [v for v in norms if math.isfinite(v)]
    if not finite:
        return None
    # Every norm zero (dead features): every class collapsed, and says so.
    if predicted_norms is not None:
        return list(class_outcomes(list(norms), list(predicted_norms)))
    if context is not None:
        return None
    largest = max(finite)
    return [
        None
        if not math.isfinite(v)
        else "collapsed"
        if v <= COLLAPSED_FRACTION * largest
        else NOT_COLLAPSED
        for v in norms
    ]


def _metric_checks(
    report: Any, context: Mapping[str, Any] | None, why: dict[str, str]
) -> tuple[MetricCheck, ...]:
    checks = []
    estimated = dict(getattr(report, "estimated", ()))
    for name, metric in METRICS.items():
        measured = getattr(report, name)
        reason = None
        if measured is None or not math.isfinite(measured):
            reason = why.get(name, "not computed")
        elif name in estimated:
            reason = f"estimated from sampled pairs: +- {estimated[name]:.2g} (95% interval)"
        if context is not None:
            target = context["targets"].get(name)
            if target is None and reason is None:
                reason = context["target_reasons"].get(name, "no value at the optimum")
        elif metric.expect == "none":
            target = None
            if reason is None:
                reason = NO_OPTIMUM_VALUE
        elif metric.expect == "value":
            target = None
            if reason is None:
                reason = "its value at the optimum depends on the counts: no theory given"
        else:
            target = 0.0 if metric.expect == "zero" else 1.0
        distance = None
        if target is not None and measured is not None and math.isfinite(measured):
            distance = abs(measured - target)
        checks.append(
            MetricCheck(
                name=name,
                label=metric.label,
                measured=measured,
                target=target,
                expect=metric.expect,
                distance=distance,
                reason=reason,
            )
        )
    return tuple(checks)
