"""Figures of ``ncgeom reproduce`` (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .reproduce_report import most_imbalanced

__all__ = ["write_figures"]

PANELS = (
    ("nc1", "NC1"),
    ("gof_error", "NC2_H: Gram of means vs theory"),
    ("classifier_gram_error", "NC2_WWT: classifier Gram vs theory"),
    ("logit_structure_error", "NC3_WH: logits vs theory"),
    ("orthogonality_error", "orthogonality error"),
    ("gap", "objective gap (f - f*) / f*"),
)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _positive(values: list[Any]) -> np.ndarray:
    array = np.array([np.nan if v is None else float(v) for v in values])
    return np.where(array > 0, array, np.nan)


def write_figures(out: Path, summary: dict[str, Any]) -> list[Path]:
    """Write the figures of experiments (a) to (c) and the controlled experiment into `out`.

    Returns the paths written: ``training.png`` (a), ``per_class.png`` (b),
    ``threshold.png`` (c, when the sweep ran: the fitted threshold curve with
    seeds as points), ``exponent.png`` (the alignment exponent fit) and
    ``controlled.png`` (when the controlled experiment ran). Only runs in the
    terminal phase are drawn.
    """
    paths: list[Path] = []
    from .reproduce_report import reached

    runs = [r for r in summary["runs"] if r.get("experiment") == "a" and reached(r)]
    if runs:
        paths.append(_training(out / "training.png", runs))
    worst = most_imbalanced([r for r in summary["runs"] if reached(r)])
    if worst is not None:
        paths.append(_per_class(out / "per_class.png", worst))
    if summary.get("threshold_sweep"):
        paths.append(_threshold(out / "threshold.png", summary))
    if summary.get("alignment", {}).get("runs"):
        paths.append(_exponent(out / "exponent.png", summary))
    controlled = [r for r in summary["runs"] if r.get("experiment") == "controlled"]
    if controlled and worst is not None:
        paths.append(_controlled(out / "controlled.png", worst, controlled[0]))
    return paths


def _training(path: Path, runs: list[dict[str, Any]]) -> Path:
    figure = _figure(13, 7.5)
    grid = figure.subplots(2, 3)
    names = list(dict.fromkeys(run["name"] for run in runs))
    palette = _colours(len(names))
    first_seed = min(run["seed"] for run in runs)
    for axes, (key, title) in zip(grid.flat, PANELS, strict=True):
        for run in runs:
            colour = palette[names.index(run["name"])]
            progress = [entry["epoch"] / run["epochs"] for entry in run["history"]]
            style = "-" if run["dataset"] == "digits" else "--"
            label = run["name"] if run["seed"] == first_seed else None
            axes.plot(
                progress,
                _positive([e[key] for e in run["history"]]),
                style,
                color=colour,
                label=label,
                alpha=0.9 if label else 0.4,
            )
        axes.set_yscale("log")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("fraction of the training epochs")
        axes.grid(alpha=0.3, which="both")
    handles, labels = grid.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9)
    figure.suptitle(
        "(a) Neural-collapse metrics over training (solid: digits MLP, dashed: MNIST-1D CNN)"
    )
    figure.savefig(path, dpi=100)
    return path


def _per_class(path: Path, run: dict[str, Any]) -> Path:
    figure = _figure(13, 4.2)
    left, middle, right = figure.subplots(1, 3, width_ratios=[1, 1, 1.4])
    measured = np.asarray(run["feature_gram"])
    predicted = np.diag(np.asarray(run["predicted_norms"]) ** 2)
    top = max(measured.max(), predicted.max())
    for axes, matrix, title in (
        (left, measured, "measured Gram of class means"),
        (middle, predicted, "predicted Gram (UFM+ optimum)"),
    ):
        image = axes.imshow(matrix, cmap="viridis", vmin=0, vmax=top)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("class")
        axes.set_ylabel("class")
    figure.colorbar(image, ax=[left, middle], shrink=0.8)
    classes = np.arange(len(run["counts"]))
    width = 0.2
    right.bar(
        classes - 1.5 * width,
        run["measured_norms"],
        width,
        label="norm, measured",
        color="tab:blue",
    )
    right.bar(
        classes - 0.5 * width,
        run["predicted_norms"],
        width,
        label="norm, predicted",
        color="tab:blue",
        alpha=0.4,
        hatch="//",
    )
    right.bar(
        classes + 0.5 * width,
        run["measured_margins"],
        width,
        label="margin, measured",
        color="tab:orange",
    )
    right.bar(
        classes + 1.5 * width,
        run["predicted_margins"],
        width,
        label="margin, predicted",
        color="tab:orange",
        alpha=0.4,
        hatch="//",
    )
    right.set_xticks(classes, [f"{k}\nn={n}" for k, n in enumerate(run["counts"])], fontsize=8)
    right.set_title("per-class feature-mean norm and margin", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    figure.suptitle(f"(b) {run['name']}: measured against predicted")
    figure.savefig(path, dpi=100)
    return path


def _threshold(path: Path, summary: dict[str, Any]) -> Path:
    """Per sweep: the fitted survival curve with each (seed, class) outcome as a point
    (top), and the measured norms against the predicted curve (bottom). Terminal-phase
    runs only."""
    from matplotlib.ticker import NullFormatter

    from ncgeom.theory import ufm_relu_optimum

    from .reproduce_report import reached

    fits = summary["threshold"]["by_group"]
    sweep = [p for p in summary["threshold_sweep"] if reached(p)]
    seeds = sorted({p["seed"] for p in summary["threshold_sweep"]})
    colours = dict(zip(seeds, _colours(len(seeds)), strict=True))
    figure = _figure(4.2 * len(fits) + 0.6, 7.5)
    axes = figure.subplots(2, len(fits), squeeze=False, sharex=True)
    rng = np.random.default_rng(0)
    for column, (group, fit) in enumerate(fits.items()):
        top, bottom = axes[0, column], axes[1, column]
        points = [p for p in sweep if p["group"] == group]
        outcomes = fit.get("points", [])
        for seed in seeds:
            for partial in (False, True):
                chosen = [q for q in outcomes if q["seed"] == seed and q["partial"] == partial]
                if not chosen:
                    continue
                size = len(chosen)
                top.scatter(
                    np.array([q["ratio"] for q in chosen])
                    * np.exp(0.03 * rng.standard_normal(size)),
                    np.array([float(q["survived"]) for q in chosen])
                    + 0.06 * rng.standard_normal(size),
                    color=colours[seed],
                    marker="s" if partial else "o",
                    s=20,
                    alpha=0.75,
                )
        grid = np.geomspace(0.2, 5.0, 80)
        if fit.get("fitted_over_predicted") is not None:
            star, slope = fit["fitted_over_predicted"], fit["slope"]
            top.plot(grid, 1 / (1 + (grid / star) ** slope), color="black", label="fit")
            top.axvline(star, color="black", linewidth=1)
            top.axvspan(*fit["ci"], color="black", alpha=0.12, label="95% interval")
        top.axvline(1.0, color="tab:red", linestyle=":", label="predicted")
        top.set_title(f"{group}: {_fit_text(fit)}", fontsize=9)
        top.set_ylabel("minority class survived (1) or collapsed (0)")
        for seed in seeds:
            for minority, marker in ((True, "o"), (False, "^")):
                xs, ys = [], []
                for point in (p for p in points if p["seed"] == seed):
                    counts = point["counts"]
                    ratio = np.sqrt(
                        point["lambda_w"] * point["lambda_h"] / min(point["critical_products"])
                    )
                    for k, n in enumerate(counts):
                        if (n == min(counts)) == minority:
                            xs.append(ratio)
                            ys.append(point["measured_norms"][k])
                if xs:
                    bottom.scatter(xs, ys, color=colours[seed], marker=marker, s=16, alpha=0.7)
        if points:
            p0 = points[0]
            lam_c = np.sqrt(min(p0["critical_products"]))
            ratio_wh = p0["lambda_w"] / p0["lambda_h"]
            curves = np.array(
                [
                    ufm_relu_optimum(
                        p0["counts"], lam_c * r * np.sqrt(ratio_wh), lam_c * r / np.sqrt(ratio_wh)
                    ).feature_norms
                    for r in grid
                ]
            )
            rare, head = int(np.argmin(p0["counts"])), int(np.argmax(p0["counts"]))
            bottom.plot(grid, curves[:, rare], color="tab:red", label="predicted, minority (o)")
            bottom.plot(grid, curves[:, head], color="tab:blue", label="predicted, head (^)")
        bottom.set_xscale("log")
        bottom.set_xticks([0.25, 0.5, 1.0, 2.0, 4.0], labels=["0.25", "0.5", "1", "2", "4"])
        bottom.xaxis.set_minor_formatter(NullFormatter())
        bottom.set_xlabel("sqrt(lambda_W lambda_H) / minority critical lambda")
        bottom.set_ylabel("class-mean norm")
        bottom.grid(alpha=0.3, which="both")
        top.grid(alpha=0.3, which="both")
    for seed, colour in colours.items():
        axes[0, 0].scatter([], [], color=colour, label=f"seed {seed}")
    axes[0, 0].scatter([], [], color="grey", marker="s", label="partial (counted survived)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    if axes[1, 0].get_legend_handles_labels()[0]:
        axes[1, 0].legend(fontsize=7)
    figure.suptitle("Minority-collapse threshold: outcomes per seed and the fitted curve")
    figure.savefig(path, dpi=100)
    return path


def _fit_text(fit: dict[str, Any]) -> str:
    if fit.get("fitted_over_predicted") is None:
        return fit.get("reason") or "no fit"
    low, high = fit["ci"]
    return f"fitted/predicted {fit['fitted_over_predicted']:.3g} [{low:.3g}, {high:.3g}]"


def _exponent(path: Path, summary: dict[str, Any]) -> Path:
    """The fitted alignment exponent per run (seeds as colours) against the prediction 1/2,
    and the scaled alignment error against classic self-duality."""
    from .reproduce_report import EXPONENT_BAND, reached

    alignment = summary["alignment"]
    points = [
        p
        for p in summary["threshold_sweep"] + summary["runs"]
        if reached(p)
        and p.get("alignment")
        and all(o == "alive" for o in p["outcomes"])
        and all(p["predicted_alive"])
    ]
    seeds = sorted({p["seed"] for p in points})
    colours = dict(zip(seeds, _colours(len(seeds)), strict=True))
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    for index, point in enumerate(points):
        marker = "s" if point.get("balanced_start") else "o"
        left.scatter(
            index,
            point["alignment"]["exponent"],
            color=colours[point["seed"]],
            marker=marker,
            s=22,
        )
        right.scatter(
            point["alignment"]["error_classic"],
            point["alignment"]["error_half"],
            color=colours[point["seed"]],
            marker=marker,
            s=22,
        )
    left.axhline(0.5, color="tab:red", linestyle=":", label="predicted a = 1/2")
    left.axhspan(*EXPONENT_BAND, color="tab:red", alpha=0.08, label="band")
    if alignment.get("exponent") is not None:
        left.axhline(alignment["exponent"], color="black", label="estimate")
        left.axhspan(*alignment["ci"], color="black", alpha=0.12, label="95% interval")
    left.set_xlabel("run (terminal phase, every class alive)")
    left.set_ylabel("a = argmin ||nf(W) - nf(S(a))||")
    left.set_title("Alignment exponent per run (o standard, s balanced start)", fontsize=9)
    for seed, colour in colours.items():
        left.scatter([], [], color=colour, label=f"seed {seed}")
    left.legend(fontsize=7)
    top = max([0.1] + [p["alignment"]["error_classic"] for p in points])
    right.plot([0, top], [0, top], color="grey", linestyle="--", label="equal")
    right.set_xlabel("classic self-duality error (a = 0)")
    right.set_ylabel("scaled alignment error (a = 1/2)")
    right.set_title("Scaled alignment against classic self-duality", fontsize=9)
    right.legend(fontsize=7)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def _controlled(path: Path, standard: dict[str, Any], balanced: dict[str, Any]) -> Path:
    figure = _figure(12, 4.2)
    left, right = figure.subplots(1, 2)
    counts = standard["counts"]
    rare = [k for k, n in enumerate(counts) if n == min(counts)]
    head = int(np.argmax(counts))
    start = balanced["balanced_start"] * balanced["epochs"]
    runs = ((standard, "--", "standard"), (balanced, "-", "class-balanced start"))
    for run, style, label in runs:
        epochs = [e["epoch"] for e in run["history"]]
        norms = np.array([e["measured_norms"] for e in run["history"]])
        left.plot(
            epochs,
            norms[:, rare].mean(axis=1),
            style,
            color="tab:red",
            label=f"minority classes (n={counts[rare[0]]}), {label}",
        )
        left.plot(epochs, norms[:, head], style, color="tab:blue", label=f"head class, {label}")
        right.plot(
            epochs,
            _positive([e["gap"] for e in run["history"]]),
            style,
            color="black",
            label=label,
        )
    predicted = standard["predicted_norms"]
    for axes in (left, right):
        axes.axvspan(0, start, color="grey", alpha=0.12, label="balanced cross-entropy")
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3, which="both")
    left.axhline(predicted[rare[0]], color="tab:red", linewidth=0.8, alpha=0.7)
    left.axhline(predicted[head], color="tab:blue", linewidth=0.8, alpha=0.7)
    left.set_ylabel("norm of the class mean (thin lines: predicted)")
    left.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("objective gap (f - f*) / f*")
    right.legend(fontsize=8)
    figure.suptitle(
        f"Controlled experiment ({standard['name']}): same objective, seed and epochs; "
        "only the first epochs' class weighting differs"
    )
    figure.savefig(path, dpi=100)
    return path


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]
