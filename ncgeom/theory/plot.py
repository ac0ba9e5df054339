"""Matplotlib figures.

matplotlib is imported only when a figure is made, and figures are built with
the object-oriented API on an Agg canvas: no pyplot state, no change to the
user's matplotlib backend. Install it with ``pip install ncgeom[plots]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._lib.backend import resolve_namespace, to_host
from .optimum import UFMOptimum, _margins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["theory_figure"]


def theory_figure(optimum: UFMOptimum, *, figsize: tuple[float, float] = (12.0, 4.0)) -> Figure:
    """Margins and norms of the UFM+ optimum against the class counts.

    Three panels against ``n_k`` (log scale): the margin ``M_k``, the feature
    norm ``||h_k||`` and the classifier norm ``||w_k||`` of each class. The
    lines are the closed forms: the margin and feature norm a class of ``n``
    samples would have with the same total count ``N``, and the classifier
    norm ``gamma sqrt(n ||h(n)||^2 (1 - 2/K) + S/K^2)`` of such a class with
    the other classes as they are (``S = sum_k n_k ||h_k||^2``,
    ``gamma = sqrt(K lambda_H / ((K-1) lambda_W))``; it passes through every
    class's point). The shaded band left of the collapse boundary ``n_crit``
    holds the classes whose features collapse to zero.

    Parameters
    ----------
    optimum : UFMOptimum
        From :func:`ncgeom.theory.ufm_relu_optimum`, on any backend.
    figsize : tuple of float
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Save it with ``fig.savefig(path)``.

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.plot import theory_figure
    >>> fig = theory_figure(ufm_relu_optimum([5000, 2000, 500, 100, 20], 5e-3, 1e-3))
    >>> len(fig.axes)
    3
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        msg = "theory_figure needs matplotlib: pip install 'ncgeom[plots]'"
        raise ImportError(msg) from err

    counts = to_host(optimum.counts).astype(np.float64)
    alive = to_host(optimum.alive).astype(bool)
    margins = to_host(optimum.margins).astype(np.float64)
    h_norms = to_host(optimum.feature_norms).astype(np.float64)
    w_norms = to_host(optimum.classifier_norms).astype(np.float64)
    n_crit = optimum.collapse_count
    curve_n, curve = _curves(optimum, counts)

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax_m, ax_h, ax_w = fig.subplots(1, 3)
    ax_m.plot(curve_n, curve["margins"], color="C0", lw=1, label="closed form, same N")
    ax_h.plot(curve_n, curve["feature_norms"], color="C0", lw=1, label="closed form, same N")
    ax_w.plot(
        curve_n, curve["classifier_norms"], color="C0", lw=1, label="closed form, others fixed"
    )
    for ax, values in ((ax_m, margins), (ax_h, h_norms), (ax_w, w_norms)):
        ax.scatter(counts[alive], values[alive], color="C0", zorder=3, label="alive class")
        ax.scatter(
            counts[~alive], values[~alive], color="C3", marker="x", zorder=3,
            label="collapsed class",
        )  # fmt: skip
        low = min(curve_n[0], n_crit)
        ax.set_xscale("log")
        ax.axvspan(low, n_crit, color="C3", alpha=0.08, lw=0)
        ax.axvline(n_crit, color="C3", ls="--", lw=1, label=f"collapse boundary {n_crit:.3g}")
        ax.set_xlim(low, curve_n[-1])
        ax.set_xlabel("samples in the class, n_k")
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize="small")
    ax_w.legend(fontsize="small")
    ax_m.set_title("margin M_k")
    ax_h.set_title("feature norm ‖h_k‖")
    ax_w.set_title("classifier norm ‖w_k‖")
    ax_m.set_ylabel("true minus other logit, M_k")
    ax_h.set_ylabel("length of the class-mean feature, ‖h_k‖")
    ax_w.set_ylabel("length of the classifier row, ‖w_k‖")
    fig.suptitle(
        f"UFM+ optimum: K = {optimum.num_classes}, N = {int(counts.sum())}, "
        f"lambda_W = {optimum.lambda_w:g}, lambda_H = {optimum.lambda_h:g}"
    )
    return fig


def _curves(optimum: UFMOptimum, counts: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-class formulas on a grid of counts, N held at its actual value."""
    xp = resolve_namespace(None)

    n_crit = optimum.collapse_count
    low = max(min(counts.min(), n_crit) / 2.0, 1e-3)
    high = max(counts.max(), n_crit) * 2.0
    grid = np.geomspace(low, high, 400)
    # The margin and feature norm of a class depend on its own count, K and N
    # only; the classifier norms couple the classes and are drawn as points.
    margins, feature_sq = _margins(
        grid,
        grid / n_crit - 1.0,
        grid > n_crit,
        optimum.num_classes,
        optimum.lambda_w,
        optimum.lambda_h,
        xp,
    )
    # w_j = gamma (sqrt(n_j) h_j - (1/K) sum_k sqrt(n_k) h_k) with orthogonal
    # h_k: ||w_j||^2 = gamma^2 (n_j ||h_j||^2 (1 - 2/K) + S / K^2).
    k = optimum.num_classes
    gamma_sq = k * optimum.lambda_h / ((k - 1) * optimum.lambda_w)
    own_sq = to_host(optimum.feature_norms).astype(np.float64) ** 2
    total = float(np.sum(to_host(optimum.counts).astype(np.float64) * own_sq))
    w_sq = gamma_sq * (grid * np.asarray(feature_sq) * (1 - 2 / k) + total / k**2)
    return grid, {
        "margins": margins,
        "feature_norms": np.sqrt(feature_sq),
        "classifier_norms": np.sqrt(w_sq),
    }
