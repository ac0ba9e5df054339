"""Collapse through depth: the metrics of every tapped layer, `depth_report`.

`depth_report` turns per-layer statistics (first pass, `ClassStats`) and,
where given, per-layer second passes (`ncgeom.layers.SecondPass`) into a
`DepthReport`: a table of layers x metrics, JSON, a figure of each metric
against depth, and a `Progression`, the verdict of a criterion fixed in
advance on whether collapse progresses with depth:

    the Spearman rho of log NC1 against the layer index is below
    `PROGRESSION_RHO` (-0.8) and the last layer's NC1 is below
    `PROGRESSION_DROP` (0.1) times the first's.

``docs/depth.md`` explains the reduce modes, the second pass and the criterion.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._lib.backend import to_host, wide_float
from .._lib.jsonable import jsonable
from .._lib.validate import check_choice, check_instance
from .classes import DEGENERATE_METRICS, DEGENERATE_REASONS
from .layers import REDUCE_MODES, SecondPass
from .report import NCReport, nc_report
from .stats import ClassStats
from .vocabulary import label

__all__ = [
    "DEPTH_FIGURE_METRICS",
    "DEPTH_METRICS",
    "DepthReport",
    "PROGRESSION_DROP",
    "PROGRESSION_RHO",
    "Progression",
    "depth_report",
    "label_of",
    "progression",
    "spearman",
]

Array = Any

#: The metrics of every layer (vocabulary names), in table order.
DEPTH_METRICS = (
    "nc1",
    "cdnv",
    "nc1_trace_ratio",
    "etf_error",
    "orthogonality_error",
    "equinorm",
    "ncc_accuracy",
)
#: The metrics `DepthReport.plot` draws by default.
DEPTH_FIGURE_METRICS = ("nc1", "cdnv", "nc1_trace_ratio", "etf_error")
#: Collapse progresses with depth only if the Spearman rho of log NC1 against
#: the layer index is below this...
PROGRESSION_RHO = -0.8
#: ...and the last layer's NC1 is below this fraction of the first's.
PROGRESSION_DROP = 0.1
#: Fewest layers with a finite NC1 the criterion judges.
PROGRESSION_MIN_LAYERS = 3

_NO_SECOND = "no second pass over the data (SecondPass) for this layer"
_NO_NCC = "the second pass of this layer counted no NCC hits (SecondPass(..., ncc=False))"
_NO_SCATTER = (
    "statistics without Gram and no second pass with scatter=True (SecondPass) for this layer"
)
_MISMATCH = (
    "the second pass saw other class counts than the first: it must replay the same samples"
)


# ----------------------------------------------------------------------------- Spearman
def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of `values`, tied values sharing their average rank."""
    data = np.asarray(values, dtype=np.float64)
    order = np.argsort(data, kind="stable")
    ranks = np.empty(data.shape[0], dtype=np.float64)
    start = 0
    while start < data.shape[0]:
        stop = start
        while stop + 1 < data.shape[0] and data[order[stop + 1]] == data[order[start]]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks.

    Ties share their average rank. NaN when either sequence is constant or
    has fewer than two values.

    Examples
    --------
    >>> from ncgeom.depth import spearman
    >>> spearman([0, 1, 2, 3], [4.0, 3.0, 3.0, 1.0])
    -0.9486832980505138
    """
    if len(x) != len(y):
        msg = f"`x` and `y` must have the same length; got {len(x)} and {len(y)}"
        raise ValueError(msg)
    if len(x) < 2:
        return math.nan
    rx, ry = _average_ranks(x), _average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / norm if norm > 0 else math.nan


# ----------------------------------------------------------------------------- criterion
@dataclass(frozen=True)
class Progression:
    """Whether collapse progresses with depth, by the criterion fixed in advance.

    ``progresses`` is True iff the Spearman rho of log NC1 against the layer
    index is below `PROGRESSION_RHO` and the last layer's NC1 is below
    `PROGRESSION_DROP` times the first's. Layers whose NC1 is not finite are
    left out; fewer than three left give ``progresses=False`` and say so.

    Attributes
    ----------
    rho : float
        Spearman rho of log NC1 against depth (NaN when not judged).
    first, last : float
        NC1 of the first and of the last layer with a finite NC1 (NaN when none).
    progresses : bool
    sentence : str
        The criterion and its outcome in one sentence.
    """

    rho: float
    first: float
    last: float
    progresses: bool
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, with the criterion's thresholds."""
        return jsonable(
            {
                "rho": self.rho,
                "first": self.first,
                "last": self.last,
                "progresses": self.progresses,
                "sentence": self.sentence,
                "rho_below": PROGRESSION_RHO,
                "drop_below": PROGRESSION_DROP,
            }
        )


