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
    ``threshold.png`` (c, when the sweep ran) and ``controlled.png`` (when the
    controlled experiment ran).
    """
    paths: list[Path] = []
    runs = [r for r in summary["runs"] if r.get("experiment") == "a"]
    if runs:
        paths.append(_training(out / "training.png", runs))
    worst = most_imbalanced(summary["runs"])
    if worst is not None:
        paths.append(_per_class(out / "per_class.png", worst))
    if summary.get("threshold_sweep"):
        paths.append(_threshold(out / "threshold.png", summary["threshold_sweep"]))
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


def _threshold(path: Path, sweep: list[dict[str, Any]]) -> Path:
    from ncgeom.theory import ufm_relu_optimum

    counts = sweep[0]["counts"]
    rare, head = int(np.argmin(counts)), int(np.argmax(counts))
    lambdas = np.array([p["lambda_w"] for p in sweep])
    critical = np.sqrt(np.asarray(sweep[0]["critical_products"]))
    grid = np.geomspace(lambdas.min() / 1.3, lambdas.max() * 1.3, 300)
    curves = np.array([ufm_relu_optimum(counts, lam, lam).feature_norms for lam in grid])
    figure = _figure(9, 5)
    axes = figure.add_subplot()
    minority = [k for k, n in enumerate(counts) if n == counts[rare]]
    majority = [k for k, n in enumerate(counts) if n == counts[head]]
    for ks, colour, label in (
        (majority, "tab:blue", f"head classes (n={counts[head]})"),
        (minority, "tab:red", f"minority classes (n={counts[rare]})"),
    ):
        axes.plot(grid, curves[:, ks[0]], color=colour, label=f"{label}: predicted")
        xs = np.repeat(lambdas, len(ks))
        ys = np.array([[p["measured_norms"][k] for k in ks] for p in sweep]).ravel()
        axes.scatter(
            xs,
            ys,
            color=colour,
            marker="o",
            s=22,
            alpha=0.7,
            label=f"{label}: measured (each class)",
        )
        lam_c = critical[ks[0]]
        axes.axvline(lam_c, color=colour, linestyle=":", linewidth=1.5)
        axes.axvspan(lam_c / 2, lam_c * 2, color=colour, alpha=0.07)
    axes.set_xscale("log")
    axes.set_xlabel("lambda = lambda_W = lambda_H")
    axes.set_ylabel("norm of the class mean of the features")
    axes.set_title(
        "(c) Minority collapse: measured norms against the predicted curve\n"
        "dotted: predicted threshold; shaded: within 4x of it in lambda_W lambda_H",
        fontsize=10,
    )
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, which="both")
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
