"""NaN, +Inf and -Inf in every array (and number) argument of every entry point.

`METRIC_ROWS` covers the pair and variant metrics, the nearest ideal
geometries (`source`, `lengths`) and NC5 (`ood_mean`) on every path: the
metric, `nc_report`, the torch tracker and callback, the JAX plugin.

Each row names the argument, the entry point, and how to call it with one bad
value in that argument; every row gets a ValueError naming the argument
(`Raises(ValueError, names)`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from ncgeom import (
    ClassStats,
    classifier_gram_error,
    collapse_threshold,
    collapsed_gradients,
    collapsed_objective,
    critical_regularization,
    gof_error,
    logit_structure_error,
    margin_comparison,
    merge_stats,
    metrics,
    min_samples_to_survive,
    nc_report,
    norm_comparison,
    solve_ufm,
    stats_from_dask,
    ufm_gradients,
    ufm_objective,
    ufm_relu_optimum,
)

from . import Probe, Raises
from .data import (
    BIAS,
    CLASSIFIER,
    COUNTS,
    FEATURES,
    LABELS,
    LAMBDA_H,
    LAMBDA_W,
    MEANS,
    D,
    K,
    evaluate_tracker,
    jax_numpy,
    numpy_stats,
    tt,
    with_value,
)

VALUES = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}
#: The optimum of the base counts, in the base dimension.
OPT = ufm_relu_optimum(COUNTS, LAMBDA_W, LAMBDA_H, dim=D)
X, Y, W, B, M = FEATURES, LABELS, CLASSIFIER, BIAS, MEANS


def _bad_vector(values: np.ndarray, v: float, index: int = 1) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).copy()
    out[index] = v
    return out


def _tracker(x: np.ndarray = X, **kwargs: Any) -> Any:
    from ncgeom_torch import NCTracker

    tracker = NCTracker(K, **kwargs)
    tracker.observe(tt(x), tt(Y))
    return tracker


def _callback(**kwargs: Any) -> Any:
    from ncgeom_torch.lightning import NeuralCollapseCallback

    return NeuralCollapseCallback(K, **kwargs)


def _dask(x: np.ndarray) -> Any:
    return stats_from_dask(da.from_array(x, chunks=(10, -1)), Y, K, scheduler="synchronous")


def _unchecked_stats(v: float) -> ClassStats:
    """Statistics built with check_finite=False from features holding `v`."""
    return ClassStats.from_features(with_value(X, v), Y, K, check_finite=False)


def _bad_optimum(field: str, v: float) -> Any:
    values = np.asarray(getattr(OPT, field), dtype=np.float64).copy()
    values[1] = v
    return dataclasses.replace(OPT, **{field: values})


def _jax_update(v: float) -> Any:
    from ncgeom_jax import init_stats, update_stats

    jnp = jax_numpy()
    return update_stats(init_stats(K, D), jnp.asarray(with_value(X, v)), jnp.asarray(Y))


Row = tuple[str, str, Callable[[float], Any]]
#: (argument, entry point, call with the bad value v)
ROWS: list[Row] = [
    # features
    ("features", "from_features", lambda v: ClassStats.from_features(with_value(X, v), Y, K)),
    (
        "features",
        "from_features-float32",
        lambda v: ClassStats.from_features(with_value(X.astype(np.float32), v), Y, K),
    ),
    ("features", "update", lambda v: ClassStats.empty(K, D).update(with_value(X, v), Y)),
    ("features", "nc_report", lambda v: nc_report((with_value(X, v), Y))),
    (
        "features",
        "nc_report-check_finite=False",
        lambda v: nc_report((with_value(X, v), Y), check_finite=False),
    ),
    ("features", "nc_report-classifier", lambda v: nc_report((with_value(X, v), Y), W)),
    ("features", "ncc_agreement", lambda v: metrics.ncc_agreement(with_value(X, v), W, M)),
    (
        "features",
        "ufm_objective",
        lambda v: ufm_objective(W, with_value(X, v), Y, LAMBDA_W, LAMBDA_H),
    ),
    (
        "features",
        "ufm_gradients",
        lambda v: ufm_gradients(W, with_value(X, v), Y, LAMBDA_W, LAMBDA_H),
    ),
    ("features", "stats_from_dask", lambda v: _dask(with_value(X, v))),
    (
        "features",
        "torch-from_features",
        lambda v: ClassStats.from_features(tt(with_value(X, v)), tt(Y), K),
    ),
    ("features", "NCTracker.observe", lambda v: _tracker(with_value(X, v))),
    # classifier
    ("classifier", "nc_report", lambda v: nc_report((X, Y), with_value(W, v, (1, 2)))),
    (
        "classifier",
        "nc_report-theory",
        lambda v: nc_report((X, Y), with_value(W, v, (1, 2)), theory=OPT),
    ),
    (
        "classifier",
        "nc_report-stats",
        lambda v: nc_report(numpy_stats(), with_value(W, v, (1, 2))),
    ),
    (
        "classifier",
        "nc_report-stats-theory",
        lambda v: nc_report(numpy_stats(), with_value(W, v, (1, 2)), theory=OPT),
    ),
    (
        "classifier",
        "self_duality_error",
        lambda v: metrics.self_duality_error(with_value(W, v, (1, 2)), numpy_stats()),
    ),
    (
        "classifier",
        "scaled_alignment_error",
        lambda v: metrics.scaled_alignment_error(with_value(W, v, (1, 2)), numpy_stats()),
    ),
    (
        "classifier",
        "ncc_agreement",
        lambda v: metrics.ncc_agreement(X, with_value(W, v, (1, 2)), M),
    ),
    (
        "classifier",
        "ufm_objective",
        lambda v: ufm_objective(with_value(W, v, (1, 2)), X, Y, LAMBDA_W, LAMBDA_H),
    ),
    (
        "classifier",
        "collapsed_objective",
        lambda v: collapsed_objective(with_value(W, v, (1, 2)), M, COUNTS, LAMBDA_W, LAMBDA_H),
    ),
    (
        "classifier",
        "collapsed_gradients",
        lambda v: collapsed_gradients(with_value(W, v, (1, 2)), M, COUNTS, LAMBDA_W, LAMBDA_H),
    ),
    (
        "classifier",
        "classifier_gram_error",
        lambda v: classifier_gram_error(with_value(W, v, (1, 2)), OPT),
    ),
    (
        "classifier",
        "logit_structure_error",
        lambda v: logit_structure_error(with_value(W, v, (1, 2)), M, OPT),
    ),
    (
        "classifier",
        "margin_comparison",
        lambda v: margin_comparison(with_value(W, v, (1, 2)), M, OPT),
    ),
    ("classifier", "NCTracker.report", lambda v: _tracker().report(tt(with_value(W, v, (1, 2))))),
    # bias
    ("bias", "nc_report", lambda v: nc_report((X, Y), W, _bad_vector(B, v))),
    ("bias", "nc_report-stats", lambda v: nc_report(numpy_stats(), W, _bad_vector(B, v))),
    ("bias", "ncc_agreement", lambda v: metrics.ncc_agreement(X, W, M, _bad_vector(B, v))),
    (
        "bias",
        "ufm_objective",
        lambda v: ufm_objective(W, X, Y, LAMBDA_W, LAMBDA_H, bias=_bad_vector(B, v)),
    ),
    (
        "bias",
        "ufm_gradients",
        lambda v: ufm_gradients(W, X, Y, LAMBDA_W, LAMBDA_H, bias=_bad_vector(B, v)),
    ),
    (
        "bias",
        "collapsed_objective",
        lambda v: collapsed_objective(W, M, COUNTS, LAMBDA_W, LAMBDA_H, bias=_bad_vector(B, v)),
    ),
    # means
    ("means", "ncc_agreement", lambda v: metrics.ncc_agreement(X, W, with_value(M, v, (1, 2)))),
    (
        "means",
        "collapsed_objective",
        lambda v: collapsed_objective(W, with_value(M, v, (1, 2)), COUNTS, LAMBDA_W, LAMBDA_H),
    ),
    ("means", "gof_error", lambda v: gof_error(with_value(M, v, (1, 2)), OPT)),
    ("means", "norm_comparison", lambda v: norm_comparison(with_value(M, v, (1, 2)), OPT)),
    ("means", "margin_comparison", lambda v: margin_comparison(W, with_value(M, v, (1, 2)), OPT)),
    (
        "means",
        "logit_structure_error",
        lambda v: logit_structure_error(W, with_value(M, v, (1, 2)), OPT),
    ),
    # counts
    (
        "counts",
        "ufm_relu_optimum",
        lambda v: ufm_relu_optimum(_bad_vector(COUNTS, v), LAMBDA_W, LAMBDA_H),
    ),
    (
        "counts",
        "collapse_threshold",
        lambda v: collapse_threshold(_bad_vector(COUNTS, v), LAMBDA_W, LAMBDA_H),
    ),
    (
        "counts",
        "critical_regularization",
        lambda v: critical_regularization(_bad_vector(COUNTS, v)),
    ),
    (
        "counts",
        "min_samples_to_survive",
        lambda v: min_samples_to_survive(_bad_vector(COUNTS, v), 0, LAMBDA_W, LAMBDA_H),
    ),
    (
        "counts",
        "solve_ufm",
        lambda v: solve_ufm(_bad_vector(COUNTS, v), LAMBDA_W, LAMBDA_H, K, restarts=1),
    ),
    (
        "counts",
        "collapsed_objective",
        lambda v: collapsed_objective(W, M, _bad_vector(COUNTS, v), LAMBDA_W, LAMBDA_H),
    ),
    ("counts", "gof_error", lambda v: gof_error(M, OPT.margins, counts=_bad_vector(COUNTS, v))),
    (
        "counts",
        "norm_comparison",
        lambda v: norm_comparison(M, OPT.margins, counts=_bad_vector(COUNTS, v), lambda_ratio=1.0),
    ),
    (
        "counts",
        "classifier_gram_error",
        lambda v: classifier_gram_error(W, OPT.margins, counts=_bad_vector(COUNTS, v)),
    ),
    (
        "counts",
        "NCTracker.report",
        lambda v: _tracker().report(
            lambda_w=LAMBDA_W, lambda_h=LAMBDA_H, counts=_bad_vector(COUNTS, v)
        ),
    ),
    (
        "counts",
        "NeuralCollapseCallback",
        lambda v: _callback(
            lambda_w=LAMBDA_W, lambda_h=LAMBDA_H, counts=_bad_vector(COUNTS, v).tolist()
        ),
    ),
    # weight decays and other numbers
    ("lambda_w", "ufm_relu_optimum", lambda v: ufm_relu_optimum(COUNTS, v, LAMBDA_H)),
    ("lambda_h", "ufm_relu_optimum", lambda v: ufm_relu_optimum(COUNTS, LAMBDA_W, v)),
    ("lambda_w", "collapse_threshold", lambda v: collapse_threshold(COUNTS, v, LAMBDA_H)),
    (
        "lambda_h",
        "min_samples_to_survive",
        lambda v: min_samples_to_survive(COUNTS, 0, LAMBDA_W, v),
    ),
    ("lambda_w", "solve_ufm", lambda v: solve_ufm(COUNTS, v, LAMBDA_H, K, restarts=1)),
    ("lambda_w", "ufm_objective", lambda v: ufm_objective(W, X, Y, v, LAMBDA_H)),
    ("lambda_h", "collapsed_objective", lambda v: collapsed_objective(W, M, COUNTS, LAMBDA_W, v)),
    (
        "lambda_b",
        "ufm_objective",
        lambda v: ufm_objective(W, X, Y, LAMBDA_W, LAMBDA_H, bias=B, lambda_b=v),
    ),
    (
        "logit_adjustment",
        "ufm_objective",
        lambda v: ufm_objective(W, X, Y, LAMBDA_W, LAMBDA_H, logit_adjustment=v),
    ),
    (
        "lambda_ratio",
        "norm_comparison",
        lambda v: norm_comparison(M, OPT.margins, counts=COUNTS, lambda_ratio=v),
    ),
    ("lambda_w", "NCTracker.report", lambda v: _tracker().report(lambda_w=v, lambda_h=LAMBDA_H)),
    ("lambda_w", "NeuralCollapseCallback", lambda v: _callback(lambda_w=v, lambda_h=LAMBDA_H)),
    # theory inputs: explicit margins, class weights, prior, an optimum holding NaN
    ("predicted", "gof_error", lambda v: gof_error(M, _bad_vector(OPT.margins, v), counts=COUNTS)),
    (
        "predicted",
        "classifier_gram_error",
        lambda v: classifier_gram_error(W, _bad_vector(OPT.margins, v), counts=COUNTS),
    ),
    (
        "predicted",
        "logit_structure_error",
        lambda v: logit_structure_error(W, M, _bad_vector(OPT.margins, v)),
    ),
    (
        "predicted",
        "margin_comparison",
        lambda v: margin_comparison(W, M, _bad_vector(OPT.margins, v)),
    ),
    (
        "predicted",
        "norm_comparison",
        lambda v: norm_comparison(M, _bad_vector(OPT.margins, v), counts=COUNTS, lambda_ratio=1.0),
    ),
    (
        "class_weights",
        "ufm_objective",
        lambda v: ufm_objective(
            W, X, Y, LAMBDA_W, LAMBDA_H, class_weights=_bad_vector(np.ones(K), v)
        ),
    ),
    (
        "class_weights",
        "solve_ufm",
        lambda v: solve_ufm(
            COUNTS, LAMBDA_W, LAMBDA_H, K, restarts=1, class_weights=_bad_vector(np.ones(K), v)
        ),
    ),
    (
        "prior",
        "ufm_objective",
        lambda v: ufm_objective(
            W,
            X,
            Y,
            LAMBDA_W,
            LAMBDA_H,
            logit_adjustment=1.0,
            prior=_bad_vector(np.full(K, 1 / K), v),
        ),
    ),
    (
        "theory",
        "nc_report-optimum-margins",
        lambda v: nc_report((X, Y), W, theory=_bad_optimum("margins", v)),
    ),
    (
        "theory",
        "nc_report-optimum-norms",
        lambda v: nc_report((X, Y), W, theory=_bad_optimum("feature_norms", v)),
    ),
    (
        "predicted",
        "margin_comparison-optimum",
        lambda v: margin_comparison(W, M, _bad_optimum("margins", v)),
    ),
    # statistics built with check_finite=False
    ("stats", "nc1", lambda v: metrics.nc1(_unchecked_stats(v))),
    ("stats", "cdnv", lambda v: metrics.cdnv(_unchecked_stats(v))),
    ("stats", "etf_error", lambda v: metrics.etf_error(_unchecked_stats(v))),
    ("stats", "equinorm", lambda v: metrics.equinorm(_unchecked_stats(v))),
    ("stats", "equiangularity", lambda v: metrics.equiangularity(_unchecked_stats(v))),
    ("stats", "orthogonality_error", lambda v: metrics.orthogonality_error(_unchecked_stats(v))),
    ("stats", "self_duality_error", lambda v: metrics.self_duality_error(W, _unchecked_stats(v))),
    (
        "stats",
        "scaled_alignment_error",
        lambda v: metrics.scaled_alignment_error(W, _unchecked_stats(v)),
    ),
    ("stats", "nc_report", lambda v: nc_report(_unchecked_stats(v), W)),
    ("stats", "nc_report-theory", lambda v: nc_report(_unchecked_stats(v), W, theory=OPT)),
    (
        "stats",
        "merge_stats-nc_report",
        lambda v: nc_report(merge_stats(numpy_stats(), _unchecked_stats(v))),
    ),
    (
        "stats",
        "NCTracker-check_finite=False",
        lambda v: _tracker(with_value(X, v), check_finite=False).report(),
    ),
]

#: The metrics of statistics alone (`ncgeom.metrics`), by name.
STATS_METRICS = (
    "nc1_trace_ratio",
    "log_equinorm",
    "equiangularity_std",
    "interference_mean",
    "interference_min",
    "interference_max",
    "interference_grid",
    "log_energy",
    "log_energy_variance",
    "riesz_log_energy",
    "riesz_log_variance",
    "nearest_simplex_etf",
    "nearest_orthogonal_frame",
)
#: The metrics of a classifier against statistics, by name.
CLASSIFIER_METRICS = (
    "classifier_equiangularity",
    "classifier_etf_error",
    "classifier_equinorm",
    "uniform_duality",
    "uniform_duality_variance",
    "distance_norms",
)
#: Those that also take the classifier alone (every row).
CLASSIFIER_ALONE = ("classifier_equiangularity", "classifier_etf_error", "classifier_equinorm")
OOD = np.linspace(1.0, 2.0, D)


def _stats_metric(name: str) -> Callable[[float], Any]:
    return lambda v: getattr(metrics, name)(_unchecked_stats(v))


def _classifier_metric(name: str, stats: bool = True) -> Callable[[float], Any]:
    if stats:
        return lambda v: getattr(metrics, name)(with_value(W, v, (1, 2)), numpy_stats())
    return lambda v: getattr(metrics, name)(with_value(W, v, (1, 2)))


def _jax_nc_metrics(**kwargs: Any) -> Any:
    from ncgeom_jax import batch_stats, nc_metrics

    jnp = jax_numpy()
    stats = batch_stats(jnp.asarray(X), jnp.asarray(Y), K)
    return nc_metrics(stats, jnp.asarray(W), **kwargs)


#: Rows of the pair and variant metrics, the nearest geometries and NC5.
METRIC_ROWS: list[Row] = [
    *(("stats", name, _stats_metric(name)) for name in STATS_METRICS),
    ("stats", "cdnv-exponent=2", lambda v: metrics.cdnv(_unchecked_stats(v), exponent=2.0)),
    ("stats", "ood_deviation", lambda v: metrics.ood_deviation(_unchecked_stats(v), OOD)),
    ("stats", "bias_collapse", lambda v: metrics.bias_collapse(W, B, _unchecked_stats(v))),
    *(
        ("stats", name, lambda v, name=name: getattr(metrics, name)(W, _unchecked_stats(v)))
        for name in CLASSIFIER_METRICS
    ),
    ("stats", "nc_report-min_count", lambda v: nc_report(_unchecked_stats(v), W, min_count=2)),
    *(("classifier", name, _classifier_metric(name)) for name in CLASSIFIER_METRICS),
    *(
        ("classifier", f"{name}-alone", _classifier_metric(name, stats=False))
        for name in CLASSIFIER_ALONE
    ),
    (
        "classifier",
        "bias_collapse",
        lambda v: metrics.bias_collapse(with_value(W, v, (1, 2)), B, numpy_stats()),
    ),
    (
        "bias",
        "bias_collapse",
        lambda v: metrics.bias_collapse(W, _bad_vector(B, v), numpy_stats()),
    ),
    (
        "source",
        "nearest_simplex_etf",
        lambda v: metrics.nearest_simplex_etf(with_value(W, v, (1, 2))),
    ),
    (
        "source",
        "nearest_orthogonal_frame",
        lambda v: metrics.nearest_orthogonal_frame(with_value(W, v, (1, 2))),
    ),
    (
        "lengths",
        "nearest_orthogonal_frame",
        lambda v: metrics.nearest_orthogonal_frame(
            numpy_stats(), lengths=_bad_vector(np.ones(K), v)
        ),
    ),
    (
        "lengths",
        "nearest_orthogonal_frame-array",
        lambda v: metrics.nearest_orthogonal_frame(M, lengths=_bad_vector(np.ones(K), v)),
    ),
    (
        "ood_mean",
        "ood_deviation",
        lambda v: metrics.ood_deviation(numpy_stats(), _bad_vector(OOD, v)),
    ),
    (
        "ood_mean",
        "check_ood_mean",
        lambda v: metrics.check_ood_mean(_bad_vector(OOD, v), numpy_stats()),
    ),
    ("ood_mean", "nc_report", lambda v: nc_report((X, Y), W, ood_mean=_bad_vector(OOD, v))),
    (
        "ood_mean",
        "nc_report-stats",
        lambda v: nc_report(numpy_stats(), ood_mean=_bad_vector(OOD, v)),
    ),
    (
        "ood_mean",
        "NCTracker.report",
        lambda v: _tracker().report(tt(W), ood_mean=tt(_bad_vector(OOD, v))),
    ),
    ("ood_mean", "NCTracker.evaluate", lambda v: evaluate_tracker(tt(_bad_vector(OOD, v)))),
    (
        "ood_mean",
        "NeuralCollapseCallback",
        lambda v: _callback(ood_mean=tt(_bad_vector(OOD, v))),
    ),
]


#: The names a message may use for each argument (statistics: the `source` of
#: nc_report, or the features they were built from; an optimum: its field).
ALIASES = {
    "stats": ("stats", "source", "features"),
    "theory": ("theory", "theory.margins", "theory.feature_norms"),
    "predicted": ("predicted", "predicted.margins", "predicted.feature_norms"),
}

#: Sampled JAX rows (each JAX case compiles for seconds).
JAX_ROWS: list[Row] = [
    ("bias", "jax-nc_metrics", lambda v: _jax_nc_metrics(bias=jnp_bad(B, v))),
    ("ood_mean", "jax-nc_metrics", lambda v: _jax_nc_metrics(ood_mean=jnp_bad(OOD, v))),
    (
        "features",
        "jax-from_features",
        lambda v: ClassStats.from_features(
            jax_numpy().asarray(with_value(X, v)), jax_numpy().asarray(Y), K
        ),
    ),
    ("features", "jax-update_stats", _jax_update),
]


def jnp_bad(values: np.ndarray, v: float) -> Any:
    """`values` with entry 1 set to `v`, as a JAX array."""
    return jax_numpy().asarray(_bad_vector(values, v))


def probes() -> list[Probe]:
    out = []
    for argument, entry, call in ROWS + METRIC_ROWS:
        names = ALIASES.get(argument, (argument,))
        for label, value in VALUES.items():
            out.append(_probe(argument, entry, call, value, label, names))
    for argument, entry, call in JAX_ROWS:
        out.append(_probe(argument, entry, call, math.nan, "nan", (argument,)))
    return out + bias_without_classifier()


def _probe(
    argument: str,
    entry: str,
    call: Callable[[float], Any],
    value: float,
    label: str,
    names: tuple[str, ...],
) -> Probe:
    return Probe(
        f"nonfinite-{argument}-{entry}-{label}",
        lambda: call(value),
        Raises(ValueError, names),
    )


def bias_without_classifier() -> list[Probe]:
    """A bias is meaningless without a classifier: refused, naming `bias`."""
    kinds = (TypeError, ValueError)
    return [
        Probe(
            "bias-without-classifier-nc_report",
            lambda: nc_report((X, Y), None, B),
            Raises(kinds, ("bias",)),
        ),
        Probe(
            "bias-without-classifier-nc_report-stats",
            lambda: nc_report(numpy_stats(), None, B),
            Raises(kinds, ("bias",)),
        ),
    ]