def progression(nc1: Sequence[float | None]) -> Progression:
    """The criterion on NC1 per layer, shallowest first (None or NaN: left out).

    Log is monotone, so the rho of log NC1 is that of NC1 (an NC1 of 0 ranks
    lowest).

    Examples
    --------
    >>> from ncgeom.depth import progression
    >>> result = progression([1.0, 0.3, 0.02])
    >>> result.progresses, result.rho, result.last / result.first
    (True, -1.0, 0.02)
    >>> print(result.sentence)  # doctest: +NORMALIZE_WHITESPACE
    Collapse progresses with depth: Spearman rho of log NC1 against depth is -1.00 (< -0.8)
    and the last layer's NC1 is 0.02x the first's (< 0.1).
    """
    kept = [
        (depth, float(value))
        for depth, value in enumerate(nc1)
        if value is not None and math.isfinite(value) and value >= 0
    ]
    skipped = len(nc1) - len(kept)
    if len(kept) < PROGRESSION_MIN_LAYERS:
        first = kept[0][1] if kept else math.nan
        last = kept[-1][1] if kept else math.nan
        sentence = (
            "Collapse through depth is not judged: "
            f"{len(kept)} of {len(nc1)} layers have a finite NC1, and the criterion "
            f"(Spearman rho of log NC1 against depth below {PROGRESSION_RHO}, last layer's "
            f"NC1 below {PROGRESSION_DROP}x the first's) needs at least "
            f"{PROGRESSION_MIN_LAYERS}."
        )
        return Progression(math.nan, first, last, False, sentence)
    depths, values = zip(*kept, strict=True)
    rho = spearman(depths, values)
    first, last = values[0], values[-1]
    ratio = last / first if first > 0 else math.nan
    steep = rho < PROGRESSION_RHO
    drops = ratio < PROGRESSION_DROP
    progresses = bool(steep and drops)
    rho_text = f"{rho:.2f}" if math.isfinite(rho) else "undefined (NC1 constant)"
    ratio_text = f"{ratio:.2g}x the first's" if math.isfinite(ratio) else "undefined"
    if first == 0:
        ratio_text = "undefined (the first layer's NC1 is 0)"
    over = f" over the {len(kept)} layers with a finite NC1" if skipped else ""
    if progresses:
        sentence = (
            f"Collapse progresses with depth: Spearman rho of log NC1 against depth is "
            f"{rho_text} (< {PROGRESSION_RHO}){over} and the last layer's NC1 is "
            f"{ratio_text} (< {PROGRESSION_DROP})."
        )
    else:
        sentence = (
            f"Collapse does not progress with depth: Spearman rho of log NC1 against depth "
            f"is {rho_text} ({'<' if steep else 'needs <'} {PROGRESSION_RHO}){over} and the "
            f"last layer's NC1 is {ratio_text} ({'<' if drops else 'needs <'} "
            f"{PROGRESSION_DROP})."
        )
    return Progression(rho, first, last, progresses, sentence)


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class DepthReport:
    """Neural-collapse metrics of every tapped layer, shallowest first.

    Attributes
    ----------
    layers : tuple of str
        Layer names in depth order; the last is the classifier's input.
    reduce : dict of str to str
        How each layer's output became features (`ncgeom.layers.REDUCE_MODES`).
    reports : dict of str to NCReport
        Every metric of each layer (the last one with the classifier's).
    ncc_accuracy : dict of str to float or None
        Nearest-class-centre accuracy against the labels, with the final
        means (second pass); None without one.
    ncc_unavailable : dict of str to str
        Why a layer's ``ncc_accuracy`` is None or NaN.
    """

    layers: tuple[str, ...]
    reduce: dict[str, str]
    reports: dict[str, NCReport]
    ncc_accuracy: dict[str, float | None]
    ncc_unavailable: dict[str, str] = field(default_factory=dict)

    def value(self, layer: str, metric: str) -> float | None:
        """One metric of one layer (None where unavailable, NaN where undefined)."""
        report = self._report(layer)
        if metric == "ncc_accuracy":
            return self.ncc_accuracy[layer]
        if metric not in NCReport.METRICS:
            msg = (
                f"`metric` must be a metric of ncgeom.vocabulary.METRICS or 'ncc_accuracy'; "
                f"got {metric!r}"
            )
            raise ValueError(msg)
        return getattr(report, metric)

    def reason(self, layer: str, metric: str) -> str | None:
        """Why a metric of a layer is None or NaN (None when it has a value)."""
        value = self.value(layer, metric)
        if value is not None and math.isfinite(value):
            return None
        if metric == "ncc_accuracy":
            return self.ncc_unavailable.get(layer, "not finite")
        return dict(self.reports[layer].unavailable).get(metric, "not finite")

    def _report(self, layer: str) -> NCReport:
        if layer not in self.reports:
            msg = f"`layer` must be one of {self.layers}; got {layer!r}"
            raise ValueError(msg)
        return self.reports[layer]

    def progression(self) -> Progression:
        """The fixed criterion on this report's NC1 per layer (`progression`)."""
        return progression([self.value(name, "nc1") for name in self.layers])

    def table(self, metrics: Sequence[str] = DEPTH_METRICS) -> str:
        """A markdown table: one row per layer, one column per metric (its
        vocabulary label); missing and undefined values are shown as "-"."""
        for name in metrics:
            label_of(name)
        heads = ["layer", "reduce", *(label_of(name) for name in metrics)]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for layer in self.layers:
            cells = [layer, self.reduce[layer]]
            for name in metrics:
                value = self.value(layer, name)
                ok = value is not None and math.isfinite(value)
                cells.append(f"{value:.4g}" if ok else "-")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: layers, reduce modes, values and reasons of the depth
        metrics per layer, the progression, and each layer's full report."""
        values = {
            layer: {name: self.value(layer, name) for name in DEPTH_METRICS}
            for layer in self.layers
        }
        reasons = {
            layer: {
                name: why
                for name in DEPTH_METRICS
                if (why := self.reason(layer, name)) is not None
            }
            for layer in self.layers
        }
        return jsonable(
            {
                "layers": list(self.layers),
                "reduce": dict(self.reduce),
                "metrics": list(DEPTH_METRICS),
                "labels": {name: label_of(name) for name in DEPTH_METRICS},
                "values": values,
                "reasons": reasons,
                "progression": self.progression().to_dict(),
                "reports": {layer: self.reports[layer].to_dict() for layer in self.layers},
            }
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `to_dict` as strict JSON (NaN as null) to `path`."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, allow_nan=False)
            handle.write("\n")

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        metrics: Sequence[str] = DEPTH_FIGURE_METRICS,
        ax: Any = None,
    ) -> Any:
        """Each metric against depth: log y, one line per metric, layers named.

        Values that are missing or undefined leave a gap; values exactly 0
        (complete collapse), which a log axis cannot show, are marked with a
        triangle on its bottom edge. Needs matplotlib.

        Parameters
        ----------
        path : str or path-like, optional
            Where to save the figure (the format from its suffix).
        metrics : sequence of str
            Vocabulary names of the metrics to draw.
        ax : matplotlib Axes, optional
            Draw into these axes instead of a new figure.

        Returns
        -------
        matplotlib.figure.Figure
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:
            msg = "DepthReport.plot needs matplotlib: pip install 'ncgeom[plots]'"
            raise ImportError(msg) from err
        for name in metrics:
            label_of(name)
        if ax is None:
            width = max(5.0, 0.6 * len(self.layers) + 3.0)
            fig = Figure(figsize=(width, 4.0), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
        fig = ax.figure
        depth = np.arange(len(self.layers), dtype=np.float64)
        zeros = []
        for index, name in enumerate(metrics):
            raw = [self.value(layer, name) for layer in self.layers]
            values = np.array([_plottable(value) for value in raw], dtype=np.float64)
            ax.plot(depth, values, marker="o", color=f"C{index}", label=label_of(name))
            zeros += [(at, f"C{index}") for at, value in enumerate(raw) if value == 0]
        ax.set_yscale("log")
        if zeros:
            # Exact zeros (complete collapse) have no place on a log axis: a
            # triangle on its bottom edge marks them.
            ax.autoscale_view()
            bottom = ax.get_ylim()[0]
            for at, color in zeros:
                ax.plot([at], [bottom], marker="v", color=color, clip_on=False, ls="none")
            ax.plot(
                [], [], marker="v", color="0.4", ls="none", label="exactly 0 (off the log axis)"
            )
            ax.set_ylim(bottom=bottom)
        ax.set_xticks(depth, list(self.layers), rotation=45, ha="right")
        ax.set_xlabel("layer (shallow to deep)")
        ax.set_ylabel("metric (log scale)")
        ax.set_title("Collapse through depth")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.progression().sentence


def label_of(name: str) -> str:
    """The vocabulary label of a depth or report metric (``name (SYMBOL)``)."""
    try:
        return label(name)
    except KeyError:
        msg = f"`metrics` must name metrics of ncgeom.vocabulary; got {name!r}"
        raise ValueError(msg) from None


def _plottable(value: float | None) -> float:
    """`value` on a log axis: NaN (a gap) for None, NaN, Inf and values <= 0."""
    if value is None or not math.isfinite(value) or value <= 0:
        return math.nan
    return float(value)


def _reduce_modes(reduce: str | Mapping[str, str], layers: tuple[str, ...]) -> dict[str, str]:
    """The mode of every layer, checked."""
    if isinstance(reduce, str):
        check_choice(reduce, "reduce", REDUCE_MODES)
        return dict.fromkeys(layers, reduce)
    if not isinstance(reduce, Mapping):
        msg = f"`reduce` must be a mode or a mapping of layer names to modes; got {reduce!r}"
        raise TypeError(msg)
    missing = [name for name in layers if name not in reduce]
    if missing:
        msg = f"`reduce` must give a mode for every layer; missing {missing}"
        raise ValueError(msg)
    modes = {name: reduce[name] for name in layers}
    for name, mode in modes.items():
        check_choice(mode, f"reduce[{name!r}]", REDUCE_MODES)
    return modes


def depth_report(
    stats: Mapping[str, ClassStats],
    *,
    second: Mapping[str, SecondPass] | None = None,
    classifier: Array | None = None,
    bias: Array | None = None,
    reduce: str | Mapping[str, str] = "pool",
    theory: Any = None,
    ood_mean: Array | None = None,
) -> DepthReport:
    """The metrics of every layer, a `DepthReport`.

    Parameters
    ----------
    stats : mapping of str to ClassStats
        First-pass statistics per layer in depth order (the first is the
        shallowest, the last the classifier's input), combined across
        processes.
    second : mapping of str to SecondPass, optional
        Second passes per layer (any subset): the NCC accuracy, and NC1 of
        layers whose statistics keep no Gram (flattened features).
    classifier, bias, theory, ood_mean
        As in `ncgeom.nc_report`, for the last layer only.
    reduce : str or mapping of str to str
        How each layer's output became features, recorded in the report.

    Returns
    -------
    DepthReport
        NC1 of a layer comes from its Gram when its statistics keep one,
        else from its second pass (``scatter=True``), else it is None with
        the reason; every other metric from the first-pass statistics.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, SecondPass, depth_report
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=300)
    >>> layers = {f"block{i}": np.eye(3)[y] + 0.5 ** (3 * i) * rng.normal(size=(300, 3))
    ...           for i in range(4)}
    >>> stats = {name: ClassStats.from_features(x, y, 3, gram=False) for name, x in layers.items()}
    >>> second = {name: SecondPass(s, scatter=True).update(layers[name], y)
    ...           for name, s in stats.items()}
    >>> report = depth_report(stats, second=second)
    >>> report.progression().progresses
    True
    """
    if not isinstance(stats, Mapping) or not stats:
        msg = f"`stats` must be a non-empty mapping of layer names to ClassStats; got {stats!r}"
        raise TypeError(msg) if not isinstance(stats, Mapping) else ValueError(msg)
    layers = tuple(stats)
    for name in layers:
        if not isinstance(name, str):
            msg = f"`stats` keys must be layer names (str); got {name!r}"
            raise TypeError(msg)
        check_instance(stats[name], ClassStats, f"stats[{name!r}]")
    second = dict(second or {})
    unknown = [name for name in second if name not in stats]
    if unknown:
        msg = f"`second` must name layers of `stats` {layers}; got {unknown}"
        raise ValueError(msg)
    for name, passes in second.items():
        check_instance(passes, SecondPass, f"second[{name!r}]")
    modes = _reduce_modes(reduce, layers)
    reports: dict[str, NCReport] = {}
    ncc: dict[str, float | None] = {}
    ncc_why: dict[str, str] = {}
    for name in layers:
        last = name == layers[-1]
        report = nc_report(
            stats[name],
            classifier if last else None,
            bias if last else None,
            theory=theory if last else None,
            ood_mean=ood_mean if last else None,
        )
        passes = second.get(name)
        if report.nc1 is None and stats[name].gram is None:
            if passes is not None and passes.scatter:
                report = _with_second_nc1(report, passes)
            else:
                why = {**dict(report.unavailable), "nc1": _NO_SCATTER}
                report = replace(report, unavailable=tuple(why.items()))
        reports[name] = report
        if passes is None or not passes.ncc:
            ncc[name] = None
            ncc_why[name] = _NO_SECOND if passes is None else _NO_NCC
        else:
            ncc[name] = float(to_host(passes.ncc_accuracy()))
            if not math.isfinite(ncc[name]):
                ncc_why[name] = "the second pass saw no samples"
    return DepthReport(layers, modes, reports, ncc, ncc_why)


def _with_second_nc1(report: NCReport, passes: SecondPass) -> NCReport:
    """`report` with NC1 from the second pass (and its reason when undefined)."""
    xp = passes.stats.xp
    wide = wide_float(xp)
    flags = passes.view.flags()
    names = [flag for flag in DEGENERATE_METRICS["nc1"] if flag in flags]
    host = to_host(
        xp.stack(
            [
                xp.astype(passes.nc1(), wide),
                xp.astype(passes.same_samples, wide),
                *(xp.astype(flags[flag], wide) for flag in names),
            ]
        )
    )
    value, same = float(host[0]), bool(host[1])
    why = dict(report.unavailable)
    why.pop("nc1", None)
    if not same:
        why["nc1"] = _MISMATCH
    else:
        raised = [flag for flag, hit in zip(names, host[2:], strict=True) if hit]
        if raised:
            why["nc1"] = DEGENERATE_REASONS[raised[0]]
    if not math.isfinite(value) and "nc1" not in why:
        why["nc1"] = "not finite"
    if "nc1" in why and math.isfinite(value):
        value = math.nan
    return replace(report, nc1=value, unavailable=tuple(why.items()))
