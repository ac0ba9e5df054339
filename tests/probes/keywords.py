"""Bad values of the keyword arguments of the pair and variant metrics, the
nearest ideal geometries, NC5 and the class filter.

Each row calls one entry point with one value of one argument and expects a
TypeError (wrong type) or ValueError (wrong value) whose one-line message
names the argument; values at the edge of what is allowed (the bounds of the
class filter, ``max_entries = K**2``, ``s = 0``, lengths given as lists or
integers) get the float64 formula's result instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ncgeom import ClassStats, metrics, nc_report

from . import Probe, Raises, Returns
from . import formulas as f
from .data import (
    BIAS,
    CLASSIFIER,
    FEATURES,
    LABELS,
    MEANS,
    D,
    K,
    jax_numpy,
    numpy_stats,
    tt,
)

X, Y, W, B, M = FEATURES, LABELS, CLASSIFIER, BIAS, MEANS
TYPE, VALUE, ERROR = (TypeError,), (ValueError,), (TypeError, ValueError)
OOD = np.linspace(1.0, 2.0, D)

#: (id, call, exception kinds, names the message may use)
Row = tuple[str, Callable[[], Any], tuple[type[Exception], ...], tuple[str, ...]]


def _rows(
    name: str,
    entry: str,
    call: Callable[[Any], Any],
    values: dict[str, tuple[Any, tuple[type[Exception], ...]]],
) -> list[Row]:
    """One row per bad value of argument `name` given to `call`."""
    return [
        (f"{name}-{label}-{entry}", lambda v=value: call(v), kinds, (name,))
        for label, (value, kinds) in values.items()
    ]


# ----------------------------------------------------------------------------- s, exponent
#: Non-finite numbers, and things that are not real numbers.
NOT_FINITE = {"nan": (math.nan, VALUE), "+inf": (math.inf, VALUE), "-inf": (-math.inf, VALUE)}
NOT_REAL = {
    "str": ("1", TYPE),
    "bool": (True, TYPE),
    "complex": (1 + 0j, TYPE),
    "array": (np.array([1.0, 2.0]), TYPE),
}
EXPONENTS = {
    **NOT_FINITE,
    **NOT_REAL,
    "None": (None, TYPE),
    "zero": (0.0, VALUE),
    "negative": (-1.0, VALUE),
}


def _riesz_rows() -> list[Row]:
    out = []
    for entry in ("riesz_log_energy", "riesz_log_variance"):
        metric = getattr(metrics, entry)
        out += _rows("s", entry, lambda s, m=metric: m(numpy_stats(), s=s), NOT_FINITE | NOT_REAL)
    return out


def _cdnv_rows() -> list[Row]:
    return _rows("exponent", "cdnv", lambda e: metrics.cdnv(numpy_stats(), exponent=e), EXPONENTS)


# ----------------------------------------------------------------------------- the grid
ENTRIES = {
    "zero": (0, VALUE),
    "negative": (-5, VALUE),
    "below-K**2": (K * K - 1, VALUE),
    "float": (2.5, TYPE),
    "nan": (math.nan, TYPE),
    "str": ("10", TYPE),
    "bool": (True, TYPE),
    "None": (None, TYPE),
}


def _grid_rows() -> list[Row]:
    grid = metrics.interference_grid
    rows = _rows(
        "max_entries",
        "interference_grid",
        lambda n: grid(numpy_stats(), max_entries=n),
        ENTRIES,
    )
    flags = {"str": ("yes", TYPE), "int": (1, TYPE), "None": (None, TYPE)}
    return rows + _rows(
        "cosine", "interference_grid", lambda c: grid(numpy_stats(), cosine=c), flags
    )


# ----------------------------------------------------------------------------- class filter
COUNT_BOUNDS = {
    "zero": (0, VALUE),
    "negative": (-1, VALUE),
    "float": (2.5, TYPE),
    "nan": (math.nan, TYPE),
    "str": ("3", TYPE),
    "bool": (True, TYPE),
}
#: Each path that takes the class filter, called with keyword arguments.
FILTER_ENTRIES: dict[str, Callable[..., Any]] = {
    "populated": lambda **kw: metrics.populated(numpy_stats(), **kw),
    "nc_report-stats": lambda **kw: nc_report(numpy_stats(), W, **kw),
    "nc_report": lambda **kw: nc_report((X, Y), W, **kw),
}


def _filter_rows() -> list[Row]:
    out = []
    for entry, call in FILTER_ENTRIES.items():
        for name in ("min_count", "max_count"):
            out += _rows(name, entry, lambda v, c=call, n=name: c(**{n: v}), COUNT_BOUNDS)
        # Bounds that leave fewer than two classes (counts 10, 8, 6), or cross.
        out += [
            (
                f"min_count-keeps-none-{entry}",
                lambda c=call: c(min_count=11),
                VALUE,
                ("min_count",),
            ),
            (f"min_count-keeps-one-{entry}", lambda c=call: c(min_count=9), VALUE, ("min_count",)),
            (f"max_count-keeps-one-{entry}", lambda c=call: c(max_count=7), VALUE, ("max_count",)),
            (
                f"min_count-max_count-keep-one-{entry}",
                lambda c=call: c(min_count=8, max_count=8),
                VALUE,
                ("min_count", "max_count"),
            ),
            (
                f"max_count-below-min_count-{entry}",
                lambda c=call: c(min_count=9, max_count=7),
                VALUE,
                ("max_count",),
            ),
        ]
    return out


def _kept(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels renumbered 0.. and classifier rows of the kept classes."""
    rows = np.isin(Y, np.flatnonzero(keep))
    renumber = np.cumsum(keep) - 1
    return X[rows], renumber[Y[rows]], W[keep]


