"""`nc_report`: every neural-collapse metric the inputs allow, in one `NCReport`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._lib.backend import (
    accumulation_dtype,
    backend_name,
    detach,
    gather_rows,
    index_dtype,
    namespace,
    to_host,
    wide_float,
)
from .._lib.lanes import serial_lapack
from .._lib.validate import (
    check_bias_vector,
    check_choice,
    check_class_count,
    check_classifier,
    check_features,
    check_instance,
    check_labels,
    check_num_classes,
    check_real,
    check_stats_classifier,
    check_stream_batch,
)
from ..theory import comparison as tm
from ..theory.optimum import UFMOptimum
from . import metrics as m
from .stats import ClassStats, Visit, class_moments, warn_nc1_rounding
from .verdict import NO_OPTIMUM_VALUE, Verdict
from .vocabulary import METRIC_NAMES, METRICS

__all__ = ["NCReport", "nc_report", "theory_context"]

Array = Any


@dataclass(frozen=True)
class NCReport:
    """Neural-collapse metrics of one set of features, as Python floats.

    A metric the inputs do not allow is None, and `unavailable` says why
    (e.g. no classifier was given). Definitions: `ncgeom.metrics`; names and
    symbols: `ncgeom.vocabulary`. The text (``str(report)``) and `to_dict`
    lead with a `ncgeom.verdict.Verdict`: the objective's gap to the optimum,
    which classes collapse, and each metric against its value at the optimum.
    `nc_report` fills in what the verdict needs when it is given the
    predicted optimum (``theory=``) and, or measures, the objective.

    Every value with units (``within_variance``, ``objective``, the measured
    norms and margins) is in the features' own units, whatever their size.
    A metric estimated from sampled pairs (``nc_report(..., pairs=...)``) is
    listed in `estimated` with the half width of its 95% interval.
    """

    METRICS: ClassVar[tuple[str, ...]] = METRIC_NAMES
    PER_CLASS: ClassVar[tuple[str, ...]] = (
        "distance_norms",
        "margins_measured",
        "margins_predicted",
        "feature_norms_measured",
        "feature_norms_predicted",
    )

    num_classes: int
    num_samples: int
    dim: int
    counts: tuple[int, ...]
    excluded: tuple[tuple[int, str], ...]
    global_mean: str
    backend: str
    dtype: str
    nc1: float | None = None
    nc1_trace_ratio: float | None = None
    cdnv: float | None = None
    within_variance: float | None = None
    etf_error: float | None = None
    equinorm: float | None = None
    log_equinorm: float | None = None
    equiangularity: float | None = None
    equiangularity_std: float | None = None
    interference_mean: float | None = None
    interference_min: float | None = None
    interference_max: float | None = None
    orthogonality_error: float | None = None
    log_energy: float | None = None
    log_energy_variance: float | None = None
    riesz_log_energy: float | None = None
    riesz_log_variance: float | None = None
    nearest_etf_distance: float | None = None
    nearest_frame_distance: float | None = None
    self_duality_error: float | None = None
    scaled_alignment_error: float | None = None
    classifier_equinorm: float | None = None
    classifier_equiangularity: float | None = None
    classifier_etf_error: float | None = None
    uniform_duality: float | None = None
    uniform_duality_variance: float | None = None
    bias_collapse: float | None = None
    ncc_agreement: float | None = None
    ood_deviation: float | None = None
    gof_error: float | None = None
    classifier_gram_error: float | None = None
    logit_structure_error: float | None = None
    optimum_frame_distance: float | None = None
    distance_norms: tuple[float, ...] | None = None
    margins_measured: tuple[float, ...] | None = None
    margins_predicted: tuple[float, ...] | None = None
    feature_norms_measured: tuple[float, ...] | None = None
    feature_norms_predicted: tuple[float, ...] | None = None
    unavailable: tuple[tuple[str, str], ...] = ()
    estimated: tuple[tuple[str, float], ...] = ()
    objective: float | None = None
    theory: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    def with_theory(
        self, optimum: UFMOptimum | None, *, objective: float | None = None
    ) -> NCReport:
        """This report with another optimum's numbers (`theory_context`) or an
        objective measured elsewhere, for the verdict.

        ``nc_report(..., theory=optimum, objective=value)`` gives the same
        report in one call, with the theory-based metrics as well; this method
        serves a report that already exists, e.g. to attach the training loss
        measured after the report was made.

        Parameters
        ----------
        optimum : UFMOptimum or None
            The predicted optimum for the training counts and lambdas; None
            keeps the report's current theory context.
        objective : float, optional
            The UFM+ objective measured at the same point (e.g. the training
            loss with the regulariser); None keeps the report's.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import nc_report
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
        >>> y = np.repeat(np.arange(4), [30, 20, 3, 1])
        >>> report = nc_report((opt.means()[y], y), opt.classifier())
        >>> report = report.with_theory(opt, objective=float(opt.objective))
        >>> report.to_dict()["verdict"]["gap"], report.to_dict()["verdict"]["predicted_collapsed"]
        (0.0, [3])
        """
        context = self.theory
        if optimum is not None:
            context = theory_context(optimum, global_mean=self.global_mean)
        value = self.objective if objective is None else _checked_objective(objective)
        why = self.unavailable
        if value is not None:
            why = tuple((name, text) for name, text in why if name != "objective")
        return dataclasses.replace(self, theory=context, objective=value, unavailable=why)

    def verdict(self) -> Verdict:
        """The `ncgeom.verdict.Verdict` of this report."""
        return Verdict.of(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists), with the verdict."""
        out = dataclasses.asdict(self)
        out["counts"] = list(self.counts)
        out["excluded"] = [{"class": k, "reason": why} for k, why in self.excluded]
        out["unavailable"] = {name: why for name, why in self.unavailable}
        out["estimated"] = {name: half for name, half in self.estimated}
        for name in self.PER_CLASS:
            if out[name] is not None:
                out[name] = list(out[name])
        out["theory"] = None if self.theory is None else dict(self.theory)
        out["verdict"] = self.verdict().to_dict()
        return out

    def __str__(self) -> str:
        head = (
            f"NCReport: {self.num_classes} classes, {self.num_samples} samples, dim {self.dim} "
            f"({self.backend}, {self.dtype}, global mean over {self.global_mean})"
        )
        verdict = self.verdict()
        lines = [head, *verdict.lines()]
        if self.feature_norms_measured is not None:
            lines += [
                "Per class (_meas = measured, _opt = at the optimum)",
                *verdict.class_lines(),
            ]
        if self.excluded:
            lines.append("  excluded: " + ", ".join(f"class {k} ({w})" for k, w in self.excluded))
        return "\n".join(lines)


