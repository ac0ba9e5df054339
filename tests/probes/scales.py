"""Every output with units, at feature scales 1e-20 to 1e20.

Features ``(opt.means()[y] + 0.01 noise) * c`` for the optimum ``opt`` of
counts (30, 20, 10) at lambda_W = lambda_H = 1e-3, and its classifier. Norms,
margins and the report's bias collapse must be those of the given features
(``c`` times the optimum's), variances (also of ``w_k . c_k``) ``c**2`` times,
objectives the float64 formula at these features; the scale-free metrics
(the pair and variant metrics of the report included) must not move. The
metrics' own entry points: `probes.metric_scales`. Also features of spread about 1 far from
the origin (a common offset up to 1e12): only their spread may matter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ncgeom import (
    ClassStats,
    collapsed_objective,
    margin_comparison,
    nc_report,
    norm_comparison,
    ufm_objective,
    ufm_relu_optimum,
)

from . import Either, Probe, Raises, Returns
from . import formulas as f
from .data import tt

COUNTS = (30, 20, 10)
LAMBDA = 1e-3
OPT = ufm_relu_optimum(list(COUNTS), LAMBDA, LAMBDA)
K = len(COUNTS)
Y = np.repeat(np.arange(K), COUNTS)
W = np.asarray(OPT.classifier(), dtype=np.float64)
_BASE = np.asarray(OPT.means(), dtype=np.float64)[Y] + 0.01 * np.random.default_rng(5).normal(
    size=(Y.size, OPT.means().shape[1])
)

#: 1e-20 .. 1e20 in steps of 100, and the powers of two where the engine
#: starts storing features in scaled units.
SCALES = [10.0**e for e in range(-20, 21, 2)] + [2.0**17, 2.0**20]
#: Scales of the float32 samples (JAX: in `probes.plugins`, through `ncgeom_jax.nc_metrics`).
FLOAT32_SCALES = [1e-20, 1e-6, 2.0**17, 1e20]


def features(c: float, dtype: Any = np.float64) -> np.ndarray:
    return (_BASE * c).astype(dtype)


def scale_label(c: float) -> str:
    if c in (2.0**17, 2.0**20):
        return f"2**{int(np.log2(c))}"
    return f"{c:.0e}"


def _expected_report(x: np.ndarray, rtol: float, w: np.ndarray = W) -> list:
    """(field, float64 value, tolerance) of an NCReport of features `x` with
    classifier `w` and theory OPT; `rtol` is that of the features' precision."""
    x64, w64 = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    means = f.class_means(x64, Y, K)
    target_logits = (np.eye(K) - 1.0 / K) * np.asarray(OPT.margins)[None, :]
    free = 1e-6 if rtol <= 1e-8 else 1e-4  # scale-free metrics and variances
    centred = f.centred_means(means, f.counts(Y, K))
    return [
        ("feature_norms_measured", np.linalg.norm(means, axis=1), rtol),
        ("margins_measured", f.margins(w64, means), rtol),
        ("within_variance", f.within_variance(x64, Y, K), free / 100 if rtol <= 1e-8 else free),
        ("bias_collapse", f.bias_collapse(w64, None, x64.mean(axis=0)), rtol),
        ("uniform_duality_variance", f.uniform_duality_variance(w64, centred), max(rtol, 1e-9)),
        (
            "gof_error",
            f.nf_distance(means @ means.T, np.diag(np.asarray(OPT.feature_norms) ** 2)),
            free,
        ),
        ("logit_structure_error", f.nf_distance(w64 @ means.T, target_logits), free),
        ("nc1", f.nc1(x64, Y, K), free),
        *_expected_variants(x64, w64, means, centred, free),
    ]


def _expected_variants(
    x: np.ndarray, w: np.ndarray, means: np.ndarray, centred: np.ndarray, free: float
) -> list:
    """(field, float64 value, tolerance) of the report's scale-free pair and variant metrics."""
    cosines = f.pair_cosines(centred)
    s = means.shape[1] - 2.0  # the default Riesz exponent, d - 2
    rows = [
        ("nc1_trace_ratio", f.nc1_trace_ratio(x, Y, K)),
        ("log_equinorm", f.log_equinorm(centred)),
        ("equiangularity_std", np.std(cosines)),
        ("interference_mean", np.mean(cosines)),
        ("interference_min", np.min(cosines)),
        ("interference_max", np.max(cosines)),
        ("log_energy", f.log_energy(centred)),
        ("log_energy_variance", f.log_energy_variance(centred)),
        ("riesz_log_energy", f.riesz_log_energy(centred, s)),
        ("riesz_log_variance", f.riesz_log_variance(centred, s)),
        ("nearest_etf_distance", f.nearest_simplex_etf(centred)["relative_distance"]),
        ("nearest_frame_distance", f.nearest_frame(means, np.ones(K))["relative_distance"]),
        ("classifier_equinorm", f.classifier_equinorm(w)),
        ("classifier_equiangularity", f.classifier_equiangularity(w)),
        ("classifier_etf_error", f.classifier_etf_error(w)),
        ("uniform_duality", f.uniform_duality(w, centred)),
        ("distance_norms", f.distance_norms(w, centred)),
    ]
    return [(name, want, free) for name, want in rows]