def _filtered_check(keep: np.ndarray, left_out: tuple[int, ...], nc1: bool) -> f.Check:
    """A report of the kept classes alone (the bounds are inclusive): the
    classes left out, and metrics whose global mean and pairs count only the
    kept classes."""
    x, y, w = _kept(keep)
    k = int(keep.sum())
    means = f.class_means(x, y, k)
    centred = f.centred_means(means, f.counts(y, k))
    rows = [
        ("within_variance", f.within_variance(x, y, k), 1e-10),
        ("cdnv", f.cdnv(means, f.class_variances(x, y, k)), 1e-10),
        ("bias_collapse", f.bias_collapse(w, None, x.mean(axis=0)), 1e-10),
        ("uniform_duality_variance", f.uniform_duality_variance(w, centred), 1e-10),
        ("self_duality_error", f.nf_distance(w, centred), 1e-10),
    ]
    if nc1:
        rows.append(("nc1", f.nc1(x, y, k), 1e-9))
    fields = f.field_checks(rows)

    def check(report: Any) -> None:
        got = tuple(k for k, _ in report.excluded)
        if got != left_out:
            raise AssertionError(f"excluded classes {got}, expected {left_out}")
        fields(report)

    return check


def filter_bound_probes() -> list[Probe]:
    """`min_count` and `max_count` are inclusive: counts (10, 8, 6)."""
    at_least_8 = np.array([True, True, False])
    at_most_8 = np.array([False, True, True])
    return [
        Probe(
            "min_count-inclusive-nc_report",
            lambda: nc_report((X, Y), W, min_count=8),
            Returns(_filtered_check(at_least_8, (2,), nc1=True)),
        ),
        Probe(
            "max_count-inclusive-nc_report",
            lambda: nc_report((X, Y), W, max_count=np.int64(8)),
            Returns(_filtered_check(at_most_8, (0,), nc1=True)),
        ),
        Probe(
            "min_count-max_count-inclusive-nc_report-stats",
            lambda: nc_report(numpy_stats(), W, min_count=6, max_count=8),
            Returns(_filtered_check(at_most_8, (0,), nc1=False)),
        ),
    ]


# ----------------------------------------------------------------------------- lengths
LENGTHS = {
    "short": (np.ones(K - 1), VALUE),
    "column": (np.ones((K, 1)), VALUE),
    "0-d": (np.array(2.0), VALUE),
    "number": (5.0, VALUE),
    "negative": (np.array([1.0, -1.0, 1.0]), VALUE),
    "all-zero": (np.zeros(K), VALUE),
    "unknown-word": ("unequal", VALUE),
    "strings": (["a", "b", "c"], TYPE),
    "complex": (np.ones(K, dtype=complex), TYPE),
    "bool": (np.ones(K, dtype=bool), TYPE),
    "None": (None, TYPE),
    "masked": (np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0]), TYPE),
    "matrix": (np.matrix([1.0, 2.0, 3.0]), TYPE),
    "meta-tensor": ("meta", TYPE),
}