def nc_report(
    source: ClassStats | Sequence[Array],
    classifier: Array | None = None,
    bias: Array | None = None,
    *,
    theory: UFMOptimum | None = None,
    objective: float | None = None,
    ood_mean: Array | None = None,
    min_count: int | None = None,
    max_count: int | None = None,
    pairs: str | int = "auto",
    num_classes: int | None = None,
    global_mean: str = "samples",
    check_finite: bool = True,
    chunk_size: int | None = None,
) -> NCReport:
    """Every metric of `ncgeom.metrics` that the inputs allow, and the verdict.

    Parameters
    ----------
    source : ClassStats or (features, labels)
        Statistics (streamed or built with `ClassStats.from_features`), or
        in-memory features (N, d) and integer labels (N,). The in-memory path
        makes the two chunked passes of `ncgeom.stats.class_moments` (class
        means, then deviations, projected on the span of the centred means),
        so it never forms a (d, d) matrix; it also gives the NCC agreement
        and, with `theory` and a classifier, the UFM+ objective.
    classifier : array (K, d), optional
        Last-layer weights W (rows are classes); enables the classifier
        metrics. Must be finite.
    bias : array (K,), optional
        Last-layer bias: used by ``bias_collapse`` and by the NCC agreement
        of in-memory features. Needs `classifier`; must be finite. Without
        it the classifier counts as bias-free (b = 0).
    theory : UFMOptimum, optional
        The predicted optimum (`ncgeom.theory.ufm_relu_optimum`) for the
        training counts and weight decays, with the same K. Adds the
        theory-based metrics of `ncgeom.theory_metrics` (``gof_error``, and
        with a classifier ``classifier_gram_error``,
        ``logit_structure_error``), per-class measured-vs-predicted feature
        norms and margins (``z_kk - max_{j != k} z_kj``), and the verdict's
        theory context (`theory_context`): which classes the theorem
        collapses and each metric's value at the optimum.
    objective : float, optional
        The UFM+ objective measured at the same point (e.g. the training loss
        with its regulariser), for the verdict's gap to the optimum. Without
        it, the report measures the objective itself when it can: in-memory
        features of the theory's class counts, a classifier, no bias.
    ood_mean : array (d,), optional
        The mean feature of out-of-distribution samples, for NC5
        (``ood_deviation``); finite and non-zero.
    min_count, max_count : int, optional
        Keep only the classes with ``min_count <= n_k <= max_count`` samples
        (both inclusive; `ncgeom.metrics.CountFilter`): every metric then
        sees the kept classes alone, and `NCReport.excluded` gives each
        left-out class with its reason. NC1 from statistics is then
        unavailable (their within-class Gram pools every class); from
        in-memory features the passes leave the other classes' rows out.
    pairs : "auto", "exact" or int
        How the metrics of class pairs are computed: "exact", one blocked
        pass over all K(K-1)/2 pairs; an int, unbiased estimates of the pair
        means from that many sampled pairs, each with its 95% interval
        (`NCReport.estimated`; `ncgeom.metrics.sampled_pair_metrics`), the
        other pair metrics then unavailable with the reason; "auto"
        (default), exact up to `ncgeom.metrics.SAMPLED_PAIRS_FROM` classes,
        `SAMPLED_PAIRS` sampled pairs above.
    num_classes : int, optional
        K for in-memory input; default: rows of `classifier`, else
        ``max(labels) + 1`` (refused when that is far above the number of
        samples: pass `num_classes`).
    global_mean : {"samples", "classes"}
        Centre of the between-class spread (see `ncgeom.metrics.nc1`).
    check_finite : bool
        Raise if in-memory features hold NaN/Inf.
    chunk_size : int, optional
        Rows per chunk of the in-memory passes.

    Returns
    -------
    NCReport
        When the class means coincide or are all zero (dead features), the
        metrics that divide by their spread are NaN, `unavailable` says why,
        and one `UserWarning` is issued.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import nc_report
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=300)
    >>> x = np.eye(3)[y] * 4 + 0.1 * rng.normal(size=(300, 3))
    >>> report = nc_report((x, y))
    >>> report.nc1 < 1e-2, report.orthogonality_error < 0.05
    (True, True)

    With the predicted optimum, the verdict compares the two; at the optimum
    itself the objective's gap is zero:

    >>> from ncgeom.theory import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> y = np.repeat(np.arange(4), [30, 20, 3, 1])
    >>> verdict = nc_report((opt.means()[y], y), opt.classifier(), theory=opt).verdict()
    >>> abs(verdict.gap) < 1e-12, verdict.predicted_collapsed, verdict.observed_collapsed
    (True, [3], [3])
    """
    check_choice(global_mean, "global_mean", m.GLOBAL_MEANS)
    bounds = m.CountFilter.of(min_count, max_count)
    _check_pairs(pairs)
    if bias is not None and classifier is None:
        msg = (
            "`bias` needs a `classifier`: it is added to the classifier's logits; "
            "got classifier=None"
        )
        raise ValueError(msg)
    context = None if theory is None else theory_context(theory, global_mean=global_mean)
    if objective is not None:
        objective = _checked_objective(objective)
    values: dict[str, Array] = {}
    unavailable: dict[str, str] = {}
    ce_sum = None
    if isinstance(source, ClassStats):
        stats = source
        if context is not None:
            check_class_count(len(context["counts"]), stats.num_classes, "theory", "`stats` have")
        if classifier is not None:
            classifier = check_stats_classifier(classifier, stats)
        if bias is not None:
            check_bias_vector(bias, stats.num_classes, namespace(stats=stats.shift, bias=bias))
            bias = detach(bias)
        view = m.populated(
            stats, global_mean, min_count=bounds.min_count, max_count=bounds.max_count
        )
        if view.filtered:
            unavailable["nc1"] = (
                "the statistics' within-class Gram pools every class, also those left out "
                f"by {bounds.describe()}: pass in-memory (features, labels)"
            )
        elif stats.gram is not None:
            values["nc1"], values[_NC1_ROUNDING] = m.nc1_and_rounding_of(view)
        else:
            unavailable["nc1"] = "statistics without Gram"
        unavailable["ncc_agreement"] = "needs features, not statistics"
        objective_reason = (
            "the cross-entropy needs the features, not statistics: pass objective= "
            "(e.g. the training loss with its regulariser)"
        )
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        scan = _scan_features(
            *source,
            classifier,
            bias,
            num_classes,
            global_mean,
            check_finite,
            chunk_size,
            context,
            measure_objective=objective is None,
            bounds=bounds,
            ood_mean=ood_mean,
        )
        ood_mean = scan.ood_mean
        stats, view, classifier, ce_sum = scan.stats, scan.view, scan.classifier, scan.ce_sum
        values["nc1"], values[_NC1_ROUNDING] = scan.nc1, scan.rounding
        objective_reason = scan.objective_reason
        if scan.agreement is not None:
            values["ncc_agreement"] = scan.agreement
    else:
        msg = (
            "`source` must be a ClassStats or a (features, labels) pair; "
            f"got {type(source).__name__}"
        )
        raise TypeError(msg)

    xp = view.xp
    vectors: dict[str, Array] = {}
    half_widths: dict[str, Array] = {}
    # The small products and factorisations of the metrics on one BLAS thread.
    with serial_lapack(xp, (stats.num_classes, stats.dim)):
        flags = _means_metrics(
            view, stats, values, unavailable, _sampled_pairs(pairs, view.size), half_widths
        )
        values.update({_HALF_WIDTH + name: half for name, half in half_widths.items()})
        if classifier is not None:
            sampled = _sampled_pairs(pairs, view.size)
            flags.update(_classifier_metrics(view, classifier, bias, values, vectors, sampled))
            if sampled is not None:
                for name in m.CLASSIFIER_PAIR_METRICS:
                    unavailable[name] = _not_sampled_reason(name, view.size, sampled)
        else:
            for name in (*_CLASSIFIER_METRICS, "ncc_agreement"):
                unavailable.setdefault(name, "no classifier given")
        if ood_mean is not None:
            if isinstance(source, ClassStats):
                ood_mean = m.check_ood_mean(ood_mean, stats)
            values["ood_deviation"] = m.ood_deviation_of(view, ood_mean)
        else:
            unavailable["ood_deviation"] = _NO_OOD_MEAN
        if theory is None:
            for name in _THEORY_METRICS:
                unavailable[name] = "no theory given"

        if theory is not None:
            _theory_values(
                stats, view, classifier, theory, context, values, vectors, unavailable, bounds
            )
    if ce_sum is not None:
        values["objective"] = _objective(ce_sum, stats, classifier, context)
    elif objective is None and context is not None:
        unavailable["objective"] = objective_reason

    names, vector_names, flag_names = list(values), list(vectors), list(flags)
    parts = [xp.stack([xp.astype(values[k], wide_float(xp)) for k in names])]
    parts.append(xp.stack([xp.astype(flags[k], wide_float(xp)) for k in flag_names]))
    parts += [xp.astype(vectors[k], wide_float(xp)) for k in vector_names]
    host = to_host(xp.concat(parts))  # the one device-to-host transfer
    floats: dict[str, Any] = {k: float(v) for k, v in zip(names, host, strict=False)}
    start = len(names)
    raised = {k for k, v in zip(flag_names, host[start:], strict=False) if v}
    start += len(flag_names)
    for name in vector_names:
        floats[name] = tuple(float(v) for v in host[start : start + stats.num_classes])
        start += stats.num_classes
    estimated = tuple(
        (name[len(_HALF_WIDTH) :], floats.pop(name))
        for name in list(floats)
        if name.startswith(_HALF_WIDTH)
    )
    if _NC1_ROUNDING in floats:
        origin = "statistics" if isinstance(source, ClassStats) else "features"
        rounding = floats.pop(_NC1_ROUNDING)
        warn_nc1_rounding(rounding, stats.dtype, nc1=floats["nc1"], source=origin)
    _mark_degenerate(floats, unavailable, raised)
    if objective is not None:
        floats["objective"] = objective
    return NCReport(
        num_classes=stats.num_classes,
        num_samples=sum(view.host_counts),
        dim=stats.dim,
        counts=view.host_counts,
        excluded=tuple((k, bounds.reason(view.host_counts[k])) for k in view.excluded),
        global_mean=global_mean,
        backend=backend_name(xp),
        dtype=str(stats.dtype).rsplit(".", maxsplit=1)[-1],
        unavailable=tuple(unavailable.items()),
        estimated=estimated,
        theory=context,
        **floats,
    )