def _verdict_norms(report: Any) -> tuple[float | None, ...]:
    return tuple(c.norm_measured for c in report.verdict().classes)


def _report_probe(
    name: str, c: float, call: Callable[[], Any], x: np.ndarray, rtol: float, w: np.ndarray = W
) -> Probe:
    expect = Returns(f.field_checks(_expected_report(x, rtol, w)))
    return Probe(f"scale-{name}-{scale_label(c)}", call, expect)


def _stats(x: Any, y: Any) -> ClassStats:
    return ClassStats.from_features(x, y, K)


def _streamed(x: np.ndarray) -> ClassStats:
    return ClassStats.empty(K, x.shape[1]).update(x[:25], Y[:25]).update(x[25:], Y[25:])


def _stats_check(x: np.ndarray) -> f.Check:
    x64 = np.asarray(x, dtype=np.float64)
    means = f.class_means(x64, Y, K)

    def check(stats: ClassStats) -> None:
        f.close("means", stats.means, means, 1e-10)
        f.close("global_mean", stats.global_mean, x64.mean(axis=0), 1e-10)
        f.close("class_variances", stats.class_variances, f.class_variances(x64, Y, K), 1e-8)
        f.close(
            "within_covariance", stats.within_covariance(), f.within_covariance(x64, Y, K), 1e-8
        )

    return check


def _tracker_report(x: np.ndarray) -> Any:
    from ncgeom_torch import NCTracker

    tracker = NCTracker(K)
    tracker.observe(tt(x), tt(Y))
    return tracker.report(tt(W), lambda_w=LAMBDA, lambda_h=LAMBDA, counts=list(COUNTS))


def _tracker_check(x: np.ndarray) -> f.Check:
    fields = f.field_checks(_expected_report(x, 1e-10))
    norms = np.linalg.norm(f.class_means(x, Y, K), axis=1)

    def check(report: Any) -> None:
        fields(report)
        f.close("verdict norm_measured", _verdict_norms(report), norms, 1e-10)

    return check


def _comparison_check(x: np.ndarray) -> f.Check:
    means = f.class_means(x, Y, K)

    def check(pair: tuple[Any, Any]) -> None:
        norms, margins = pair
        f.close("norm_comparison.measured", norms.measured, np.linalg.norm(means, axis=1), 1e-10)
        f.close("margin_comparison.measured", margins.measured, f.margins(W, means), 1e-10)

    return check


def _objectives_check(x: np.ndarray) -> f.Check:
    means = f.class_means(x, Y, K)
    full = f.objective(W, x, Y, LAMBDA, LAMBDA)
    collapsed = f.collapsed_objective(W, means, COUNTS, LAMBDA, LAMBDA)

    def check(pair: tuple[Any, Any]) -> None:
        f.close("ufm_objective", pair[0], full, 1e-10)
        f.close("collapsed_objective", pair[1], collapsed, 1e-10)

    return check


def _float64_probes(c: float) -> list[Probe]:
    x = features(c)
    means = f.class_means(x, Y, K)
    label = scale_label(c)
    return [
        _report_probe("nc_report", c, lambda: nc_report((x, Y), W, theory=OPT), x, 1e-10),
        _report_probe(
            "nc_report-stats", c, lambda: nc_report(_stats(x, Y), W, theory=OPT), x, 1e-10
        ),
        Probe(f"scale-stats-streamed-{label}", lambda: _streamed(x), Returns(_stats_check(x))),
        Probe(
            f"scale-comparisons-{label}",
            lambda: (norm_comparison(means, OPT), margin_comparison(W, means, OPT)),
            Returns(_comparison_check(x)),
        ),
        Probe(
            f"scale-objectives-{label}",
            lambda: (
                ufm_objective(W, x, Y, LAMBDA, LAMBDA),
                collapsed_objective(W, means, list(COUNTS), LAMBDA, LAMBDA),
            ),
            Returns(_objectives_check(x)),
        ),
        Probe(
            f"scale-NCTracker.report-{label}",
            lambda: _tracker_report(x),
            Returns(_tracker_check(x)),
        ),
    ]


def _float32_probes(c: float) -> list[Probe]:
    x = features(c, np.float32)
    w = W.astype(np.float32)
    return [
        _report_probe(
            "float32-nc_report", c, lambda: nc_report((x, Y), w, theory=OPT), x, 1e-5, w
        ),
        _report_probe(
            "float32-nc_report-stats",
            c,
            lambda: nc_report(_stats(x, Y), w, theory=OPT),
            x,
            1e-5,
            w,
        ),
    ]


