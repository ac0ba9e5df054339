"""Figures of ``ncgeom demo`` (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_figures"]

CURVES = (
    ("nc1", "NC1"),
    ("cdnv", "CDNV"),
    ("orthogonality_error", "orthogonality error"),
    ("scaled_alignment_error", "W vs sqrt(n)-scaled means"),
    ("gof_error", "NC2_H (feature Gram vs theory)"),
    ("classifier_gram_error", "NC2_WWT (classifier Gram vs theory)"),
    ("logit_structure_error", "NC3_WH (logits vs theory)"),
)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_figures(
    out: Path,
    evaluations: list[dict[str, Any]],
    means: np.ndarray,
    predicted_gram: np.ndarray,
    counts: list[int],
) -> list[Path]:
    """Write ``metrics.png``, ``gram.png`` and ``classes.png`` into `out`."""
    paths = [out / "metrics.png", out / "gram.png", out / "classes.png"]
    epochs = [entry["epoch"] for entry in evaluations]

    figure = _figure(8, 5)
    axes = figure.add_subplot()
    for key, label in CURVES:
        values = np.array([np.nan if e.get(key) is None else e[key] for e in evaluations])
        if np.any(values > 0):
            axes.plot(epochs, np.where(values > 0, values, np.nan), label=label)
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("metric (log scale)")
    axes.set_title("Neural-collapse metrics during training")
    axes.legend(fontsize="small")
    figure.savefig(paths[0], dpi=110)

    figure = _figure(10, 4.2)
    measured = means @ means.T
    for index, (matrix, title) in enumerate(
        ((measured, "measured  mu mu^T"), (predicted_gram, "predicted (UFM+ optimum)"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        scale = np.linalg.norm(matrix)
        image = axes.imshow(matrix / scale if scale > 0 else matrix, cmap="viridis")
        axes.set_title(f"feature Gram, {title}\n(normalised to unit Frobenius norm)")
        axes.set_xlabel("class")
        axes.set_ylabel("class")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.savefig(paths[1], dpi=110)

    final = evaluations[-1]
    figure = _figure(10, 4.2)
    classes = np.arange(len(counts))
    for index, (key, title) in enumerate(
        (("feature_norms", "||h_k||"), ("margins", "margin M_k"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.plot(classes, final[f"{key}_measured"], "o-", label="measured")
        axes.plot(classes, final[f"{key}_predicted"], "s--", label="predicted")
        axes.set_xticks(classes, [f"{k}\nn={n}" for k, n in zip(classes, counts, strict=True)])
        axes.set_title(f"{title} per class (final epoch)")
        axes.legend()
    figure.savefig(paths[2], dpi=110)
    return paths