#: The comparisons with the optimum (with `_THEORY_PER_CLASS`, per class).
_THEORY_METRICS = (
    "gof_error",
    "classifier_gram_error",
    "logit_structure_error",
    "optimum_frame_distance",
)

#: Why `ood_deviation` is missing from a report.
_NO_OOD_MEAN = "no ood_mean given (mean of out-of-distribution features)"

#: The metrics of the classifier against the statistics (the NCC agreement
#: needs the samples too).
_CLASSIFIER_METRICS = (
    "self_duality_error",
    "scaled_alignment_error",
    "classifier_equinorm",
    "classifier_equiangularity",
    "classifier_etf_error",
    "uniform_duality",
    "uniform_duality_variance",
    "bias_collapse",
)


def _means_metrics(
    view: m.Classes,
    stats: ClassStats,
    values: dict[str, Array],
    unavailable: dict[str, str],
    sampled: int | None,
    half_widths: dict[str, Array],
) -> dict:
    """The metrics of the class means and variances (one blocked pass over the
    pairs, or `sampled` pairs with their intervals in `half_widths`; one thin
    SVD for each nearest ideal geometry); returns the flags of degenerate
    geometry."""
    xp = view.xp
    if sampled is None:
        pairs, flags = m.pair_metrics(view, m.MEANS_PAIR_METRICS)
    else:
        names = tuple(name for name in m.SAMPLED_PAIR_METRICS if name in _SAMPLED_IN_REPORT)
        pairs, halves = m.sampled_pair_metrics(view, names, sampled)
        # interference_mean is exact (a Gram identity): not an estimate.
        half_widths.update({k: v for k, v in halves.items() if k != "interference_mean"})
        flags = {}
        for name in m.MEANS_PAIR_METRICS:
            if name not in pairs:
                unavailable[name] = _not_sampled_reason(name, view.size, sampled)
    flags.update(view.flags())
    values.update(pairs)
    # In float64: the variance in the features' units may leave float32's range.
    scale = xp.astype(stats.unit_scale, wide_float(xp))
    spread = xp.sum(view.counts * view.variances) / xp.sum(view.counts)
    values["within_variance"] = xp.astype(spread, wide_float(xp)) * scale * scale
    values["nc1_trace_ratio"] = m.nc1_trace_ratio_of(view)
    values["equinorm"] = m.equinorm_of(view)
    values["log_equinorm"] = m.log_equinorm_of(view)
    flags.update(m.variant_flags(view))
    num, dim = view.size, view.means.shape[1]
    if dim >= num - 1:
        values["nearest_etf_distance"] = m.nearest_simplex_etf_of(view).relative_distance
    else:
        unavailable["nearest_etf_distance"] = (
            f"a simplex ETF of {num} classes needs dim >= {num - 1}; the features have {dim}"
        )
    if dim >= num:
        values["nearest_frame_distance"] = m.nearest_orthogonal_frame_of(view).relative_distance
    else:
        unavailable["nearest_frame_distance"] = (
            f"an orthogonal frame of {num} classes needs dim >= {num}; the features have {dim}"
        )
    return flags