def _lengths_value(value: Any) -> Any:
    return tt(np.ones(K)).to("meta") if isinstance(value, str) and value == "meta" else value


def _lengths_rows() -> list[Row]:
    out = []
    for entry, source in (("stats", numpy_stats), ("array", lambda: M)):
        out += _rows(
            "lengths",
            f"nearest_orthogonal_frame-{entry}",
            lambda v, s=source: metrics.nearest_orthogonal_frame(s(), lengths=_lengths_value(v)),
            LENGTHS,
        )
    # Fewer dimensions than classes of positive length: the frame cannot exist.
    narrow = ClassStats.from_features(X[:, :2], Y, K)
    out.append(
        (
            "lengths-more-than-dim-nearest_orthogonal_frame",
            lambda: metrics.nearest_orthogonal_frame(narrow, lengths=np.ones(K)),
            VALUE,
            ("source", "lengths"),
        )
    )
    return out


def host_lengths_probes() -> list[Probe]:
    """Lengths as lists, tuples or integers: the equal float64 lengths; a zero
    length leaves its class out of the frame (d >= 2 positive lengths suffices)."""
    want = f.nearest_frame(M, np.array([1.0, 2.0, 3.0]))
    rows = [(name, want[name], 1e-10) for name in ("scale", "distance")]
    given = {"list": [1, 2, 3], "tuple": (1.0, 2.0, 3.0), "int64": np.array([1, 2, 3])}
    out = [
        Probe(
            f"lengths-{label}-nearest_orthogonal_frame",
            lambda v=value: metrics.nearest_orthogonal_frame(numpy_stats(), lengths=v),
            Returns(f.field_checks(rows)),
        )
        for label, value in given.items()
    ]
    narrow = X[:, :2]
    lengths = np.array([1.0, 0.0, 2.0])
    zero = f.nearest_frame(f.class_means(narrow, Y, K), lengths)
    out.append(
        Probe(
            "lengths-zero-entry-narrow-nearest_orthogonal_frame",
            lambda: metrics.nearest_orthogonal_frame(
                ClassStats.from_features(narrow, Y, K), lengths=lengths
            ),
            Returns(f.field_checks([(n, zero[n], 1e-10) for n in ("scale", "distance")])),
        )
    )
    return out


# ----------------------------------------------------------------------------- ood_mean
OOD_VALUES = {
    "long": (np.ones(D + 1), VALUE),
    "row": (np.ones((1, D)), VALUE),
    "0-d": (np.array(1.0), VALUE),
    "zero": (np.zeros(D), VALUE),
    "int": (np.ones(D, dtype=np.int64), TYPE),
    "complex": (np.ones(D, dtype=complex), TYPE),
    "list": ([1.0] * D, TYPE),
    "matrix": (np.matrix(np.ones(D)), TYPE),
    "masked": (np.ma.array(np.ones(D)), TYPE),
}
#: The torch paths, with the values as tensors (no list, matrix or masked array).
TORCH_OOD = ("long", "row", "0-d", "zero", "int")


def _tracker_report(ood_mean: Any) -> Any:
    from ncgeom_torch import NCTracker

    tracker = NCTracker(K)
    tracker.observe(tt(X), tt(Y))
    return tracker.report(tt(W), ood_mean=ood_mean)


def _callback(ood_mean: Any) -> Any:
    from ncgeom_torch.lightning import NeuralCollapseCallback

    return NeuralCollapseCallback(K, ood_mean=ood_mean)


def _jax_nc_metrics(ood_mean: Any) -> Any:
    from ncgeom_jax import batch_stats, nc_metrics

    jnp = jax_numpy()
    return nc_metrics(batch_stats(jnp.asarray(X), jnp.asarray(Y), K), ood_mean=ood_mean)


