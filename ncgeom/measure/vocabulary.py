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
['nc1', 'cdnv', 'within_variance']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "METRIC_NAMES", "PER_CLASS", "Metric", "label", "per_class_label"]


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
    expect : {"zero", "value"}
        What the UFM+ optimum gives: zero, or a value that depends on the
        counts (computed at the optimum when a report knows it; e.g. the NCC
        agreement is below 1 when a class collapses to h_k = 0, whose
        logits tie).
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
    Metric("nc1", "NC1", "within-class variability, tr(Sigma_W Sigma_B^+)/K", "zero"),
    Metric("cdnv", "CDNV", "class-distance normalised variance", "zero"),
    Metric("within_variance", "tr Sigma_W", "within-class variance, feature units", "zero"),
    Metric("etf_error", "NC2_ETF", "centred means vs a simplex ETF", "value"),
    Metric("equinorm", "NC2_norm", "spread of centred mean norms, std/mean", "value"),
    Metric("equiangularity", "NC2_angle", "centred means' angles vs -1/(K-1)", "value"),
    Metric("orthogonality_error", "NC2_orth", "mean absolute cosine, uncentred means", "zero"),
    Metric("self_duality_error", "NC3", "W vs centred means, nf distance", "value"),
    Metric("scaled_alignment_error", "NC2_W", "W vs sqrt(n)-scaled centred means", "zero"),
    Metric("ncc_agreement", "NC4", "classifier agrees with nearest class centre", "value"),
    Metric("gof_error", "NC2_H", "feature Gram vs the optimum's", "zero"),
    Metric("classifier_gram_error", "NC2_WWT", "classifier Gram vs the optimum's", "zero"),
    Metric("logit_structure_error", "NC3_WH", "logits W H^T vs the optimum's", "zero"),
)

#: Every scalar metric, by name, in report order.
METRICS: dict[str, Metric] = {metric.name: metric for metric in _ALL}
#: The names alone, in report order (`NCReport.METRICS`).
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

#: Per-class quantities: name -> (symbol, words).
PER_CLASS: dict[str, tuple[str, str]] = {
    "feature_norms": ("‖h_k‖", "length of the class-mean feature"),
    "margins": ("M_k", "true logit minus the largest other logit"),
}


def label(name: str) -> str:
    """``name (SYMBOL)`` of a registered metric.

    Parameters
    ----------
    name : str
        A key of `METRICS`.

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
    """
    try:
        return METRICS[name].label
    except KeyError:
        msg = f"`name` must be a metric of ncgeom.vocabulary.METRICS; got {name!r}"
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
