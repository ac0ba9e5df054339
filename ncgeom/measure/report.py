"""`nc_report`: every neural-collapse metric the inputs allow, in one `NCReport`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from .._lib.backend import (
    accumulation_dtype,
    backend_name,
    detach,
    gather_rows,
    namespace,
    to_host,
)
from .._lib.validate import (
    check_bias_shape,
    check_choice,
    check_class_count,
    check_classifier,
    check_features,
    check_instance,
    check_labels,
    check_num_classes,
    check_stats_classifier,
    check_stream_batch,
)
from ..theory import comparison as tm
from ..theory.optimum import UFMOptimum
from . import metrics as m
from .stats import ClassStats, Visit, class_moments
from .vocabulary import METRIC_NAMES

if TYPE_CHECKING:
    from .verdict import Verdict

__all__ = ["NCReport", "nc_report"]

Array = Any


@dataclass(frozen=True)
class NCReport:
    """Neural-collapse metrics of one set of features, as Python floats.

    A metric the inputs do not allow is None, and `unavailable` says why
    (e.g. no classifier was given). Definitions: `ncgeom.metrics`; names and
    symbols: `ncgeom.vocabulary`. The text (``str(report)``) and `to_dict`
    lead with a `ncgeom.verdict.Verdict`: the objective's gap to the optimum,
    which classes collapse, and each metric against its value at the optimum;
    `with_theory` adds what the verdict needs from the predicted optimum.
    """

    METRICS: ClassVar[tuple[str, ...]] = METRIC_NAMES
    PER_CLASS: ClassVar[tuple[str, ...]] = (
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
    cdnv: float | None = None
    within_variance: float | None = None
    etf_error: float | None = None
    equinorm: float | None = None
    equiangularity: float | None = None
    orthogonality_error: float | None = None
    self_duality_error: float | None = None
    scaled_alignment_error: float | None = None
    ncc_agreement: float | None = None
    gof_error: float | None = None
    classifier_gram_error: float | None = None
    logit_structure_error: float | None = None
    margins_measured: tuple[float, ...] | None = None
    margins_predicted: tuple[float, ...] | None = None
    feature_norms_measured: tuple[float, ...] | None = None
    feature_norms_predicted: tuple[float, ...] | None = None
    unavailable: tuple[tuple[str, str], ...] = ()
    objective: float | None = None
    theory: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    def with_theory(
        self, optimum: UFMOptimum | None, *, objective: float | None = None
    ) -> NCReport:
        """This report with the optimum's numbers (`ncgeom.verdict.theory_context`)
        and the measured UFM+ objective, for the verdict.

        Parameters
        ----------
        optimum : UFMOptimum or None
            The predicted optimum for the training counts and lambdas; None
            keeps the report's current theory context.
        objective : float, optional
            The UFM+ objective measured at the same point (e.g. the training
            loss with the regulariser).

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import nc_report
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
        >>> y = np.repeat(np.arange(4), [30, 20, 3, 1])
        >>> report = nc_report((opt.means()[y], y), opt.classifier(), theory=opt)
        >>> report = report.with_theory(opt, objective=float(opt.objective))
        >>> report.to_dict()["verdict"]["gap"], report.to_dict()["verdict"]["predicted_collapsed"]
        (0.0, [3])
        """
        from .verdict import theory_context

        context = self.theory
        if optimum is not None:
            context = theory_context(optimum, global_mean=self.global_mean)
        value = self.objective if objective is None else float(objective)
        return dataclasses.replace(self, theory=context, objective=value)

    def verdict(self) -> Verdict:
        """The `ncgeom.verdict.Verdict` of this report."""
        from .verdict import Verdict

        return Verdict.of(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists), with the verdict."""
        out = dataclasses.asdict(self)
        out["counts"] = list(self.counts)
        out["excluded"] = [{"class": k, "reason": why} for k, why in self.excluded]
        out["unavailable"] = {name: why for name, why in self.unavailable}
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
    num_classes: int | None = None,
    global_mean: str = "samples",
    check_finite: bool = True,
    chunk_size: int | None = None,
) -> NCReport:
    """Every metric of `ncgeom.metrics` that the inputs allow.

    Parameters
    ----------
    source : ClassStats or (features, labels)
        Statistics (streamed or built with `ClassStats.from_features`), or
        in-memory features (N, d) and integer labels (N,). The in-memory path
        makes the two chunked passes of `ncgeom.stats.class_moments` (class
        means, then deviations, projected on the span of the centred means),
        so it never forms a (d, d) matrix; it also gives the NCC agreement.
    classifier : array (K, d), optional
        Last-layer weights W (rows are classes); enables the classifier
        metrics.
    bias : array (K,), optional
        Last-layer bias, used by the NCC agreement.
    theory : UFMOptimum, optional
        The predicted optimum (`ncgeom.theory.ufm_relu_optimum`) for the same
        K; adds the theory-based metrics of `ncgeom.theory_metrics`
        (``gof_error``, and with a classifier ``classifier_gram_error``,
        ``logit_structure_error``) and per-class measured-vs-predicted
        feature norms and margins (``z_kk - max_{j != k} z_kj``).
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
    """
    check_choice(global_mean, "global_mean", m.GLOBAL_MEANS)
    values: dict[str, Array] = {}
    unavailable: dict[str, str] = {}
    if isinstance(source, ClassStats):
        stats = source
        if classifier is not None:
            classifier = check_stats_classifier(classifier, stats)
        view = m.populated(stats, global_mean)
        if stats.gram is not None:
            values["nc1"] = m.nc1_of(view)
        else:
            unavailable["nc1"] = "statistics without Gram"
        unavailable["ncc_agreement"] = "needs features, not statistics"
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        stats, view, values["nc1"], agreement, classifier = _scan_features(
            *source, classifier, bias, num_classes, global_mean, check_finite, chunk_size
        )
        if agreement is not None:
            values["ncc_agreement"] = agreement
    else:
        msg = (
            "`source` must be a ClassStats or a (features, labels) pair; "
            f"got {type(source).__name__}"
        )
        raise TypeError(msg)

    xp = view.xp
    pairs, flags = m.pair_metrics(view)
    flags.update(view.flags())
    values.update(pairs)
    # In float64: the variance in the features' units may leave float32's range.
    scale = xp.astype(stats.unit_scale, xp.float64)
    spread = xp.sum(view.counts * view.variances) / xp.sum(view.counts)
    values["within_variance"] = xp.astype(spread, xp.float64) * scale * scale
    values["equinorm"] = m.equinorm_of(view)
    if classifier is not None:
        values["self_duality_error"] = m.self_duality_error_of(classifier, view)
        values["scaled_alignment_error"] = m.scaled_alignment_error_of(classifier, view)
    else:
        for name in ("self_duality_error", "scaled_alignment_error", "ncc_agreement"):
            unavailable.setdefault(name, "no classifier given")
    if theory is None:
        for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
            unavailable[name] = "no theory given"

    vectors: dict[str, Array] = {}
    if theory is not None:
        _theory_values(stats, view, classifier, theory, values, vectors, unavailable)

    names, vector_names, flag_names = list(values), list(vectors), list(flags)
    parts = [xp.stack([xp.astype(values[k], xp.float64) for k in names])]
    parts.append(xp.stack([xp.astype(flags[k], xp.float64) for k in flag_names]))
    parts += [xp.astype(vectors[k], xp.float64) for k in vector_names]
    host = to_host(xp.concat(parts))  # the one device-to-host transfer
    floats: dict[str, Any] = {k: float(v) for k, v in zip(names, host, strict=False)}
    start = len(names)
    raised = {k for k, v in zip(flag_names, host[start:], strict=False) if v}
    start += len(flag_names)
    for name in vector_names:
        floats[name] = tuple(float(v) for v in host[start : start + stats.num_classes])
        start += stats.num_classes
    _mark_degenerate(floats, unavailable, raised)
    return NCReport(
        num_classes=stats.num_classes,
        num_samples=sum(view.host_counts),
        dim=stats.dim,
        counts=view.host_counts,
        excluded=tuple((k, "no samples") for k in view.excluded),
        global_mean=global_mean,
        backend=backend_name(xp),
        dtype=str(stats.dtype).rsplit(".", maxsplit=1)[-1],
        unavailable=tuple(unavailable.items()),
        **floats,
    )