def _ood_rows() -> list[Row]:
    entries: dict[str, Callable[[Any], Any]] = {
        "ood_deviation": lambda o: metrics.ood_deviation(numpy_stats(), o),
        "check_ood_mean": lambda o: metrics.check_ood_mean(o, numpy_stats()),
        "nc_report-stats": lambda o: nc_report(numpy_stats(), ood_mean=o),
        "nc_report": lambda o: nc_report((X, Y), ood_mean=o),
    }
    out = []
    for entry, call in entries.items():
        out += _rows("ood_mean", entry, call, OOD_VALUES)
    torch_values = {label: (tt(OOD_VALUES[label][0]), OOD_VALUES[label][1]) for label in TORCH_OOD}
    out += _rows("ood_mean", "NCTracker.report", _tracker_report, torch_values)
    out += _rows(
        "ood_mean",
        "NeuralCollapseCallback",
        _callback,
        {
            "str": ("abc", TYPE),
            "row": (tt(np.ones((1, D))), VALUE),
            "zero": (tt(np.zeros(D)), VALUE),
        },
    )
    out.append(
        (
            "ood_mean-long-jax-nc_metrics",
            lambda: _jax_nc_metrics(jax_numpy().ones(D + 1)),
            VALUE,
            ("ood_mean",),
        )
    )
    return out


def ood_precision_probes() -> list[Probe]:
    """A float32 `ood_mean` with float64 statistics: NC5 of the two together."""
    want = f.ood_deviation(M, OOD.astype(np.float32))
    return [
        Probe(
            "ood_mean-float32-ood_deviation",
            lambda: metrics.ood_deviation(numpy_stats(), OOD.astype(np.float32)),
            Returns(f.scalar_check("ood_deviation", want, 1e-12)),
        ),
        Probe(
            "ood_mean-float32-NCTracker.report",
            lambda: _tracker_report(tt(OOD).float()),
            Returns(f.field_checks([("ood_deviation", want, 1e-12)])),
        ),
    ]


# ----------------------------------------------------------------------------- s = 0, K**2
def edge_probes() -> list[Probe]:
    """Allowed values at the edge: s = 0 (every kernel value 1: log-mean 0,
    log-variance -inf), s < 0, integer s and exponent, max_entries = K**2."""
    counts = f.counts(Y, K)
    centred = f.centred_means(M, counts)
    variances = f.class_variances(X, Y, K)

    def exact(name: str, want: float) -> f.Check:
        def check(value: Any) -> None:
            got = float(f.host(value))
            if got != want:
                raise AssertionError(f"{name}: got {got!r}, expected {want!r}")

        return check

    stats = numpy_stats
    return [
        Probe(
            "s-zero-riesz_log_energy",
            lambda: metrics.riesz_log_energy(stats(), s=0.0),
            Returns(exact("riesz_log_energy", 0.0)),
        ),
        Probe(
            "s-zero-riesz_log_variance",
            lambda: metrics.riesz_log_variance(stats(), s=0),
            Returns(exact("riesz_log_variance", -math.inf)),
        ),
        Probe(
            "s-negative-riesz_log_energy",
            lambda: metrics.riesz_log_energy(stats(), s=-3.0),
            Returns(f.scalar_check("riesz_log_energy", f.riesz_log_energy(centred, -3.0), 1e-12)),
        ),
        Probe(
            "s-int64-riesz_log_variance",
            lambda: metrics.riesz_log_variance(stats(), s=np.int64(3)),
            Returns(
                f.scalar_check("riesz_log_variance", f.riesz_log_variance(centred, 3.0), 1e-12)
            ),
        ),
        Probe(
            "exponent-int-cdnv",
            lambda: metrics.cdnv(stats(), exponent=2),
            Returns(f.scalar_check("cdnv", f.cdnv(M, variances, 2.0), 1e-12)),
        ),
        Probe(
            "max_entries-K**2-interference_grid",
            lambda: metrics.interference_grid(stats(), max_entries=np.int64(K * K)),
            Returns(f.scalar_check("interference_grid", f.interference_grid(centred), 1e-12)),
        ),
    ]


# ----------------------------------------------------------------------------- other arguments
#: Metrics of statistics that take `global_mean`.
CENTRED = (
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
)
#: Metrics of a classifier against statistics.
WITH_CLASSIFIER = (
    "classifier_equiangularity",
    "classifier_etf_error",
    "classifier_equinorm",
    "uniform_duality",
    "uniform_duality_variance",
    "distance_norms",
)
#: Metrics over blocks of class pairs.
BLOCKED = ("equiangularity_std", "interference_mean", "log_energy", "riesz_log_variance")