def _classifier_metrics(
    view: m.Classes,
    classifier: Array,
    bias: Array | None,
    values: dict[str, Array],
    vectors: dict[str, Array],
    sampled: int | None,
) -> dict:
    """The metrics of a checked classifier (and bias) against the class view
    (its pair metrics only where the means' pairs are exact, `sampled` None);
    returns their flags of degenerate geometry."""
    values["self_duality_error"] = m.self_duality_error_of(classifier, view)
    values["scaled_alignment_error"] = m.scaled_alignment_error_of(classifier, view)
    flags = {}
    if sampled is None:
        pairs, flags = m.classifier_pair_metrics(view.take(classifier), m.CLASSIFIER_PAIR_METRICS)
        values.update(pairs)
    values["classifier_equinorm"] = m.classifier_equinorm_of(classifier, view)
    values["uniform_duality"] = m.uniform_duality_of(classifier, view)
    values["uniform_duality_variance"] = m.uniform_duality_variance_of(classifier, view)
    values["bias_collapse"] = m.bias_collapse_of(classifier, bias, view)
    vectors["distance_norms"] = m.distance_norms_of(classifier, view)
    flags.update(m.classifier_flags(classifier, view))
    flags.update(m.variant_flags(view, classifier))
    return flags


#: Pairs sampled by ``pairs="auto"`` above `ncgeom.metrics.SAMPLED_PAIRS_FROM`
#: classes: intervals about 1e-3 of the spread of the terms.
SAMPLED_PAIRS = 2**22
#: The pair means the report estimates from sampled pairs. The Riesz energy is
#: left out: with the default s = d - 2 a few closest pairs carry it, which
#: uniform sampling rarely draws (its estimate would be low, its interval too
#: narrow).
_SAMPLED_IN_REPORT = (
    "cdnv",
    "equiangularity",
    "orthogonality_error",
    "log_energy",
    "interference_mean",
)
#: Prefix of the keys under which the intervals travel with the results.
_HALF_WIDTH = "half_width:"


def _check_pairs(pairs: Any) -> None:
    """`pairs`: "auto", "exact" or a number of sampled pairs (>= 2)."""
    if isinstance(pairs, str):
        check_choice(pairs, "pairs", ("auto", "exact"))
        return
    msg = f'`pairs` must be "auto", "exact" or a number of sampled pairs >= 2; got {pairs!r}'
    if isinstance(pairs, bool) or not isinstance(pairs, int):
        raise TypeError(msg)
    if pairs < 2:
        raise ValueError(msg)


def _sampled_pairs(pairs: str | int, num: int) -> int | None:
    """The number of pairs to sample, None for the exact pass."""
    if pairs == "exact":
        return None
    if pairs == "auto":
        return SAMPLED_PAIRS if num > m.SAMPLED_PAIRS_FROM else None
    return int(pairs)