def _other_backend_probes() -> list[Probe]:
    import array_api_strict as strict

    out = []
    x = features(2.0**20)
    out.append(
        _report_probe(
            "array_api_strict-nc_report-stats",
            2.0**20,
            lambda: nc_report(
                _stats(strict.asarray(x), strict.asarray(Y)), strict.asarray(W), theory=OPT
            ),
            x,
            1e-10,
        )
    )
    torch_x = tt(features(1e20))
    out.append(
        _report_probe(
            "torch-nc_report",
            1e20,
            lambda: nc_report((torch_x, tt(Y)), tt(W), theory=OPT),
            features(1e20),
            1e-10,
        )
    )
    return out


def _subnormal_probe() -> Probe:
    """float64 features of about 1e-310 (subnormal): exact in units of 2**-1030.

    The formulas run on the features times 2**1030 (exact) and their results
    are scaled back: norms and margins stay subnormal, a variance of 1e-624
    rounds to 0.
    """
    x = features(1e-310)
    scaled = _expected_report(np.ldexp(x, 1030), 1e-9)
    back = {
        "feature_norms_measured": -1030,
        "margins_measured": -1030,
        "bias_collapse": -1030,
        "within_variance": -2060,
        "uniform_duality_variance": -2060,
    }
    rows = [(name, np.ldexp(want, back.get(name, 0)), rtol) for name, want, rtol in scaled]
    expect = Either(
        Returns(f.field_checks(rows)),
        Raises(ValueError, ("features",), forbid=("overflow",)),
    )
    return Probe(
        "scale-nc_report-subnormal-1e-310", lambda: nc_report((x, Y), W, theory=OPT), expect
    )


def _theory_verdict_probes() -> list[Probe]:
    """`nc_report(..., theory=opt)` uses the optimum in its verdict."""
    alive = [bool(a) for a in np.asarray(OPT.alive)]

    def check(report: Any) -> None:
        verdict = report.verdict()
        if verdict.collapse_count is None:
            raise AssertionError(f"verdict.collapse_count is None ({verdict.collapse_reason})")
        f.close("verdict.collapse_count", verdict.collapse_count, OPT.collapse_count, 1e-12)
        predicted = [c.predicted for c in verdict.classes]
        want = ["alive" if a else "collapsed" for a in alive]
        if predicted != want:
            raise AssertionError(f"verdict predicted {predicted}, the optimum says {want}")

    out = []
    for c in (1.0, 2.0**20):
        x = features(c)
        out.append(
            Probe(
                f"theory-verdict-nc_report-{scale_label(c)}",
                lambda x=x: nc_report((x, Y), W, theory=OPT),
                Returns(check),
            )
        )
    return out


#: Common offsets added to every feature (a spread of about 1 far from the origin).
OFFSETS = [1e4, 1e6, 1e8, 1e10, 1e12]


def offset_features(offset: float) -> np.ndarray:
    """``offset + 3 * (base - first row)``, on a grid float64 holds exactly at this offset."""
    step = 2.0 ** (np.floor(np.log2(offset)) - 51)
    return offset + np.round(3 * (_BASE - _BASE[0]) / step) * step


def _offset_probes(offset: float) -> list[Probe]:
    """NC1 and variances of features far from the origin: only their spread matters.

    The class means carry a rounding of about eps * offset, which limits NC1's
    accuracy to about that over the between-class spread (about 1 here).
    """
    x = offset_features(offset)
    rtol = max(1e-8, 50 * np.finfo(np.float64).eps * offset)
    centred = x - x[0]
    rows = [
        ("nc1", f.nc1(x, Y, K), rtol),
        ("within_variance", f.within_variance(centred, Y, K), 1e-8),
    ]
    label = f"{offset:.0e}"
    return [
        Probe(
            f"offset-nc_report-{label}", lambda: nc_report((x, Y)), Returns(f.field_checks(rows))
        ),
        Probe(
            f"offset-nc_report-stats-{label}",
            lambda: nc_report(_stats(x, Y)),
            Returns(f.field_checks(rows)),
        ),
        Probe(
            f"offset-stats-streamed-{label}", lambda: _streamed(x), Returns(_offset_stats_check(x))
        ),
    ]


def _offset_stats_check(x: np.ndarray) -> f.Check:
    centred = x - x[0]

    def check(stats: ClassStats) -> None:
        f.close("class_variances", stats.class_variances, f.class_variances(centred, Y, K), 1e-8)
        f.close(
            "within_covariance",
            stats.within_covariance(),
            f.within_covariance(centred, Y, K),
            1e-8,
        )
        f.close("means", stats.means, f.class_means(x, Y, K), 1e-15)

    return check


def probes() -> list[Probe]:
    out = []
    for offset in OFFSETS:
        out += _offset_probes(offset)
    for c in SCALES:
        out += _float64_probes(c)
    for c in FLOAT32_SCALES:
        out += _float32_probes(c)
    return [*out, *_other_backend_probes(), _subnormal_probe(), *_theory_verdict_probes()]
