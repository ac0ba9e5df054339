"""`nc_report`: every neural-collapse metric the inputs allow, in one `NCReport`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from . import metrics as m
from . import theory_metrics as tm
from ._array import (
    accumulation_dtype,
    array_device,
    backend_name,
    gather_rows,
    namespace,
    segment_count,
    to_host,
)
from ._validate import check_batch, check_num_classes
from .stats import ClassStats, chunk_rows, class_means, shifted_moments
from .theory import UFMOptimum

__all__ = ["NCReport", "nc_report"]

Array = Any


@dataclass(frozen=True)
class NCReport:
    """Neural-collapse metrics of one set of features, as Python floats.

    A metric the inputs do not allow is None, and `unavailable` says why
    (e.g. no classifier was given). Definitions: `ncgeom.metrics`.
    """

    METRICS: ClassVar[tuple[str, ...]] = (
        "nc1",
        "cdnv",
        "within_variance",
        "etf_error",
        "equinorm",
        "equiangularity",
        "orthogonality_error",
        "self_duality_error",
        "scaled_alignment_error",
        "ncc_agreement",
        "gof_error",
        "classifier_gram_error",
        "logit_structure_error",
    )
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["counts"] = list(self.counts)
        out["excluded"] = [{"class": k, "reason": why} for k, why in self.excluded]
        out["unavailable"] = {name: why for name, why in self.unavailable}
        for name in self.PER_CLASS:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def __str__(self) -> str:
        head = (
            f"NCReport: {self.num_classes} classes, {self.num_samples} samples, dim {self.dim} "
            f"({self.backend}, {self.dtype}, global mean over {self.global_mean})"
        )
        lines = [head, f"  {'metric':<24} value"]
        why = dict(self.unavailable)
        for name in self.METRICS:
            value = getattr(self, name)
            shown = f"{value:.6g}" if value is not None else f"- ({why.get(name, 'n/a')})"
            lines.append(f"  {name:<24} {shown}")
        if self.feature_norms_measured is not None:
            lines.append(
                f"  {'class':>5} {'n_k':>8} {'norm':>10} {'predicted':>10}"
                f" {'margin':>10} {'predicted':>10}"
            )
            margins = self.margins_measured or (None,) * self.num_classes
            for k in range(self.num_classes):
                margin = "-" if margins[k] is None else f"{margins[k]:.4g}"
                predicted = "-" if margins[k] is None else f"{self.margins_predicted[k]:.4g}"
                lines.append(
                    f"  {k:>5} {self.counts[k]:>8} {self.feature_norms_measured[k]:>10.4g}"
                    f" {self.feature_norms_predicted[k]:>10.4g} {margin:>10} {predicted:>10}"
                )
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
        makes two chunked passes: class means, then deviations projected on
        the span of the centred means, so it never forms a (d, d) matrix; it
        also gives the NCC agreement.
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
        ``max(labels) + 1``.
    global_mean : {"samples", "classes"}
        Centre of the between-class spread (see `ncgeom.metrics.nc1`).
    check_finite : bool
        Scan in-memory features for NaN/Inf.
    chunk_size : int, optional
        Rows per chunk of the in-memory passes.

    Returns
    -------
    NCReport

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
    values: dict[str, Array] = {}
    unavailable: dict[str, str] = {}
    if isinstance(source, ClassStats):
        stats = source
        if classifier is not None:
            classifier = m.check_classifier(classifier, stats)
        view = m.populated(stats, global_mean)
        if stats.gram is not None:
            values["nc1"] = m._nc1(view)
        else:
            unavailable["nc1"] = "statistics without Gram"
        unavailable["ncc_agreement"] = "needs features, not statistics"
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        stats, view, values["nc1"], agreement = _scan_features(
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
    values["cdnv"] = m._cdnv(view)
    variances = view.take(stats.class_variances)
    values["within_variance"] = xp.sum(view.counts * variances) / xp.sum(view.counts)
    values["etf_error"] = m._etf_error(view)
    values["equinorm"] = m._equinorm(view)
    values["equiangularity"] = m._equiangularity(view)
    values["orthogonality_error"] = m._orthogonality_error(view)
    if classifier is not None:
        values["self_duality_error"] = m._self_duality_error(classifier, view)
        values["scaled_alignment_error"] = m._scaled_alignment_error(classifier, view)
    else:
        for name in ("self_duality_error", "scaled_alignment_error", "ncc_agreement"):
            unavailable.setdefault(name, "no classifier given")
    if theory is None:
        for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
            unavailable[name] = "no theory given"

    vectors: dict[str, Array] = {}
    if theory is not None:
        _theory_values(stats, view, classifier, theory, values, vectors, unavailable)

    names, vector_names = list(values), list(vectors)
    parts = [xp.stack([xp.astype(values[k], xp.float64) for k in names])]
    parts += [xp.astype(vectors[k], xp.float64) for k in vector_names]
    host = to_host(xp.concat(parts))  # the one device-to-host transfer
    floats: dict[str, Any] = {k: float(v) for k, v in zip(names, host, strict=False)}
    offset = len(names)
    for name in vector_names:
        floats[name] = tuple(float(v) for v in host[offset : offset + stats.num_classes])
        offset += stats.num_classes
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


def _scan_features(
    features: Array,
    labels: Array,
    classifier: Array | None,
    bias: Array | None,
    num_classes: int | None,
    global_mean: str,
    check_finite: bool,
    chunk_size: int | None,
) -> tuple[ClassStats, m.Classes, Array, Array | None]:
    """Two passes over in-memory features: statistics, NC1 and NCC agreement."""
    xp = namespace(features=features, labels=labels, classifier=classifier, bias=bias)
    if num_classes is None:
        if classifier is not None:
            num_classes = int(classifier.shape[0])
        elif labels.ndim == 1 and labels.shape[0] > 0:
            num_classes = int(to_host(xp.max(labels))) + 1
        else:
            num_classes = 0
    num_classes = check_num_classes(num_classes)
    check_batch(features, labels, num_classes, xp, check_finite=False)
    dtype = accumulation_dtype(xp, features.dtype)
    num, dim = features.shape
    rows = chunk_rows(num, dim, dtype, xp, chunk_size, array_device(features))

    counts = segment_count(labels, num_classes, xp)
    shift = class_means(features, labels, counts, dtype, xp, rows)
    # NaN and Inf reach the class means, so the means (K numbers) stand in for a
    # scan of every feature; the scan runs only to locate bad rows (or to clear
    # a mean that overflowed from finite values).
    if check_finite and not bool(to_host(xp.all(xp.isfinite(shift)))):
        check_batch(features, labels, num_classes, xp, check_finite=True)
    zeros = xp.zeros_like(shift)
    first = m.populated(
        ClassStats(counts, shift, zeros, zeros[:, 0], None), global_mean, warn=True
    )
    if classifier is not None:
        classifier = m.check_classifier(classifier, first.stats)
        if bias is not None and tuple(bias.shape) != (num_classes,):
            msg = f"`bias` must have shape ({num_classes},); got {tuple(bias.shape)}"
            raise ValueError(msg)
    basis, weights = m.between_basis(first.centred, xp)
    shift_along = shift @ basis  # (K, r)
    centred_along = first.centred @ basis  # (K', r)
    sq_means = xp.vecdot(first.means, first.means)
    device = array_device(features)
    # Positions among the populated classes -> class ids (built on the device
    # when every class is populated: no upload).
    if first.excluded:
        index = xp.asarray(first.index, dtype=xp.int64, device=device)
    else:
        index = xp.arange(num_classes, dtype=xp.int64, device=device)

    def visit(x: Array, dev: Array, y: Array) -> tuple[Array, ...]:
        along = dev @ basis
        out = (xp.sum(along * along, axis=0),)
        if classifier is None:
            return out
        # ||x - mu_k||^2 = ||mu_k||^2 - 2 x.mu_G - 2 (xV).(mu_k - mu_G)V + ||x||^2:
        # the centred means lie in span(V), so NCC needs only the projection.
        scores = sq_means - 2 * ((along + gather_rows(shift_along, y, xp)) @ centred_along.T)
        nearest = gather_rows(index, xp.argmin(scores, axis=1), xp)
        logits = xp.astype(x, dtype, copy=False) @ classifier.T
        if bias is not None:
            logits = logits + xp.astype(bias, dtype)
        agree = xp.argmax(logits, axis=1) == nearest
        return (*out, xp.sum(xp.astype(agree, xp.int64)))

    # The shift is the class mean itself, so the class sums of the deviations
    # are rounding errors: skip them and take the shift as the mean.
    _, sqnorms, _, extra = shifted_moments(
        features, labels, shift, xp, rows, gram=False, class_sums=False, visit=visit
    )
    stats = ClassStats(counts, shift, zeros, sqnorms, None)
    # Same counts and shift as the first view, and zero offsets: reuse it.
    view = dataclasses.replace(first, stats=stats)
    nc1 = m.nc1_from_scatter(extra[0], weights, xp.sum(view.counts))
    agreement = None
    if classifier is not None:
        agreement = xp.astype(extra[1], dtype) / num
    return stats, view, nc1, agreement


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
    if not isinstance(theory, UFMOptimum):
        msg = (
            "`theory` must be a UFMOptimum (ncgeom.theory.ufm_relu_optimum); "
            f"got {type(theory).__name__}; for explicit margins use ncgeom.theory_metrics"
        )
        raise TypeError(msg)
    if theory.num_classes != stats.num_classes:
        msg = (
            f"`theory` has {theory.num_classes} classes and the features "
            f"{stats.num_classes}; both must describe the same classes"
        )
        raise ValueError(msg)
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