def _not_sampled_reason(name: str, num: int, sampled: int) -> str:
    """Why a pair metric is missing from a report of sampled pairs."""
    if name.startswith("riesz"):
        why = "the few closest pairs carry it, which sampling rarely draws"
    elif name.startswith("classifier"):
        why = "the classifier's K(K-1)/2 pairs are not visited either"
    else:
        why = "a minimum, maximum, variance or Frobenius norm has no unbiased estimate"
        why += " from sampled pairs"
    return (
        f"not estimated from {sampled:,} sampled pairs of {num:,} classes ({why}): "
        'pass pairs="exact"'
    )


#: The key under which the bound of NC1's Gram rounding travels with the results.
_NC1_ROUNDING = "nc1_gram_rounding"


def _checked_objective(objective: Any) -> float:
    """A measured objective: a finite real number."""
    return check_real(objective, "objective")


def _objective(
    ce_sum: Array, stats: ClassStats, classifier: Array, context: Mapping[str, Any]
) -> Array:
    """The UFM+ objective (0-d float64) from the summed cross-entropy of the samples.

    ``f = CE / N + (lambda_w / 2) ||W||^2 + (lambda_h / 2) ||H||^2`` with
    ``||H||^2 = sum_k n_k (||mu_k||^2 + v_k)``, from the statistics in units
    of their scale and multiplied back in float64.
    """
    xp = stats.xp
    f64 = wide_float(xp)
    n = xp.astype(stats.counts, f64)
    means = xp.astype(stats.scaled_means, f64)
    spread = xp.astype(stats.scaled_variances(), f64)
    scale = xp.astype(stats.unit_scale, f64)
    features_sq = xp.sum(n * (xp.vecdot(means, means) + spread)) * scale * scale
    weight = xp.astype(classifier, f64)
    classifier_sq = xp.sum(weight * weight)
    return (
        ce_sum / xp.sum(n)
        + 0.5 * context["lambda_w"] * classifier_sq
        + 0.5 * context["lambda_h"] * features_sq
    )


def _mark_degenerate(floats: dict[str, Any], unavailable: dict[str, str], raised: set) -> None:
    """Metrics that degenerate geometry leaves undefined become NaN with a reason
    (per-class ones all NaN); one warning names them, in report order."""
    hit: dict[str, list[str]] = {}
    for name in (*METRIC_NAMES, *NCReport.PER_CLASS):
        needs = m.DEGENERATE_METRICS.get(name, ())
        reasons = [m.DEGENERATE_REASONS[flag] for flag in needs if flag in raised]
        if reasons and name in floats:
            value = floats[name]
            floats[name] = tuple(math.nan for _ in value) if isinstance(value, tuple) else math.nan
            unavailable[name] = reasons[0]
            hit.setdefault(reasons[0], []).append(name)
    if hit:
        text = "; ".join(f"{why}: {', '.join(names)} undefined" for why, names in hit.items())
        warnings.warn(f"degenerate class geometry, {text} (NaN in the report)", stacklevel=3)


#: The report projects on the centred means of the first pass: their error, as a
#: fraction of the between-class spread, enters NC1 about twice.
BASIS_TOLERANCE = 1e-5


def _infer_num_classes(
    labels: Array, classifier: Array | None, num_rows: int, xp: ModuleType
) -> int:
    """K from the classifier's rows, else ``max(labels) + 1`` within reason."""
    if classifier is not None:
        return int(classifier.shape[0])
    if num_rows == 0:
        msg = "`num_classes` must be given when there are no samples to infer it from"
        raise ValueError(msg)
    largest = int(to_host(xp.max(labels)))
    inferred = largest + 1
    if inferred > 2 * num_rows + 64:
        msg = (
            f"`num_classes` must be given: the largest label is {largest}, so K would be "
            f"{inferred} for only {num_rows} samples (at least {inferred - num_rows} classes "
            "empty, and K x dim statistics to allocate)"
        )
        raise ValueError(msg)
    return inferred


class _Scan(NamedTuple):
    """What the passes over in-memory features give `nc_report`."""

    stats: ClassStats
    view: m.Classes
    nc1: Array
    rounding: Array  # estimate of NC1's relative rounding error (`_projection_rounding`)
    agreement: Array | None  # NCC agreement; None without a classifier
    classifier: Array | None  # the checked classifier
    ce_sum: Array | None  # summed cross-entropy of the UFM+ objective
    objective_reason: str | None  # why `ce_sum` is None
    ood_mean: Array | None  # the checked mean of out-of-distribution features