def _mark_degenerate(floats: dict[str, Any], unavailable: dict[str, str], raised: set) -> None:
    """Metrics that degenerate geometry leaves undefined become NaN with a reason;
    one warning names them."""
    hit: dict[str, list[str]] = {}
    for name, needs in m.DEGENERATE_METRICS.items():
        reasons = [m.DEGENERATE_REASONS[flag] for flag in needs if flag in raised]
        if reasons and name in floats:
            floats[name] = float("nan")
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


def _scan_features(
    features: Array,
    labels: Array,
    classifier: Array | None,
    bias: Array | None,
    num_classes: int | None,
    global_mean: str,
    check_finite: bool,
    chunk_size: int | None,
) -> tuple[ClassStats, m.Classes, Array, Array | None, Array | None]:
    """The engine's two passes over in-memory features, plus NC1 along the span
    of the centred means and the NCC agreement from the same chunks."""
    xp = namespace(features=features, labels=labels, classifier=classifier, bias=bias)
    check_features(features, xp)
    check_labels(labels, features.shape[0], xp)
    if features.shape[1] == 0:
        msg = f"`features` must have at least one column; got shape {tuple(features.shape)}"
        raise ValueError(msg)
    if classifier is not None and (
        classifier.ndim != 2 or classifier.shape[1] != features.shape[1]
    ):
        shape = tuple(classifier.shape)
        hint = (
            "; it looks transposed (rows must be classes)"
            if shape[:1] == features.shape[1:]
            else ""
        )
        msg = (
            f"`classifier` must have shape (num_classes, {features.shape[1]}) "
            f"(one row per class, as many columns as `features`); got {shape}{hint}"
        )
        raise ValueError(msg)
    num, dim = features.shape
    if num_classes is None:
        num_classes = _infer_num_classes(labels, classifier, num, xp)
    if num == 0:
        msg = "`features` must hold at least one sample; got 0 rows"
        raise ValueError(msg)
    num_classes = check_num_classes(num_classes)
    features, labels = check_stream_batch(features, labels, num_classes, xp, check_finite)
    dtype = accumulation_dtype(xp, features.dtype)
    state: dict[str, Any] = {}

    def visitor(counts: Array, means: Array) -> Visit:
        first = m.class_view(counts, means, None, global_mean, warn=True, what="features")
        if classifier is not None:
            state["classifier"] = check_classifier(classifier, (num_classes, dim), dtype, xp)
            if bias is not None:
                check_bias_shape(bias, num_classes)
        basis, weights = m.between_basis(first.centred, xp)
        # Positions among the populated classes -> class ids (built on the
        # device when every class is populated: no upload).
        if first.excluded:
            index = xp.asarray(first.index, dtype=xp.int64, device=first.device)
        else:
            index = xp.arange(num_classes, dtype=xp.int64, device=first.device)
        rule = m.NearestCentre.of(first.centred, index, basis)
        # Coordinates of (mean_y - g) along the basis, by class id.
        centred_along = (means - first.global_mean) @ basis
        state.update(first=first, weights=weights, basis=basis)
        weight = state.get("classifier")
        if weight is not None:
            weight = m.scale_free(weight, xp)  # argmax is scale-free; no logit overflows
        shift = None
        if bias is not None:
            largest = xp.max(xp.abs(state["classifier"]))
            shift = xp.astype(detach(bias), dtype) / xp.where(
                largest > 0, largest, xp.ones_like(largest)
            )

        def visit(x: Array, dev: Array, y: Array) -> tuple[Array, ...]:
            dev_along = dev @ basis
            # Squares summed in float64: one far sample (an outlier) would
            # otherwise make every other row's square round at its size.
            wide = xp.astype(dev_along, xp.float64)
            sums = (xp.sum(wide * wide, axis=0),)
            if weight is None:
                return sums
            logits = xp.astype(x, dtype, copy=False) @ weight.T
            if shift is not None:
                logits = logits + shift
            along = dev_along + gather_rows(centred_along, y, xp)
            return (*sums, rule.matches(along, logits))

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
    agreement = None
    if classifier is not None:
        agreement = xp.astype(extra[1], dtype) / num
    return stats, view, nc1, agreement, state.get("classifier")


