"""Figures of ``ncgeom demo`` (matplotlib, Agg canvas, no pyplot state).

Every metric is named by `ncgeom.vocabulary` (``name (SYMBOL)``); every axis
says in words what it shows; all figures share one style (`STYLE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ncgeom.vocabulary import FIGURE_METRICS, METRICS, PER_CLASS

__all__ = ["STYLE", "write_depth_figure", "write_figures"]

#: Sizes shared by every figure of the demo.
STYLE = {"title": 11, "label": 10, "tick": 9, "legend": 8, "dpi": 120}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(axes: Any, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=STYLE["title"])
    axes.set_xlabel(xlabel, fontsize=STYLE["label"])
    axes.set_ylabel(ylabel, fontsize=STYLE["label"])
    axes.tick_params(labelsize=STYLE["tick"])
    axes.grid(alpha=0.3)


def write_figures(
    out: Path,
    evaluations: list[dict[str, Any]],
    means: np.ndarray,
    predicted_gram: np.ndarray,
    counts: list[int],
    *,
    objective: Sequence[float] | None = None,
    optimum: float | None = None,
) -> list[Path]:
    """Write ``metrics.png``, ``gram.png`` and ``classes.png`` into `out`.

    Parameters
    ----------
    out : Path
        Existing folder.
    evaluations : list of dict
        One ``NCReport.to_dict()`` (with ``epoch``) per evaluation.
    means : array (K, d)
        Final class means.
    predicted_gram : array (K, K)
        The optimum's feature Gram.
    counts : list of int
        Samples per class.
    objective : sequence of float, optional
        The training objective at every epoch (for the gap panel).
    optimum : float, optional
        The optimal objective f*.

    Returns
    -------
    list of Path
    """
    paths = [out / "metrics.png", out / "gram.png", out / "classes.png"]
    _metrics_figure(paths[0], evaluations, objective, optimum)
    _gram_figure(paths[1], means, predicted_gram)
    _classes_figure(paths[2], evaluations[-1], counts)
    return paths


def _metrics_figure(
    path: Path,
    evaluations: list[dict[str, Any]],
    objective: Sequence[float] | None,
    optimum: float | None,
) -> None:
    epochs = np.array([entry["epoch"] for entry in evaluations])
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors
    figure = _figure(13, 4.8)
    gap_axes, metric_axes = figure.subplots(1, 2, width_ratios=(1, 1.2))
    if objective is not None and optimum is not None:
        gap = np.asarray(objective, dtype=np.float64) - optimum
        every = np.arange(1, len(gap) + 1)
        gap_axes.plot(every, np.where(gap > 0, gap, np.nan), color="C0", label="every epoch")
        evaluated = np.array([e.get("objective") or np.nan for e in evaluations]) - optimum
        gap_axes.plot(epochs, evaluated, "o", color="C1", ms=3, label="at evaluations")
        gap_axes.set_yscale("log")
        gap_axes.legend(fontsize=STYLE["legend"])
        title = f"Objective minus the optimum f* = {optimum:.4g}"
    else:
        title = "Objective gap: no objective recorded"
    _style(gap_axes, title, "epoch", "objective gap f - f* (log scale)")
    for index, name in enumerate(FIGURE_METRICS):
        metric = METRICS[name]
        distances = [
            np.nan
            if (e.get("verdict") or {}).get("metrics", {}).get(name, {}).get("distance") is None
            else e["verdict"]["metrics"][name]["distance"]
            for e in evaluations
        ]
        values = np.array(distances, dtype=np.float64)
        if np.any(values > 0):
            style = "-" if metric.expect == "zero" else "--"
            metric_axes.plot(
                epochs,
                np.where(values > 0, values, np.nan),
                style,
                color=colours[(2 * index) % 20 + (2 * index) // 20],
                label=metric.label,
            )
    metric_axes.set_yscale("log")
    metric_axes.legend(
        fontsize=STYLE["legend"],
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title=_LEGEND_TITLE,
        title_fontsize=STYLE["legend"],
    )
    _style(
        metric_axes,
        "Metrics: distance to their value at the optimum",
        "epoch",
        "|measured - optimum| (log scale)",
    )
    figure.savefig(path, dpi=STYLE["dpi"])


_LEGEND_TITLE = "solid: 0 at the optimum\ndashed: count-dependent value\n(distance 0 not drawn)"


def _gram_figure(path: Path, means: np.ndarray, predicted_gram: np.ndarray) -> None:
    from matplotlib.colors import Normalize, TwoSlopeNorm

    measured = means @ means.T
    panels = [
        _unit(measured),
        _unit(np.asarray(predicted_gram, dtype=np.float64)),
    ]
    difference = panels[0] - panels[1]
    k = measured.shape[0]
    figure = _figure(13, 4.4)
    axes = figure.subplots(1, 3)
    shared = Normalize(
        vmin=min(0.0, *(p.min() for p in panels)), vmax=max(p.max() for p in panels)
    )
    titles = ("measured (final epoch)", "at the optimum (UFM+ closed form)")
    for ax, matrix, title in zip(axes[:2], panels, titles, strict=True):
        image = ax.imshow(matrix, cmap="viridis", norm=shared)
        _matrix_axes(ax, f"Feature Gram mu_k . mu_l,\n{title}", k)
    figure.colorbar(image, ax=axes[:2], shrink=0.85, label="entry / Frobenius norm (shared)")
    bound = max(float(np.abs(difference).max()), 1e-12)
    image = axes[2].imshow(
        difference, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    )
    _matrix_axes(axes[2], "Difference,\nmeasured minus optimum", k)
    figure.colorbar(image, ax=axes[2], shrink=0.85, label="difference of normalised entries")
    figure.savefig(path, dpi=STYLE["dpi"])


def _unit(matrix: np.ndarray) -> np.ndarray:
    scale = np.linalg.norm(matrix)
    return matrix / scale if scale > 0 else matrix


def _matrix_axes(ax: Any, title: str, k: int) -> None:
    ax.set_title(title, fontsize=STYLE["title"])
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.tick_params(labelsize=STYLE["tick"])
    ax.set_xlabel("class l", fontsize=STYLE["label"])
    ax.set_ylabel("class k", fontsize=STYLE["label"])


def _classes_figure(path: Path, final: dict[str, Any], counts: list[int]) -> None:
    figure = _figure(12, 4.6)
    classes = np.arange(len(counts))
    verdict = final.get("verdict") or {}
    collapsed = verdict.get("predicted_collapsed", [])
    threshold = verdict.get("collapse_count")
    for index, key in enumerate(("feature_norms", "margins")):
        symbol, words = PER_CLASS[key]
        axes = figure.add_subplot(1, 2, index + 1)
        measured, predicted = final.get(f"{key}_measured"), final.get(f"{key}_predicted")
        if measured is not None:
            axes.plot(classes, measured, "o-", label="measured, final epoch")
        if predicted is not None:
            axes.plot(classes, predicted, "s--", label="at the optimum")
        for k in collapsed:
            axes.axvspan(k - 0.4, k + 0.4, color="C3", alpha=0.1, lw=0)
        if collapsed:
            axes.plot([], [], "s", color="C3", alpha=0.3, label="predicted to collapse")
        axes.set_xticks(classes, [f"{k}\n{n}" for k, n in zip(classes, counts, strict=True)])
        note = f"; collapse at n_k <= {threshold:.3g}" if threshold is not None else ""
        _style(
            axes,
            f"{symbol}: {words}",
            f"class (top) and its samples n_k (bottom){note}",
            {"feature_norms": "feature norm", "margins": "margin"}[key] + f" {symbol}",
        )
        axes.legend(fontsize=STYLE["legend"])
    figure.savefig(path, dpi=STYLE["dpi"])


def write_depth_figure(out: Path, depth: Any) -> Path:
    """Write ``depth.png``: the depth metrics against the layers, log scale.

    Parameters
    ----------
    out : Path
        Existing folder.
    depth : ncgeom.DepthReport
        The depth report of the trained network.

    Returns
    -------
    Path
        The file written.
    """
    path = out / "depth.png"
    figure = _figure(6.4, 4.2)
    axes = figure.subplots()
    depth.plot(ax=axes)
    _style(
        axes,
        "Collapse through depth (after training)",
        "hidden layer's output (shallow to deep; the last feeds the classifier)",
        "metric (log scale)",
    )
    axes.legend(fontsize=STYLE["legend"])
    figure.savefig(path, dpi=STYLE["dpi"])
    return path