def _scan_features(
    features: Array,
    labels: Array,
    classifier: Array | None,
    bias: Array | None,
    num_classes: int | None,
    global_mean: str,
    check_finite: bool,
    chunk_size: int | None,
    context: Mapping[str, Any] | None,
    *,
    measure_objective: bool,
    bounds: m.CountFilter,
    ood_mean: Array | None,
) -> _Scan:
    """The engine's two passes over in-memory features, plus NC1 along the span
    of the centred means, the NCC agreement and the summed cross-entropy of the
    UFM+ objective from the same chunks."""
    xp = namespace(features=features, labels=labels, classifier=classifier, bias=bias)
    check_features(features, xp)
    check_labels(labels, features.shape[0], xp)
    if features.shape[1] == 0:
        msg = f"`features` must have at least one column; got shape {tuple(features.shape)}"
        raise ValueError(msg)
    num, dim = features.shape
    if ood_mean is not None:  # checked before the passes
        ood_mean = m.check_ood_vector(ood_mean, dim, like=features, like_name="features")
    theory_classes = None if context is None else len(context["counts"])
    if num_classes is None:
        num_classes = _infer_num_classes(labels, classifier, num, xp)
    if num == 0:
        msg = "`features` must hold at least one sample; got 0 rows"
        raise ValueError(msg)
    num_classes = check_num_classes(num_classes)
    if theory_classes is not None:
        check_class_count(theory_classes, num_classes, "theory", "the features have")
    dtype = accumulation_dtype(xp, features.dtype)
    if classifier is not None:
        if classifier.ndim != 2 or classifier.shape[1] != dim:
            shape = tuple(classifier.shape)
            hint = "; it looks transposed (rows must be classes)" if shape[:1] == (dim,) else ""
            msg = (
                f"`classifier` must have shape (num_classes, {dim}) (one row per class, as "
                f"many columns as `features`); got {shape}{hint}"
            )
            raise ValueError(msg)
        classifier = check_classifier(classifier, (num_classes, dim), dtype, xp, finite=False)
    if bias is not None:
        check_bias_vector(bias, num_classes, xp, finite=False)
    # The finiteness of the classifier and bias is read with the label range.
    features, labels = check_stream_batch(
        features,
        labels,
        num_classes,
        xp,
        check_finite,
        also_finite={"classifier": classifier, "bias": bias},
    )
    objective_reason = _objective_reason(classifier, bias, context, measure_objective)
    state: dict[str, Any] = {"reason": objective_reason}

    def visitor(counts: Array, means: Array) -> Visit:
        first = m.class_view(
            counts, means, None, global_mean, warn=True, what="features", counts_kept=bounds
        )
        basis, weights = m.between_basis(first.centred, xp)
        # Rows of classes left out by the count filter weigh 0 in every sum.
        kept_rows = None
        if first.filtered:
            mask = np.zeros(num_classes)
            mask[list(first.index)] = 1.0
            kept_rows = xp.asarray(mask, dtype=wide_float(xp), device=first.device)
        # Positions among the populated classes -> class ids (built on the
        # device when every class is populated: no upload).
        if first.excluded:
            index = xp.asarray(first.index, dtype=index_dtype(xp), device=first.device)
        else:
            index = xp.arange(num_classes, dtype=index_dtype(xp), device=first.device)
        rule = m.NearestCentre.of(first.centred, index, basis)
        # Coordinates of (mean_y - g) along the basis, by class id.
        centred_along = (means - first.global_mean) @ basis
        state.update(first=first, weights=weights, basis=basis)
        weight = shift = largest = classes = None
        if classifier is not None:
            # argmax is scale-free, and logits of entries near 1 do not overflow.
            largest = xp.max(xp.abs(classifier))
            largest = xp.where(largest > 0, largest, xp.ones_like(largest))
            weight = classifier / largest
            if bias is not None:
                shift = xp.astype(detach(bias), dtype) / largest
            if first.filtered:  # logits of the kept classes only
                weight = first.take(weight)
                shift = None if shift is None else first.take(shift)
        if state["reason"] is None and first.filtered:
            state["reason"] = (
                f"the objective covers every class, and {bounds.describe()} left some out: "
                "pass objective="
            )
        if state["reason"] is None and first.host_counts != tuple(context["counts"]):
            state["reason"] = (
                "the features' class counts differ from the theory's: pass objective= "
                "measured on the training data"
            )
        if state["reason"] is None:
            classes = xp.arange(num_classes, dtype=index_dtype(xp), device=first.device)
            largest = xp.astype(largest, wide_float(xp))

        def visit(x: Array, dev: Array, y: Array, dev_sq: Array) -> tuple[Array, ...]:
            dev_along = dev @ basis
            # Squares summed in float64: one far sample (an outlier) would
            # otherwise make every other row's square round at its size.
            squares = xp.astype(dev_along, wide_float(xp))  # a new array: squared in place
            squares *= squares
            # Weighted by each row's squared norm: what the rounding of the
            # row's projection can move, for NC1's rounding estimate. Both
            # sums over the rows in one product.
            norms = xp.astype(dev_sq, wide_float(xp))
            keep = None
            if kept_rows is not None:
                keep = gather_rows(kept_rows, y, xp)
                squares *= keep[:, None]
            both = xp.stack([xp.ones_like(norms), norms]) @ squares
            sums = (both[0, ...], both[1, ...])
            if weight is None:
                return sums
            logits = xp.astype(x, dtype, copy=False) @ weight.T
            if shift is not None:
                logits = logits + shift
            along = dev_along + gather_rows(centred_along, y, xp)
            if keep is None:
                sums = (*sums, rule.matches(along, logits))
            else:
                sums = (*sums, rule.matches(along, logits, logit_classes=index, rows=keep > 0))
            if classes is None:
                return sums
            return (
                *sums,
                _cross_entropy_sum(xp.astype(logits, wide_float(xp)) * largest, y, classes),
            )

        return visit

    stats, extra = class_moments(
        features,
        labels,
        num_classes,
        dtype=dtype,
        gram=False,
        chunk_size=chunk_size,
        check_finite=check_finite,
        visitor=visitor,
        shift_tolerance=BASIS_TOLERANCE,
    )
    first: m.Classes = state["first"]
    # Same counts as the first view: reuse its host-side index, with the final
    # means (the shift plus the class sums of the deviations) and variances.
    view = dataclasses.replace(
        first,
        stats=stats,
        means=first.take(stats.scaled_means),
        variances=first.take(stats.scaled_variances()),
    )
    view = dataclasses.replace(view, global_mean=m.centre_of(view, global_mean))
    # Within scatter along the basis: sum of squares of the deviations from the
    # shift, less n_k (offset_k . v)^2 for the residual offsets of the shifts.
    basis_weights = state["weights"]
    residual = first.take(stats.sums) @ state["basis"]
    correction = xp.sum(residual * residual / view.counts[:, None], axis=0)
    scatter = xp.clip(xp.astype(extra[0], dtype) - correction, min=0)
    nc1 = m.nc1_from_scatter(scatter, basis_weights, xp.sum(view.counts))
    rounding = _projection_rounding(scatter, basis_weights, extra[1], view, dim)
    agreement = ce_sum = None
    if classifier is not None:
        agreement = xp.astype(extra[2], dtype) / xp.sum(view.counts)
        if state["reason"] is None:
            ce_sum = extra[3]
    scan = _Scan(
        stats, view, nc1, rounding, agreement, classifier, ce_sum, state["reason"], ood_mean
    )
    return scan