def _other_rows() -> list[Row]:
    out: list[Row] = []
    for name in CENTRED:
        metric = getattr(metrics, name)
        out.append(
            (
                f"global_mean-median-{name}",
                lambda m=metric: m(numpy_stats(), global_mean="median"),
                VALUE,
                ("global_mean",),
            )
        )
    for name in ("uniform_duality", "uniform_duality_variance", "distance_norms"):
        metric = getattr(metrics, name)
        out.append(
            (
                f"global_mean-median-{name}",
                lambda m=metric: m(W, numpy_stats(), global_mean="median"),
                VALUE,
                ("global_mean",),
            )
        )
    for name in BLOCKED:
        metric = getattr(metrics, name)
        out += _rows(
            "block_rows",
            name,
            lambda b, m=metric: m(numpy_stats(), block_rows=b),
            {"zero": (0, VALUE), "float": (2.5, TYPE)},
        )
    out += _rows(
        "block_rows",
        "classifier_etf_error",
        lambda b: metrics.classifier_etf_error(W, block_rows=b),
        {"zero": (0, VALUE), "float": (2.5, TYPE)},
    )
    for name in WITH_CLASSIFIER:
        metric = getattr(metrics, name)
        out.append(
            (
                f"classifier-transposed-{name}",
                lambda m=metric: m(W.T.copy(), numpy_stats()),
                VALUE,
                ("classifier",),
            )
        )
    out += [
        (
            "bias-short-bias_collapse",
            lambda: metrics.bias_collapse(W, B[:2], numpy_stats()),
            VALUE,
            ("bias",),
        ),
        (
            "bias-int-bias_collapse",
            lambda: metrics.bias_collapse(W, np.ones(K, dtype=np.int64), numpy_stats()),
            TYPE,
            ("bias",),
        ),
        (
            "source-one-row-nearest_simplex_etf",
            lambda: metrics.nearest_simplex_etf(W[:1]),
            VALUE,
            ("source",),
        ),
        (
            "source-zero-nearest_orthogonal_frame",
            lambda: metrics.nearest_orthogonal_frame(np.zeros((K, D))),
            VALUE,
            ("source",),
        ),
        (
            "source-list-nearest_simplex_etf",
            lambda: metrics.nearest_simplex_etf(W.tolist()),
            TYPE,
            ("source",),
        ),
        (
            "source-narrow-nearest_simplex_etf",
            lambda: metrics.nearest_simplex_etf(ClassStats.from_features(X[:, :1], Y, K)),
            VALUE,
            ("source",),
        ),
    ]
    return out


#: Statistics given as something else (their means): TypeError naming `stats`.
NOT_STATS: dict[str, Callable[[Any], Any]] = {
    **{name: (lambda s, n=name: getattr(metrics, n)(s)) for name in CENTRED[:-1]},
    "cdnv": lambda s: metrics.cdnv(s, exponent=2.0),
    "ood_deviation": lambda s: metrics.ood_deviation(s, OOD),
    "check_ood_mean": lambda s: metrics.check_ood_mean(OOD, s),
    "bias_collapse": lambda s: metrics.bias_collapse(W, B, s),
    **{name: (lambda s, n=name: getattr(metrics, n)(W, s)) for name in WITH_CLASSIFIER},
    "self_duality_error": lambda s: metrics.self_duality_error(W, s),
    "scaled_alignment_error": lambda s: metrics.scaled_alignment_error(W, s),
}


def not_stats_probes() -> list[Probe]:
    out = []
    for entry, call in NOT_STATS.items():
        out.append(Probe(f"stats-array-{entry}", lambda c=call: c(M), Raises(TYPE, ("stats",))))
    return out


def probes() -> list[Probe]:
    rows = [
        *_riesz_rows(),
        *_cdnv_rows(),
        *_grid_rows(),
        *_filter_rows(),
        *_lengths_rows(),
        *_ood_rows(),
        *_other_rows(),
    ]
    out = []
    for name, call, kinds, names in rows:
        out.append(Probe(f"keyword-{name}", call, Raises(kinds, names)))
    return [
        *out,
        *(_prefixed(p) for p in filter_bound_probes()),
        *(_prefixed(p) for p in host_lengths_probes()),
        *(_prefixed(p) for p in ood_precision_probes()),
        *(_prefixed(p) for p in edge_probes()),
        *(_prefixed(p) for p in not_stats_probes()),
    ]


def _prefixed(probe: Probe) -> Probe:
    return replace(probe, id=f"keyword-{probe.id}")
