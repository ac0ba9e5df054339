"""The criteria that decide a class's fate and the terminal phase, fixed in advance.

One definition serves the demo, ``ncgeom reproduce`` and the verdict of
`ncgeom.report` / the torch tracker, so that a class called "collapsed" in one
place is collapsed in all of them.

Class outcomes (`class_outcomes`), from the measured class-mean norms and the
norms of the UFM+ optimum (`ncgeom.ufm_relu_optimum(...).feature_norms`):

- **alive**: a class the optimum keeps alive whose measured norm is at least
  `ALIVE_FRACTION` (1/2) of its predicted norm;
- **collapsed**: measured norm at most `COLLAPSED_FRACTION` (5%) of the
  largest measured norm among the classes the optimum keeps alive (a class
  predicted to collapse has no predicted norm to compare with, so the
  alive classes give the scale; where no class is predicted alive, the
  caller's ``scale``, e.g. the largest alive norm of a sweep with the same
  counts);
- **partial**: anything else. A class predicted to collapse is never "alive":
  it is collapsed or partial.

The terminal phase (`terminal_phase`): training reached it when

- the train accuracy is `TRAIN_ACCURACY` (100%) on every class that did not
  collapse (`accuracy_classes`: observed alive or partial). A collapsed class
  cannot be classified without a bias, so it is left out. The classes are
  chosen by what was measured, not by the prediction: a class predicted alive
  that the network lost is an outcome to report, not a run that failed to
  train (choosing by the prediction would drop exactly the runs that
  disagree with it), and
- the relative KKT residual of the UFM+ objective over ``(W, H >= 0)`` at the
  final features and classifier (`ncgeom.theory.kkt.ufm_kkt_residual`) is at
  most `KKT_BOUND`, and
- when given, the relative gradient norm of the training objective in the
  network's parameters is at most `GRAD_BOUND`.

Runs that miss the terminal phase are reported apart and kept out of every
pooled figure. The bounds are constants of this module; the docs
(``docs/reproduce.md``) state the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib.backend import to_host

__all__ = [
    "ALIVE_FRACTION",
    "COLLAPSED_FRACTION",
    "GRAD_BOUND",
    "KKT_BOUND",
    "OUTCOMES",
    "TRAIN_ACCURACY",
    "TerminalPhase",
    "accuracy_classes",
    "class_outcomes",
    "criteria_dict",
    "terminal_phase",
]

#: A class predicted alive is alive when its measured norm is at least this
#: fraction of its predicted norm.
ALIVE_FRACTION = 0.5
#: A class is collapsed when its measured norm is at most this fraction of the
#: largest measured norm among the classes predicted alive.
COLLAPSED_FRACTION = 0.05
#: Train accuracy required on the classes not collapsed.
TRAIN_ACCURACY = 1.0
#: Largest relative KKT residual of the UFM+ objective over (W, H >= 0) in the
#: terminal phase (`ncgeom.theory.kkt.ufm_kkt_residual`).
KKT_BOUND = 0.02
#: Largest relative gradient norm of the training objective in the network's
#: parameters, ``||grad f|| / (||grad data term|| + ||grad penalties||)``.
GRAD_BOUND = 0.05
#: The three outcomes of `class_outcomes`.
OUTCOMES = ("alive", "collapsed", "partial")


def _host_vector(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (list, tuple)):
        host = np.asarray([math.nan if v is None else float(v) for v in values])
    else:
        host = np.asarray(to_host(values), dtype=np.float64)
    if host.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (one norm per class), got shape {host.shape}")
    return host.astype(np.float64)


def class_outcomes(
    measured_norms: Any, predicted_norms: Any, *, scale: float | None = None
) -> list[str]:
    """The outcome of each class: "alive", "collapsed" or "partial".

    Parameters
    ----------
    measured_norms : array or sequence, shape (K,)
        Measured class-mean norms ``||h_k||`` (any array-API array, or floats).
    predicted_norms : array or sequence, shape (K,)
        Class-mean norms at the UFM+ optimum; 0 for a class predicted to
        collapse.
    scale : float, optional
        The norm that collapse is judged against when no class is predicted
        alive (the optimum is then ``W = H = 0``), e.g. the largest alive
        norm of a sweep over lambda with the same counts. Default: the largest
        measured norm of this call.

    Returns
    -------
    list of str
        One of `OUTCOMES` per class (see the module docstring). A NaN
        measured norm gives "partial".

    Raises
    ------
    ValueError
        If the two have different lengths or are not 1-D.

    Examples
    --------
    >>> class_outcomes([1.0, 0.9, 0.3, 0.01], [1.0, 1.0, 0.7, 0.0])
    ['alive', 'alive', 'partial', 'collapsed']
    >>> class_outcomes([1e-4, 0.2], [0.0, 0.0], scale=1.0)  # every class predicted dead
    ['collapsed', 'partial']
    """
    measured = _host_vector(measured_norms, "measured_norms")
    predicted = _host_vector(predicted_norms, "predicted_norms")
    if measured.shape != predicted.shape:
        raise ValueError(
            f"`measured_norms` has {measured.shape[0]} classes but `predicted_norms` has "
            f"{predicted.shape[0]}; expected one norm per class in both"
        )
    alive = predicted > 0
    if alive.any() or scale is None:
        scale_from = measured[alive] if alive.any() else measured
        finite = scale_from[np.isfinite(scale_from)]
        scale = float(finite.max()) if finite.size else math.nan
    outcomes = []
    for value, target, is_alive in zip(measured, predicted, alive, strict=True):
        if is_alive and value >= ALIVE_FRACTION * target:
            outcomes.append("alive")
        elif math.isfinite(scale) and value <= COLLAPSED_FRACTION * scale:
            outcomes.append("collapsed")
        else:
            outcomes.append("partial")
    return outcomes


def accuracy_classes(outcomes: Sequence[str]) -> list[int]:
    """The classes whose train accuracy the terminal phase needs: those not collapsed.

    Examples
    --------
    >>> accuracy_classes(["alive", "partial", "collapsed"])
    [0, 1]
    """
    return [k for k, outcome in enumerate(outcomes) if outcome != "collapsed"]


@dataclass(frozen=True)
class TerminalPhase:
    """Whether training reached the terminal phase, and why not.

    Attributes
    ----------
    reached : bool
        All the conditions of `terminal_phase` hold.
    train_accuracy_alive : float
        Train accuracy on the classes that did not collapse
        (`accuracy_classes`).
    kkt_residual : float
        Relative KKT residual of the UFM+ objective at the final point.
    grad_norm : float or None
        Relative gradient norm of the network's parameters (None: not given).
    reasons : tuple of str
        One sentence per condition that failed (empty when reached).
    """

    reached: bool
    train_accuracy_alive: float
    kkt_residual: float
    grad_norm: float | None
    reasons: tuple[str, ...]

    def sentence(self) -> str:
        """One sentence: reached, or which condition failed."""
        if self.reached:
            grad = "" if self.grad_norm is None else f", gradient norm {self.grad_norm:.2g}"
            return (
                f"Terminal phase reached: train accuracy {self.train_accuracy_alive:.4g} on the "
                f"classes not collapsed, KKT residual {self.kkt_residual:.2g} "
                f"(<= {KKT_BOUND:g}){grad}."
            )
        return "Terminal phase NOT reached: " + "; ".join(self.reasons) + "."

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "reached": self.reached,
            "train_accuracy_alive": self.train_accuracy_alive,
            "kkt_residual": self.kkt_residual,
            "grad_norm": self.grad_norm,
            "reasons": list(self.reasons),
        }


def terminal_phase(
    train_accuracy_alive: float, kkt_residual: float, *, grad_norm: float | None = None
) -> TerminalPhase:
    """Whether a final point is in the terminal phase (bounds fixed in this module).

    Parameters
    ----------
    train_accuracy_alive : float
        Train accuracy on the classes that did not collapse
        (`accuracy_classes`), in [0, 1].
    kkt_residual : float
        Relative KKT residual (`ncgeom.theory.kkt.ufm_kkt_residual`).
    grad_norm : float, optional
        Relative gradient norm of the training objective in the network's
        parameters; checked against `GRAD_BOUND` when given.

    Returns
    -------
    TerminalPhase

    Examples
    --------
    >>> terminal_phase(1.0, 0.004).reached
    True
    >>> terminal_phase(0.735, 0.3).sentence()  # doctest: +NORMALIZE_WHITESPACE
    'Terminal phase NOT reached: train accuracy 0.735 on the classes not collapsed
    (needs 1); KKT residual 0.3 (needs <= 0.02).'
    """
    accuracy = float(train_accuracy_alive)
    residual = float(kkt_residual)
    grad = None if grad_norm is None else float(grad_norm)
    reasons = []
    if not accuracy >= TRAIN_ACCURACY:
        reasons.append(
            f"train accuracy {accuracy:.4g} on the classes not collapsed "
            f"(needs {TRAIN_ACCURACY:g})"
        )
    if not residual <= KKT_BOUND:
        reasons.append(f"KKT residual {residual:.2g} (needs <= {KKT_BOUND:g})")
    if grad is not None and not grad <= GRAD_BOUND:
        reasons.append(f"gradient norm {grad:.2g} (needs <= {GRAD_BOUND:g})")
    return TerminalPhase(
        reached=not reasons,
        train_accuracy_alive=accuracy,
        kkt_residual=residual,
        grad_norm=grad,
        reasons=tuple(reasons),
    )


def criteria_dict() -> dict[str, Any]:
    """The criteria as a JSON-ready dictionary (what ``report.json`` holds).

    Examples
    --------
    >>> criteria_dict()["collapsed_fraction"]
    0.05
    """
    return {
        "alive_fraction": ALIVE_FRACTION,
        "collapsed_fraction": COLLAPSED_FRACTION,
        "train_accuracy": TRAIN_ACCURACY,
        "kkt_bound": KKT_BOUND,
        "grad_bound": GRAD_BOUND,
        "alive": (f"predicted alive and measured norm >= {ALIVE_FRACTION:g} x the predicted norm"),
        "collapsed": (
            f"measured norm <= {COLLAPSED_FRACTION:g} x the largest measured norm among the "
            "classes predicted alive"
        ),
        "partial": "neither alive nor collapsed (a class predicted to collapse is never alive)",
        "terminal_phase": (
            f"train accuracy {TRAIN_ACCURACY:g} on the classes not collapsed, relative KKT "
            f"residual of UFM+ over (W, H >= 0) <= {KKT_BOUND:g}, and relative gradient norm "
            f"of the network's parameters <= {GRAD_BOUND:g} when measured"
        ),
    }