def _projection_rounding(
    scatter: Array, weights: Array, weighted: Array, view: m.Classes, dim: int
) -> Array:
    """An estimate of NC1's relative error from projecting the deviations in
    their own dtype (0-d float64; docs/accuracy.md).

    A row's projection on a direction is off by about ``e ||dev_i||`` with
    ``e = eps sqrt(d)``, so the scatter along direction r moves by about
    ``2 e sqrt(sum_i ||dev_i||^2 p_ir^2) + e^2 sum_i ||dev_i||^2``; `weighted`
    holds the sums ``sum_i ||dev_i||^2 p_ir^2``.
    """
    xp = view.xp
    f64 = wide_float(xp)
    e2 = float(xp.finfo(scatter.dtype).eps) ** 2 * dim
    total = xp.astype(xp.sum(view.counts * view.variances), f64)
    w = xp.astype(weights, f64)
    moved = xp.sum(w * (2 * xp.sqrt(e2 * weighted) + e2 * total))
    kept = xp.sum(w * xp.astype(scatter, f64))
    inf = xp.full_like(moved, math.inf)
    return xp.where(kept > 0, moved / xp.where(kept > 0, kept, 1.0), xp.where(moved > 0, inf, 0.0))


def _objective_reason(
    classifier: Array | None,
    bias: Array | None,
    context: Mapping[str, Any] | None,
    wanted: bool,
) -> str | None:
    """Why the in-memory pass cannot measure the UFM+ objective (None if it can)."""
    if not wanted or context is None:
        return "not measured"
    if classifier is None:
        return "the cross-entropy needs a classifier: pass classifier= or objective="
    if bias is not None:
        return (
            "the optimum is bias-free, and the objective of a biased classifier needs its "
            "bias decay: pass objective="
        )
    return None


def _cross_entropy_sum(logits: Array, labels: Array, classes: Array) -> Array:
    """``sum_i [logsumexp(z_i) - z_{i, y_i}]`` of float64 logits (0-d)."""
    xp = namespace(logits=logits)
    top = xp.max(logits, axis=1)
    lse = top + xp.log(xp.sum(xp.exp(logits - top[:, None]), axis=1))
    true = xp.sum(xp.where(labels[:, None] == classes[None, :], logits, 0.0), axis=1)
    return xp.sum(lse - true)


def _theory_values(
    stats: ClassStats,
    view: m.Classes,
    classifier: Array | None,
    theory: UFMOptimum,
    context: Mapping[str, Any],
    values: dict[str, Array],
    vectors: dict[str, Array],
    unavailable: dict[str, str],
    bounds: m.CountFilter,
) -> None:
    """Add the theory-based metrics to `values` (scalars) and `vectors` (per class).

    They are computed from the class means in units of the statistics' scale
    (so no square overflows); norms and margins, which carry the features'
    units, are multiplied back by the scale in float64.
    """
    names = (
        "gof_error",
        "classifier_gram_error",
        "logit_structure_error",
        "optimum_frame_distance",
        *_THEORY_PER_CLASS,
    )
    if view.filtered:
        for name in names:
            unavailable[name] = (
                f"the theory covers every class, and {bounds.describe()} left some out"
            )
        return
    if view.excluded:
        for name in names:
            unavailable[name] = "the theory needs every class to have samples"
        return
    xp = view.xp
    scale = xp.astype(stats.unit_scale, wide_float(xp))
    means = stats.scaled_means
    values["gof_error"] = tm.gof_error(means, theory, check_finite=False)
    norms = tm.norm_comparison(means, theory, check_finite=False)
    vectors["feature_norms_measured"] = xp.astype(norms.measured, wide_float(xp)) * scale
    vectors["feature_norms_predicted"] = norms.predicted
    alive = sum(context["alive"])
    if alive == 0:
        unavailable["optimum_frame_distance"] = (
            "the optimum collapses every class: its frame has no non-zero row to fit"
        )
    elif stats.dim >= alive:
        frame = m.nearest_orthogonal_frame_of(view, np.asarray(context["feature_norms"]))
        values["optimum_frame_distance"] = frame.relative_distance
    else:
        unavailable["optimum_frame_distance"] = (
            f"the optimum's frame has {alive} non-zero rows, more than dim = {stats.dim}"
        )
    if classifier is None:
        for name in (
            "classifier_gram_error",
            "logit_structure_error",
            "margins_measured",
            "margins_predicted",
        ):
            unavailable[name] = "no classifier given"
        return
    means = xp.astype(means, classifier.dtype)
    values["classifier_gram_error"] = tm.classifier_gram_error(
        classifier, theory, check_finite=False
    )
    values["logit_structure_error"] = tm.logit_structure_error(
        classifier, means, theory, check_finite=False
    )
    margins = tm.margin_comparison(classifier, means, theory, check_finite=False)
    vectors["margins_measured"] = xp.astype(margins.measured, wide_float(xp)) * scale
    vectors["margins_predicted"] = margins.predicted


#: The per-class quantities measured against the optimum.
_THEORY_PER_CLASS = (
    "margins_measured",
    "margins_predicted",
    "feature_norms_measured",
    "feature_norms_predicted",
)


# ----------------------------------------------------------------------------- theory
#: The metrics' values at the optimum are evaluated (from its K class means) up
#: to this many classes; above, the pair metrics' K x K work is left out.
TARGET_CLASSES = 2048