def _theory_values(
    stats: ClassStats,
    view: m.Classes,
    classifier: Array | None,
    theory: UFMOptimum,
    values: dict[str, Array],
    vectors: dict[str, Array],
    unavailable: dict[str, str],
) -> None:
    """Add the theory-based metrics to `values` (scalars) and `vectors` (per class)."""
    check_instance(
        theory,
        UFMOptimum,
        "theory",
        what="UFMOptimum (ncgeom.theory.ufm_relu_optimum)",
        advice="for explicit margins use ncgeom.theory_metrics",
    )
    check_class_count(theory.num_classes, stats.num_classes, "theory", "the features have")
    names = ("gof_error", "classifier_gram_error", "logit_structure_error", *NCReport.PER_CLASS)
    if view.excluded:
        for name in names:
            unavailable[name] = "the theory needs every class to have samples"
        return
    means = stats.shift + stats.offsets
    values["gof_error"] = tm.gof_error(means, theory)
    norms = tm.norm_comparison(means, theory)
    vectors["feature_norms_measured"] = norms.measured
    vectors["feature_norms_predicted"] = norms.predicted
    if classifier is None:
        for name in (
            "classifier_gram_error",
            "logit_structure_error",
            "margins_measured",
            "margins_predicted",
        ):
            unavailable[name] = "no classifier given"
        return
    values["classifier_gram_error"] = tm.classifier_gram_error(classifier, theory)
    values["logit_structure_error"] = tm.logit_structure_error(classifier, means, theory)
    margins = tm.margin_comparison(classifier, means, theory)
    vectors["margins_measured"] = margins.measured
    vectors["margins_predicted"] = margins.predicted
