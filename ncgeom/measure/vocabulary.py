"""The one list of metric names: every output (API, reports, JSON, figures, docs) reads it.

Each metric has one name (the `ncgeom.metrics` function, the `NCReport` field
and the JSON key), the symbol the paper or the literature uses for it, a
short description in words, and what the UFM+ theorem expects of it. Shown
to a reader, a metric is always ``name (SYMBOL)``, built by `label`.

Examples
--------
>>> from ncgeom.vocabulary import METRICS, label
>>> label("gof_error")
'gof_error (NC2_H)'
>>> METRICS["nc1"].expect
'zero'
>>> [name for name in METRICS][:3]
['nc1', 'nc1_trace_ratio', 'cdnv']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FIGURE_METRICS",
    "LAYER_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "PER_CLASS",
    "Metric",
    "label",
    "per_class_label",
]


@dataclass(frozen=True)
class Metric:
    """One metric of the registry.

    Attributes
    ----------
    name : str
        The one name: function of `ncgeom.metrics` (or `ncgeom.theory_metrics`),
        `NCReport` field and JSON key.
    symbol : str
        The paper's (or literature's) symbol, shown beside the name.
    words : str
        What it measures, in a few words (plot axes, tables).
    expect : {"zero", "value", "none"}
        What the UFM+ optimum gives: zero, a value that depends on the
        counts (computed at the optimum when a report knows it; e.g. the NCC
        agreement is below 1 when a class collapses to h_k = 0, whose
        logits tie), or none (the theorem does not speak of it: NC5 needs
        out-of-distribution data).
    """

    name: str
    symbol: str
    words: str
    expect: str

    @property
    def label(self) -> str:
        """``name (SYMBOL)``, the fixed format of every output."""
        return f"{self.name} ({self.symbol})"


_ALL = (
    # Variability collapse (NC1)
    Metric("nc1", "NC1", "within-class variability, tr(Sigma_W Sigma_B^+)/K", "zero"),
    Metric("nc1_trace_ratio", "NC1_tr", "trace ratio, tr Sigma_W / tr Sigma_B", "zero"),
    Metric("cdnv", "CDNV", "class-distance normalised variance", "zero"),
    Metric("within_variance", "tr Sigma_W", "within-class variance, feature units", "zero"),
    # Geometry of the class means (NC2, GNC2)
    Metric("etf_error", "NC2_ETF", "centred means vs a simplex ETF", "value"),
    Metric("equinorm", "NC2_norm", "spread of centred mean norms, std/mean", "value"),
    Metric("log_equinorm", "NC2_log_norm", "spread of log centred mean norms, std", "value"),
    Metric("equiangularity", "NC2_angle", "centred means' angles vs -1/(K-1)", "value"),
    Metric("equiangularity_std", "NC2_angle_std", "std of centred means' pair cosines", "value"),
    Metric("interference_mean", "NC2_cos_mean", "mean pair cosine, centred means", "value"),
    Metric("interference_min", "NC2_cos_min", "smallest pair cosine, centred means", "value"),
    Metric("interference_max", "NC2_cos_max", "largest pair cosine, centred means", "value"),
    Metric("orthogonality_error", "NC2_orth", "mean absolute cosine, uncentred means", "zero"),
    Metric("log_energy", "GNC2_log", "log-kernel energy of centred mean directions", "value"),
    Metric("log_energy_variance", "GNC2_log_var", "variance of the log kernel", "value"),
    Metric("riesz_log_energy", "GNC2_riesz", "log of the Riesz (s = d-2) energy", "value"),
    Metric("riesz_log_variance", "GNC2_riesz_var", "log of the Riesz kernel's variance", "value"),
    Metric("nearest_etf_distance", "NC2_ETF_near", "relative distance to a simplex ETF", "value"),
    Metric(
        "nearest_frame_distance", "NC2_frame_near", "relative distance to an equal frame", "value"
    ),
    # The classifier (NC3, UNC3, NC4)
    Metric("self_duality_error", "NC3", "W vs centred means, nf distance", "value"),
    Metric("scaled_alignment_error", "NC2_W", "W vs sqrt(n)-scaled centred means", "zero"),
    Metric("classifier_equinorm", "NC2_W_norm", "spread of W row norms, std/mean", "value"),
    Metric("classifier_equiangularity", "NC2_W_angle", "W rows' angles vs -1/(K-1)", "value"),
    Metric("classifier_etf_error", "NC2_W_ETF", "W W^T vs a simplex ETF", "value"),
    Metric("uniform_duality", "UNC3", "spread of w_k.(mu_k - mu_G), std/mean", "value"),
    Metric("uniform_duality_variance", "UNC3_var", "variance of w_k.(mu_k - mu_G)", "value"),
    Metric("bias_collapse", "NC_bias", "norm of the global mean's logits, W mu_G + b", "value"),
    Metric("ncc_agreement", "NC4", "classifier agrees with nearest class centre", "value"),
    # Out of distribution (NC5)
    Metric("ood_deviation", "NC5", "mean abs cosine of class means with an OOD mean", "none"),
    # Against the theorem's optimum
    Metric("gof_error", "NC2_H", "feature Gram vs the optimum's", "zero"),
    Metric("classifier_gram_error", "NC2_WWT", "classifier Gram vs the optimum's", "zero"),
    Metric("logit_structure_error", "NC3_WH", "logits W H^T vs the optimum's", "zero"),
    Metric(
        "optimum_frame_distance",
        "NC2_frame_opt",
        "distance to a frame of the optimum's lengths",
        "zero",
    ),
)

#: Every scalar metric, by name, in report order.
METRICS: dict[str, Metric] = {metric.name: metric for metric in _ALL}
#: The names alone, in report order (`NCReport.METRICS`).
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

#: Metrics of a layer that need a second pass over the samples (with the final
#: class means), so that no `NCReport` of statistics holds them: a
#: `ncgeom.depth.DepthReport` gives them per layer. Named and shown like
#: `METRICS`; every symbol differs from theirs.
LAYER_METRICS: dict[str, Metric] = {
    "ncc_accuracy": Metric(
        "ncc_accuracy",
        "NCC_acc",
        "nearest-class-centre accuracy against the labels",
        "value",
    ),
}

#: The headline metrics a figure draws (one panel cannot show every curve);
#: reports, tables and JSON carry every metric of `METRICS`.
FIGURE_METRICS: tuple[str, ...] = (
    "nc1",
    "cdnv",
    "etf_error",
    "equinorm",
    "equiangularity",
    "orthogonality_error",
    "log_energy",
    "self_duality_error",
    "scaled_alignment_error",
    "ncc_agreement",
    "gof_error",
    "classifier_gram_error",
    "logit_structure_error",
)

#: Per-class quantities: name -> (symbol, words).
PER_CLASS: dict[str, tuple[str, str]] = {
    "feature_norms": ("‖h_k‖", "length of the class-mean feature"),
    "margins": ("M_k", "true logit minus the largest other logit"),
    "distance_norms": ("‖ŵ_k - ĉ_k‖", "classifier row vs centred mean, unit directions"),
}


def label(name: str) -> str:
    """``name (SYMBOL)`` of a registered metric.

    Parameters
    ----------
    name : str
        A key of `METRICS` or of `LAYER_METRICS`.

    Returns
    -------
    str

    Raises
    ------
    KeyError
        If `name` is not a registered metric.

    Examples
    --------
    >>> label("classifier_gram_error")
    'classifier_gram_error (NC2_WWT)'
    >>> label("ncc_accuracy")
    'ncc_accuracy (NCC_acc)'
    """
    try:
        return METRICS[name].label if name in METRICS else LAYER_METRICS[name].label
    except KeyError:
        msg = (
            f"`name` must be a metric of ncgeom.vocabulary.METRICS or LAYER_METRICS; got {name!r}"
        )
        raise KeyError(msg) from None


def per_class_label(name: str) -> str:
    """``name (SYMBOL)`` of a per-class quantity (``feature_norms``, ``margins``).

    Examples
    --------
    >>> per_class_label("margins")
    'margins (M_k)'
    """
    try:
        symbol, _ = PER_CLASS[name]
    except KeyError:
        msg = f"`name` must be one of {sorted(PER_CLASS)}; got {name!r}"
        raise KeyError(msg) from None
    return f"{name} ({symbol})"