def theory_context(optimum: UFMOptimum, *, global_mean: str = "samples") -> dict[str, Any]:
    """The optimum's numbers a report keeps, JSON-ready.

    Computed on the host in float64 from the optimum's arrays (one read for
    its counts, one for its values), whatever its backend.

    Parameters
    ----------
    optimum : UFMOptimum
        From `ncgeom.theory.ufm_relu_optimum`, any backend.
    global_mean : {"samples", "classes"}
        Centre used for the metrics evaluated at the optimum (match the report's).

    Returns
    -------
    dict
        ``lambda_w``, ``lambda_h``, ``counts``, ``num_samples``,
        ``collapse_count`` (n_crit), ``alive`` and ``feature_norms`` (per
        class), ``objective`` (f*), ``targets`` (each metric's value at the optimum, or None) and
        ``target_reasons`` (why one is None).

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> context = theory_context(ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2))
    >>> context["alive"], round(context["collapse_count"], 3)
    ([True, True, True, False], 1.555)
    >>> context["targets"]["nc1"], round(context["targets"]["etf_error"], 3)
    (0.0, 0.768)
    """
    check_instance(
        optimum,
        UFMOptimum,
        "theory",
        what="UFMOptimum (ncgeom.theory.ufm_relu_optimum)",
        advice="for explicit margins use ncgeom.theory_metrics",
    )
    check_choice(global_mean, "global_mean", m.GLOBAL_MEANS)
    host = _on_host(optimum)
    counts = [int(n) for n in host.counts]
    context: dict[str, Any] = {
        "lambda_w": float(host.lambda_w),
        "lambda_h": float(host.lambda_h),
        "counts": counts,
        "num_samples": sum(counts),
        "collapse_count": float(host.collapse_count),
        "alive": [bool(a) for a in host.alive],
        "objective": float(host.objective),
        "feature_norms": [float(v) for v in host.feature_norms],
    }
    context["targets"], context["target_reasons"] = _targets_at(host, global_mean)
    return context


def _on_host(optimum: UFMOptimum) -> UFMOptimum:
    """The same optimum with NumPy float64 arrays (two host reads)."""
    xp = optimum.xp
    fields = ("margins", "feature_norms", "classifier_norms", "cosines")
    values = to_host(
        xp.concat(
            [xp.astype(getattr(optimum, name), wide_float(xp)) for name in fields]
            + [xp.reshape(xp.astype(optimum.objective, wide_float(xp)), (1,))]
            + [xp.astype(optimum.alive, wide_float(xp))]
        )
    )
    k = optimum.num_classes
    rows = np.asarray(values, dtype=np.float64)
    arrays = {name: rows[i * k : (i + 1) * k] for i, name in enumerate(fields)}
    # The cosines are NaN for collapsed classes (h_k = 0): undefined, not wrong.
    checked = {
        **{name: arrays[name] for name in fields[:-1]},
        "objective": rows[4 * k : 4 * k + 1],
    }
    for name, value in checked.items():
        if not np.all(np.isfinite(value)):
            msg = (
                f"`theory` must hold finite values; its `{name}` holds NaN or Inf "
                "(build it with ncgeom.ufm_relu_optimum)"
            )
            raise ValueError(msg)
    return dataclasses.replace(
        optimum,
        counts=np.asarray(to_host(optimum.counts), dtype=np.int64),
        objective=rows[len(fields) * k],
        alive=rows[len(fields) * k + 1 :] > 0,
        **arrays,
    )


def _targets_at(
    optimum: UFMOptimum, global_mean: str
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Each metric's value at the (host) optimum, from its K class means
    (features collapse there: no sample-level work), and why one is None."""
    targets: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    k = optimum.num_classes
    values: dict[str, float | None] = {}
    why: dict[str, str] = {}
    if k <= TARGET_CLASSES:
        values, why = _metrics_at(optimum, global_mean)
    for name, metric in METRICS.items():
        if metric.expect == "none":
            targets[name] = None
            reasons[name] = NO_OPTIMUM_VALUE
            continue
        if metric.expect != "value":
            targets[name] = 0.0 if metric.expect == "zero" else 1.0
            continue
        value = values.get(name)
        if k > TARGET_CLASSES:
            targets[name] = None
            reasons[name] = f"not evaluated at the optimum above {TARGET_CLASSES} classes ({k})"
        elif value is None or not math.isfinite(value):
            targets[name] = None
            reasons[name] = "undefined at the optimum: " + why.get(name, "not finite")
        else:
            targets[name] = float(value)
    return targets, reasons


def _metrics_at(optimum: UFMOptimum, global_mean: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The report's metrics at the optimum, and why one is undefined there."""
    means = np.asarray(optimum.means(), dtype=np.float64)
    classifier = np.asarray(optimum.classifier(), dtype=np.float64)
    counts = np.asarray(optimum.counts, dtype=np.int64)
    k = counts.shape[0]
    stats = ClassStats(
        counts=counts,
        shift=means,
        sums=np.zeros_like(means),
        sqnorms=np.zeros(k),
        gram=None,
        scale=np.ones(()),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = nc_report(stats, classifier, global_mean=global_mean)
    values = {name: getattr(report, name) for name in METRICS}
    why = dict(report.unavailable)
    flags = {
        name
        for name, raised in m.populated(stats, global_mean, warn=False).flags().items()
        if bool(raised)
    }
    if flags & {"means", "between"}:
        values["ncc_agreement"] = None
        why["ncc_agreement"] = m.DEGENERATE_REASONS["means" if "means" in flags else "between"]
    else:
        values["ncc_agreement"] = _agreement_at(stats, classifier, global_mean)
    return values, why


def _agreement_at(stats: ClassStats, classifier: np.ndarray, global_mean: str) -> float:
    """The NCC agreement of collapsed features (every sample at its class mean):
    each class's mean is classified once and counts ``n_k`` times."""
    view = m.populated(stats, global_mean, warn=False)
    counts = np.asarray(stats.counts)
    rule = m.NearestCentre.of(view.centred, np.arange(counts.shape[0]))
    nearest = np.asarray(rule.nearest(view.centred @ rule.basis))
    logits = view.means @ (classifier / np.max(np.abs(classifier))).T
    agree = np.argmax(logits, axis=1) == nearest
    return float(counts[agree].sum() / counts.sum())
