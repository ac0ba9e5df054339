"""Numerical minimiser of the UFM+ objective, the referee for the closed form.

`solve_ufm` minimises the objective of `ncgeom.loss` over a classifier, features
constrained to be non-negative and (optionally) a bias, by accelerated projected
gradient descent with a backtracking step, momentum restarts and several random
starts run side by side as one batch. It runs on any array-API backend. See
``docs/solver.md`` for the method and the KKT residual it reports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from .._lib.backend import (
    array_device,
    backend_name,
    is_host_data,
    resolve_namespace,
    segment_sum,
    to_host,
)
from .._lib.validate import (
    check_bias_decay,
    check_choice,
    check_class_vector,
    check_counts,
    check_device,
    check_flag,
    check_float_dtype,
    check_positive,
    check_positive_int,
    check_real,
    check_seed,
    check_weight_decay,
)
from .loss import Decays, LossData, collapsed_data, evaluate, full_data

__all__ = ["MAX_BYTES", "UFMSolution", "solve_ufm", "working_memory"]

Array = Any

_FORMS = ("collapsed", "full")
_GROW = 1.1  # step growth after an accepted step
_SHRINK = 0.5  # step reduction after a rejected one
_CHECK_EVERY = 10  # iterations between (host-synchronising) convergence checks
# D on the bias is lambda_b + _BIAS_CURVATURE * sqrt(lambda_w lambda_h N / K): the
# cross-entropy's curvature in the bias measured in the units in which the
# regulariser's curvature in W and H is 1, for typical margins.
_BIAS_CURVATURE = 0.3
#: Default of `solve_ufm`'s `max_bytes`: the working memory it may plan for.
MAX_BYTES = 2**30
# Working memory in numbers of `dtype` per start, measured with tracemalloc
# on NumPy: about 14 copies of the stacked variables (K + R, dim) and 6 of the
# (R, K) logits; rounded up.
_COPIES_VARIABLES = 16
_COPIES_LOGITS = 8


@dataclass(frozen=True)
class UFMSolution:
    """The best point found by `solve_ufm`.

    Attributes
    ----------
    classifier : array, shape (K, dim)
        Classifier ``W``.
    means : array, shape (K, dim)
        Class means of the features (the variables themselves in the collapsed
        form); entrywise >= 0.
    features : array or None, shape (N, dim)
        Full form only: one feature row per sample, entrywise >= 0; the rows
        of class k are ``labels == k``. None in the collapsed form.
    labels : array or None, shape (N,)
        Full form only: the label of each feature row (classes in blocks of
        ``counts[k]`` rows, in class order). None in the collapsed form.
    bias : array or None, shape (K,)
        The bias with ``bias=True``, else None.
    objective : float
        The UFM+ objective at the returned point.
    kkt_residual : float
        The KKT residual at the returned point (see ``docs/solver.md``):
        ``sqrt(||dF/dW||^2 / lambda_w + sum_r ||P(dF/dh_r)||^2 / D_r
        + ||dF/db||^2 / beta)`` over feature rows ``r``, with ``P`` the
        projected gradient of the non-negative features, ``D_r = lambda_h``
        per sample and ``lambda_h n_k`` per class mean, and
        ``beta = lambda_b + 0.3 sqrt(lambda_w lambda_h N / K)``. Dimensionless,
        invariant under ``W -> aW, H -> H/a`` (with the lambdas rescaled), and
        the same number in both forms.
    iterations : int
        Iterations the returned restart ran.
    converged : bool
        Whether the returned restart reached ``kkt_residual <= tol``.
    restart_objectives : tuple of float
        Final objective of every restart (restart 0 is the orthogonal-frame
        start when one was used).
    restart_residuals : tuple of float
        Final KKT residual of every restart.
    best_restart : int
        Index of the returned restart.
    counts : tuple of int
        Samples per class, as given.
    lambda_w, lambda_h, lambda_b : float
        Weight decay of the solved problem.
    form : str
        ``"collapsed"`` or ``"full"``.
    tol : float
        The KKT tolerance used.
    """

    classifier: Array
    means: Array
    features: Array | None
    labels: Array | None
    bias: Array | None
    objective: float
    kkt_residual: float
    iterations: int
    converged: bool
    restart_objectives: tuple[float, ...]
    restart_residuals: tuple[float, ...]
    best_restart: int
    counts: tuple[int, ...]
    lambda_w: float
    lambda_h: float
    lambda_b: float
    form: str
    tol: float


def solve_ufm(
    counts: Any,
    lambda_w: float,
    lambda_h: float,
    dim: int,
    *,
    bias: bool = False,
    lambda_b: float = 0.0,
    form: str = "collapsed",
    class_weights: Any = None,
    logit_adjustment: float | None = None,
    restarts: int = 8,
    frame_start: bool = True,
    tol: float | None = None,
    max_iter: int = 20_000,
    seed: int | np.random.Generator | None = None,
    xp: ModuleType | None = None,
    device: Any = None,
    dtype: Any = None,
    max_bytes: int | None = MAX_BYTES,
) -> UFMSolution:
    """Minimise the UFM+ objective numerically, from several starts.

    Minimises ``(1/N) sum_i CE(W h_i + b, y_i) + (lambda_w/2)||W||^2
    + (lambda_h/2)||H||^2 (+ (lambda_b/2)||b||^2)`` over ``W`` (K, dim),
    ``H >= 0`` and, with ``bias=True``, ``b`` (K,). The collapsed form
    optimises one mean per class (weighted by the counts); the full form one
    feature per sample, so the collapse of each class onto its mean (NC1) is
    a result, not an assumption. Accelerated projected gradient with a
    backtracking step, momentum restarts, and `restarts` starts run as one
    batch; the start with the lowest objective is returned.

    Parameters
    ----------
    counts : sequence of int or integer array, shape (K,)
        Samples per class, positive integers in any order; K >= 2.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features, > 0 (without it
        the objective has no minimiser).
    dim : int
        Feature dimension, >= 1. The closed form needs ``dim`` >= the number of
        surviving classes; the solver accepts any ``dim``.
    bias : bool, default False
        Also optimise a classifier bias; there is no closed form for this case
        and the solver is the reference.
    lambda_b : float, default 0
        Weight decay on the bias, >= 0; only with ``bias=True``.
    form : {"collapsed", "full"}, default "collapsed"
        Optimise class means (K rows) or per-sample features (N rows).
    class_weights : sequence or array, shape (K,), optional
        Per-class weights of the cross-entropy, as in `ncgeom.loss`.
    logit_adjustment : float, optional
        Temperature ``tau`` of the logit adjustment with prior ``counts / N``.
    restarts : int, default 8
        Number of starts, >= 1, run side by side. Some configurations have
        spurious stationary points where a minority class stays collapsed; the
        lowest objective over the starts is returned.
    frame_start : bool, default True
        Make start 0 a deterministic orthogonal frame: the ``min(K, dim)``
        largest classes on one coordinate each, the others at 0. The other
        starts are random either way.
    tol : float, optional
        Stop a start once its KKT residual is <= `tol`. Default ``1e-10`` in
        float64 and ``1e-5`` in lower precision.
    max_iter : int, default 20000
        Iteration limit per start.
    seed : int or numpy.random.Generator, optional
        Seed of the random starts (drawn with NumPy on the host, so a seed
        gives the same starts on every backend).
    xp : namespace, optional
        Array namespace of the result; NumPy by default.
    device : optional
        Device of the result on `xp`.
    dtype : optional
        Real floating dtype of `xp`; float64 by default.
    max_bytes : int or None, default `MAX_BYTES` (1 GiB)
        Largest working memory to allocate (see `working_memory`); checked
        before anything is allocated. None lifts the limit.

    Returns
    -------
    UFMSolution
        Arrays on `xp` / `device`; scalars as Python numbers.

    Raises
    ------
    ValueError
        For counts that are not positive integers, fewer than two classes,
        weight decay <= 0, ``dim`` < 1, an unknown `form`, bad options, or a
        problem whose working memory would exceed `max_bytes` (the message
        says how much it needs and what to pass instead).
    TypeError
        For a non-floating `dtype` or non-numeric arguments.

    Examples
    --------
    >>> from ncgeom.solve import solve_ufm
    >>> sol = solve_ufm([10, 10, 10], 1e-2, 1e-3, dim=3, seed=0)
    >>> sol.converged
    True
    >>> round(sol.objective, 9)
    0.132029676
    """
    counts_host = check_counts(counts)
    num_classes = counts_host.shape[0]
    lam_w = check_weight_decay(lambda_w, "lambda_w")
    lam_h = check_weight_decay(lambda_h, "lambda_h")
    lam_b = check_bias_decay(lambda_b, bool(bias), "pass bias=True")
    dim, form, restarts = _check_shape_options(dim, form, restarts)
    max_iter = check_positive_int(max_iter, "max_iter")
    bias = check_flag(bias, "bias")
    frame_start = check_flag(frame_start, "frame_start")
    seed = check_seed(seed)
    xp = resolve_namespace(xp)
    dtype = check_float_dtype(dtype, xp)
    check_device(xp, device, dtype)
    if tol is None:
        tol = 1e-10 if dtype == xp.float64 else 1e-5
    tol = check_positive(tol, "tol")
    _check_memory(counts_host, dim, form, restarts, xp.finfo(dtype).bits // 8, max_bytes)

    tau = 0.0 if logit_adjustment is None else check_real(logit_adjustment, "logit_adjustment")
    decays = Decays(lambda_w=lam_w, lambda_h=lam_h, lambda_b=lam_b, tau=tau)
    problem, labels = _build_problem(counts_host, decays, form, class_weights, xp, device, dtype)
    start = _starts(
        counts_host, lam_w, lam_h, dim, bias, form, restarts, frame_start, seed, xp, device, dtype
    )
    stacked = _Stacked.build(problem, counts_host, lam_w, lam_h, lam_b)
    run = _accelerated_projected_gradient(stacked, start, tol, max_iter)

    objectives = to_host(run.objective).astype(np.float64)
    residuals = to_host(run.residual).astype(np.float64)
    iterations = to_host(run.iterations)
    best = int(np.argmin(np.where(np.isfinite(objectives), objectives, np.inf)))
    classifier = run.classifier[best, ...]
    rows = run.rows[best, ...]
    bias_out = None if run.bias is None else run.bias[best, ...]
    if form == "full":
        sizes = xp.asarray(counts_host, dtype=dtype, device=device)
        means = segment_sum(rows, labels, num_classes, xp) / sizes[:, None]
        features = rows
    else:
        means, features = rows, None
    return UFMSolution(
        classifier=classifier,
        means=means,
        features=features,
        labels=labels,
        bias=bias_out,
        objective=float(objectives[best]),
        kkt_residual=float(residuals[best]),
        iterations=int(iterations[best]),
        converged=bool(residuals[best] <= tol),
        restart_objectives=tuple(float(v) for v in objectives),
        restart_residuals=tuple(float(v) for v in residuals),
        best_restart=best,
        counts=tuple(int(n) for n in counts_host),
        lambda_w=lam_w,
        lambda_h=lam_h,
        lambda_b=lam_b,
        form=form,
        tol=tol,
    )


def working_memory(
    counts: Any, dim: int, *, form: str = "collapsed", restarts: int = 8, itemsize: int = 8
) -> int:
    """Bytes `solve_ufm` works in, about: an upper estimate, before it allocates.

    Each start holds about 16 copies of its variables, ``(K + R) dim``
    numbers with ``R = K`` rows in the collapsed form and ``R = N`` in the
    full form, and 8 of its ``R x K`` logits. Measured on NumPy with
    tracemalloc: the peak stays below this estimate.

    Parameters
    ----------
    counts : sequence of int or integer array, shape (K,)
        Samples per class.
    dim : int
        Feature dimension.
    form : {"collapsed", "full"}, default "collapsed"
    restarts : int, default 8
    itemsize : int, default 8
        Bytes per number (8 for float64, 4 for float32).

    Returns
    -------
    int

    Examples
    --------
    >>> from ncgeom.solve import working_memory
    >>> working_memory([10, 10, 10], 3)
    23040
    >>> working_memory([10**6, 10], 2, form="full") > 2**30
    True
    """
    host = check_counts(counts)
    dim, form, restarts = _check_shape_options(dim, form, restarts)
    itemsize = check_positive_int(itemsize, "itemsize")
    return _working_memory(host, dim, form, restarts, itemsize)


def _check_shape_options(dim: Any, form: Any, restarts: Any) -> tuple[int, str, int]:
    """The options that size the solver's variables (`solve_ufm`, `working_memory`)."""
    return (
        check_positive_int(dim, "dim"),
        check_choice(form, "form", _FORMS),
        check_positive_int(restarts, "restarts"),
    )


def _working_memory(counts: np.ndarray, dim: int, form: str, restarts: int, itemsize: int) -> int:
    return _solver_bytes(int(counts.shape[0]), int(counts.sum()), dim, form, restarts, itemsize)


def _solver_bytes(k: int, total: int, dim: int, form: str, restarts: int, itemsize: int) -> int:
    """`working_memory` from the sizes alone (K classes, `total` samples)."""
    rows = total if form == "full" else k
    per_start = _COPIES_VARIABLES * (k + rows) * dim + _COPIES_LOGITS * rows * k
    return restarts * per_start * itemsize


# Kept here: the limit is checked against this module's model of the solver's memory.
def _check_memory(
    counts: np.ndarray, dim: int, form: str, restarts: int, itemsize: int, max_bytes: Any
) -> None:
    """Raise before allocating when the working memory would exceed `max_bytes`."""
    if max_bytes is None:
        return
    max_bytes = check_positive_int(max_bytes, "max_bytes")
    needed = _working_memory(counts, dim, form, restarts, itemsize)
    if needed <= max_bytes:
        return
    k = counts.shape[0]
    if (
        form == "full"
        and _working_memory(counts, dim, "collapsed", restarts, itemsize) <= max_bytes
    ):
        collapsed = _working_memory(counts, dim, "collapsed", restarts, itemsize)
        advice = (
            'pass form="collapsed" (one mean per class, the same optimum; about '
            f"{_format_bytes(collapsed)})"
        )
    else:
        advice = "solve fewer classes, a smaller `dim` or fewer `restarts`"
    msg = (
        f"`counts` ({k} classes, {int(counts.sum())} samples) with dim={dim}, {restarts} "
        f"restart(s) and form={form!r} need about {_format_bytes(needed)} of working memory, "
        f"more than `max_bytes` = {_format_bytes(max_bytes)}; {advice}, or raise `max_bytes` "
        "(None: no limit)"
    )
    raise ValueError(msg)


def _format_bytes(size: int) -> str:
    """A byte count for messages, in binary units: ``"22.0 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# ---------------------------------------------------------------------------
# the method


@dataclass(frozen=True)
class _Stacked:
    """The problem on stacked variables, with the diagonal metric D.

    The classifier (K rows) and the feature rows are stacked into one array
    ``v`` of shape (S, K + R, d) for S starts; the bias ``b`` (S, K) stays
    apart. D is the curvature of the regulariser: ``lambda_w`` on classifier
    rows, ``row_decay`` (``lambda_h``, or ``lambda_h n_k`` for class means) on
    feature rows and ``beta = lambda_b + 0.3 sqrt(lambda_w lambda_h N / K)`` on
    the bias. Steps are preconditioned by D^-1 and the KKT residual is the
    gradient's norm in D^-1.
    """

    problem: LossData
    num_classes: int
    scale: Array  # (K + R, 1): D on the stacked rows
    lower: Array  # (K + R, 1): -inf on classifier rows, 0 on feature rows
    beta: float
    xp: ModuleType

    @staticmethod
    def build(
        problem: LossData, counts: np.ndarray, lam_w: float, lam_h: float, lam_b: float
    ) -> _Stacked:
        xp = problem.xp
        decay = problem.row_decay
        num_classes = counts.shape[0]
        ones = xp.ones((num_classes,), dtype=decay.dtype, device=array_device(decay))
        scale = xp.concat([lam_w * ones, decay])[:, None]
        lower = xp.concat([-math.inf * ones, 0.0 * decay])[:, None]
        beta = lam_b + _BIAS_CURVATURE * math.sqrt(
            lam_w * lam_h * float(counts.sum()) / num_classes
        )
        return _Stacked(problem, num_classes, scale, lower, beta, xp)

    def split(self, v: Array) -> tuple[Array, Array]:
        return v[..., : self.num_classes, :], v[..., self.num_classes :, :]

    def evaluate(self, v: Array, b: Array | None) -> tuple[Array, Array, Array | None]:
        """Objective (S,), stacked gradient and bias gradient."""
        value, g_w, g_h, g_b = evaluate(self.problem, *self.split(v), b, grad=True)
        return value, self.xp.concat([g_w, g_h], axis=-2), g_b

    def step(
        self, v: Array, b: Array | None, g: Array, g_b: Array | None, size: Array
    ) -> tuple[Array, Array | None]:
        """Projected preconditioned gradient step ``P(x - size D^-1 g)``."""
        xp = self.xp
        v_new = xp.maximum(v - size[:, None, None] * (g / self.scale), self.lower)
        b_new = None if b is None else b - size[:, None] * (g_b / self.beta)
        return v_new, b_new

    def inner(self, a: Array, a_b: Array | None, c: Array, c_b: Array | None) -> Array:
        """Inner product in D of two steps, per start."""
        xp = self.xp
        total = xp.sum(self.scale * (a * c), axis=(-2, -1))
        if a_b is not None:
            total = total + self.beta * xp.sum(a_b * c_b, axis=-1)
        return total

    def dual(self, g: Array, g_b: Array | None) -> Array:
        """Squared norm in D^-1 of a gradient, per start."""
        xp = self.xp
        total = xp.sum((g * g) / self.scale, axis=(-2, -1))
        if g_b is not None:
            total = total + xp.sum(g_b * g_b, axis=-1) / self.beta
        return total

    def residual(self, v: Array, g: Array, g_b: Array | None) -> Array:
        """KKT residual: the D^-1 norm of the projected gradient, per start."""
        # At a zero feature entry only a negative partial derivative (a descent
        # direction into the feasible set) violates the KKT conditions.
        xp = self.xp
        free = xp.logical_or(v > self.lower, g < 0)
        return xp.sqrt(self.dual(g * xp.astype(free, g.dtype), g_b))


@dataclass(frozen=True)
class _Run:
    classifier: Array  # (S, K, d)
    rows: Array  # (S, R, d)
    bias: Array | None  # (S, K)
    objective: Array  # (S,)
    residual: Array  # (S,)
    iterations: Array  # (S,)


class _State(NamedTuple):
    """The iterate of every start: x (last accepted point), y (extrapolated point)."""

    v_x: Array
    b_x: Array | None
    v_y: Array
    b_y: Array | None
    f_x: Array
    f_y: Array
    g_y: Array
    gb_y: Array | None
    residual: Array
    step: Array
    momentum: Array
    iterations: Array
    active: Array


def _accelerated_projected_gradient(
    stacked: _Stacked,
    start: tuple[Array, Array, Array | None],
    tol: float,
    max_iter: int,
) -> _Run:
    """FISTA with backtracking and momentum restarts, on a batch of starts.

    Every start keeps its own step, momentum and convergence state; a start
    that reaches `tol` is frozen. Backtracking never blocks the batch: a start
    whose trial step fails the test halves its step and retries from the same
    point in the next iteration. On JAX the first state and each iteration
    are compiled functions (see `_compiled`).
    """
    xp = stacked.xp
    slack = 64 * float(xp.finfo(start[0].dtype).eps)
    state = _compiled(_start_state, stacked, tol, slack)(start)
    advance = _compiled(_iteration, stacked, tol, slack)
    for it in range(1, max_iter + 1):
        state = advance(state)
        if it % _CHECK_EVERY == 0 and not bool(to_host(xp.any(state.active))):
            break
    classifier, rows = stacked.split(state.v_x)
    return _Run(classifier, rows, state.b_x, state.f_x, state.residual, state.iterations)


def _start_state(
    stacked: _Stacked, start: tuple[Array, Array, Array | None], tol: Any, slack: float
) -> _State:
    """The state of every start at its starting point (`slack` unused: one signature)."""
    xp = stacked.xp
    v_x = xp.concat([start[0], start[1]], axis=-2)
    b_x = start[2]
    f_x, g_x, gb_x = stacked.evaluate(v_x, b_x)
    residual = stacked.residual(v_x, g_x, gb_x)
    num_starts = f_x.shape[0]
    dtype, device = f_x.dtype, array_device(f_x)
    return _State(
        v_x=v_x,
        b_x=b_x,
        v_y=v_x,
        b_y=b_x,
        f_x=f_x,
        f_y=f_x,
        g_y=g_x,
        gb_y=gb_x,
        residual=residual,
        step=xp.ones((num_starts,), dtype=dtype, device=device),
        momentum=xp.ones((num_starts,), dtype=dtype, device=device),
        iterations=xp.zeros((num_starts,), dtype=xp.int64, device=device),
        active=residual > tol,
    )


def _iteration(stacked: _Stacked, state: _State, tol: Any, slack: float) -> _State:
    """One iteration of every start (a pure function of the state)."""
    xp = stacked.xp
    v_x, b_x, v_y, b_y, f_x, f_y, g_y, gb_y, residual, step, momentum, iterations, active = state
    v_t, b_t = stacked.step(v_y, b_y, g_y, gb_y, step)
    f_t, g_t, gb_t = stacked.evaluate(v_t, b_t)
    d_v, d_b = v_t - v_y, _minus(b_t, b_y)
    dist2 = stacked.inner(d_v, d_b, d_v, d_b)
    model = f_y + xp.sum(g_y * d_v, axis=(-2, -1)) + dist2 / (2 * step)
    if d_b is not None:
        model = model + xp.sum(gb_y * d_b, axis=-1)
    # Sufficient decrease of the objective, or, where the decrease is below
    # the rounding of f (close to a solution), a local Lipschitz bound on
    # the gradient, ||g(trial) - g(y)|| <= ||trial - y|| / step in D.
    rounding = slack * (xp.abs(f_y) + xp.abs(f_t))
    lipschitz = stacked.dual(g_t - g_y, _minus(gb_t, gb_y)) * (step * step) <= dist2
    decrease = xp.logical_or(f_t <= model, xp.logical_and(f_t <= model + rounding, lipschitz))
    accept = xp.logical_and(active, decrease)
    # Momentum: FISTA's sequence, reset when the step turns against the
    # previous move, <y - trial, trial - x>_D > 0 (a test that, unlike
    # comparing objective values, still works below the rounding of f),
    # or when the objective went up.
    turned = stacked.inner(-d_v, _neg(d_b), v_t - v_x, _minus(b_t, b_x)) > 0
    reset = xp.logical_or(turned, f_t > f_x + rounding)
    grown = (1 + xp.sqrt(1 + 4 * momentum * momentum)) / 2
    beta = xp.where(reset, xp.zeros_like(step), (momentum - 1) / grown)
    v_n = v_t + beta[:, None, None] * (v_t - v_x)
    b_n = None if b_t is None else b_t + beta[:, None] * (b_t - b_x)
    f_n, g_n, gb_n = stacked.evaluate(v_n, b_n)

    keep = accept[:, None, None]
    residual = xp.where(accept, stacked.residual(v_t, g_t, gb_t), residual)
    v_x, v_y, g_y = (
        xp.where(keep, v_t, v_x),
        xp.where(keep, v_n, v_y),
        xp.where(keep, g_n, g_y),
    )
    if b_x is not None:
        keep_b = accept[:, None]
        b_x, b_y = xp.where(keep_b, b_t, b_x), xp.where(keep_b, b_n, b_y)
        gb_y = xp.where(keep_b, gb_n, gb_y)
    f_x, f_y = xp.where(accept, f_t, f_x), xp.where(accept, f_n, f_y)
    momentum = xp.where(accept, xp.where(reset, xp.ones_like(step), grown), momentum)
    step = xp.where(accept, step * _GROW, xp.where(active, step * _SHRINK, step))
    iterations = xp.where(active, iterations + 1, iterations)
    active = xp.logical_and(active, residual > tol)
    return _State(
        v_x, b_x, v_y, b_y, f_x, f_y, g_y, gb_y, residual, step, momentum, iterations, active
    )


def _compiled(
    function: Callable[[_Stacked, Any, Any, float], _State],
    stacked: _Stacked,
    tol: float,
    slack: float,
) -> Callable[[Any], _State]:
    """``function(stacked, x, tol, slack)`` as a function of x: compiled on JAX.

    Run operation by operation, JAX compiles each of the hundred or so
    operations of an iteration for every new shape and dispatches them one
    at a time, which made a solve 10 to 50 times slower than on NumPy. One
    compiled function per shape runs an iteration in one dispatch. The
    problem's arrays and weight decays are its arguments, not constants, so
    problems of the same shape share the compilation.
    """
    if backend_name(stacked.xp) != "jax":
        return functools.partial(function, stacked, tol=tol, slack=slack)
    import jax

    problem = stacked.problem
    data = (
        problem.onehot,
        problem.row_weight,
        problem.row_decay,
        problem.logit_shift,
        stacked.scale,
        stacked.lower,
    )
    static = {
        "function": function,
        "xp": stacked.xp,
        "num_classes": stacked.num_classes,
        "lambda_b": problem.lambda_b,
        "slack": slack,
    }
    device = array_device(stacked.scale)
    compiled = _jax_jit()
    placed = False

    def run(x: Any) -> _State:
        nonlocal placed
        if not placed:
            # Committed to the device, as results of a compiled function are, so
            # that the first call and the later ones share one compilation.
            x, placed = jax.device_put(x, device), True
        return compiled(x, data, problem.lambda_w, stacked.beta, tol, **static)

    return run


@functools.cache
def _jax_jit() -> Callable[..., _State]:
    """`_compiled`'s functions under `jax.jit`, the problem's data as arguments."""
    import jax

    def run(
        x: Any,
        data: tuple[Array, ...],
        lambda_w: Any,
        beta: Any,
        tol: Any,
        *,
        function: Callable[[_Stacked, Any, Any, float], _State],
        xp: ModuleType,
        num_classes: int,
        lambda_b: float,
        slack: float,
    ) -> _State:
        onehot, row_weight, row_decay, logit_shift, scale, lower = data
        problem = LossData(
            xp=xp,
            onehot=onehot,
            row_weight=row_weight,
            row_decay=row_decay,
            logit_shift=logit_shift,
            lambda_w=lambda_w,
            lambda_b=lambda_b,
        )
        stacked = _Stacked(problem, num_classes, scale, lower, beta, xp)
        return function(stacked, x, tol, slack)

    static = ("function", "xp", "num_classes", "lambda_b", "slack")
    return jax.jit(run, static_argnames=static)


def _minus(a: Array | None, b: Array | None) -> Array | None:
    return None if a is None else a - b


def _neg(a: Array | None) -> Array | None:
    return None if a is None else -a


# ---------------------------------------------------------------------------
# problem and starts


def _build_problem(
    counts: np.ndarray,
    decays: Decays,
    form: str,
    class_weights: Any,
    xp: ModuleType,
    device: Any,
    dtype: Any,
) -> tuple[LossData, Array | None]:
    """The problem data for checked counts and decays (no variables: the starts
    supply them), and the labels of the full form; only `class_weights` is checked here."""
    num_classes = counts.shape[0]
    if class_weights is not None:
        host = class_weights if is_host_data(class_weights) else to_host(class_weights)
        class_weights = check_class_vector(host, "class_weights", num_classes, xp, device, dtype)
    logit_shift = None
    if decays.tau != 0.0:
        prior = xp.asarray(counts / counts.sum(), dtype=dtype, device=device)
        logit_shift = decays.tau * xp.log(prior)
    if form == "collapsed":
        counts_arr = xp.asarray(counts, dtype=dtype, device=device)
        data = collapsed_data(
            counts_arr,
            float(counts.sum()),
            decays,
            class_weights=class_weights,
            logit_shift=logit_shift,
            xp=xp,
        )
        return data, None
    labels = xp.asarray(np.repeat(np.arange(num_classes), counts), device=device)
    data = full_data(
        labels,
        num_classes,
        decays,
        class_weights=class_weights,
        logit_shift=logit_shift,
        xp=xp,
        dtype=dtype,
    )
    return data, labels


def _starts(
    counts: np.ndarray,
    lam_w: float,
    lam_h: float,
    dim: int,
    bias: bool,
    form: str,
    restarts: int,
    frame_start: bool,
    seed: Any,
    xp: ModuleType,
    device: Any,
    dtype: Any,
) -> tuple[Array, Array, Array | None]:
    """Starting points, drawn on the host with NumPy.

    Class k's features start at norm about ``(lambda_w / (lambda_h n_k))^(1/4) a``
    and classifier rows at ``(lambda_h n_k / lambda_w)^(1/4) a`` with
    ``a^2 = max(1, log K)``: the balance ``lambda_w ||W||^2 = lambda_h ||H||^2``
    of a minimiser, with logits of order log K. Three kinds of start:

    - frame (start 0 with `frame_start`): class k on coordinate k in order of
      decreasing count (classes beyond `dim` start at 0), classifier rows the
      centred frame;
    - random frame: every class on one random coordinate (shared when
      ``dim < K``) with a random norm, a small random classifier;
    - dense (every fourth start): all entries random.

    In the full form every sample also gets its own random factor and a small
    dense perturbation, so that features of a class start apart.
    """
    rng = np.random.default_rng(seed)
    num_classes = counts.shape[0]
    scale = math.sqrt(max(1.0, math.log(num_classes)))
    feature_scale = (lam_w / (lam_h * counts)) ** 0.25 * scale  # (K,)
    classifier_scale = (lam_h * counts / lam_w) ** 0.25 * scale  # (K,)
    mean_w = float(np.sqrt(np.mean(classifier_scale**2)))
    w = np.zeros((restarts, num_classes, dim))
    h = np.zeros((restarts, num_classes, dim))
    kinds = ["dense" if r % 4 == 3 else "random" for r in range(restarts)]
    if frame_start:
        kinds[0] = "frame"
    for r, kind in enumerate(kinds):
        if kind == "frame":
            order = np.argsort(-counts, kind="stable")[:dim]
            h[r, order, np.arange(order.shape[0])] = feature_scale[order]
            w[r, order, np.arange(order.shape[0])] = classifier_scale[order]
            w[r] -= w[r].mean(axis=0)
        elif kind == "random":
            cols = rng.permutation(dim)[np.arange(num_classes) % dim]
            h[r, rng.permutation(num_classes), cols] = 1.0
            h[r] *= (feature_scale * rng.uniform(0.5, 1.5, num_classes))[:, None]
            w[r] = rng.standard_normal((num_classes, dim)) * (0.1 * mean_w / math.sqrt(dim))
        else:
            h[r] = np.abs(rng.standard_normal((num_classes, dim)))
            h[r] *= (feature_scale / math.sqrt(dim))[:, None]
            w[r] = rng.standard_normal((num_classes, dim)) * (mean_w / math.sqrt(dim))
    if form == "full":
        row_class = np.repeat(np.arange(num_classes), counts)
        jitter = rng.uniform(0.5, 1.5, (restarts, row_class.shape[0], 1))
        noise = np.abs(rng.standard_normal((restarts, row_class.shape[0], dim)))
        noise *= (0.1 * feature_scale[row_class] / math.sqrt(dim))[None, :, None]
        h = h[:, row_class, :] * jitter + noise
    b = np.zeros((restarts, num_classes)) if bias else None

    def put(a: np.ndarray | None) -> Array | None:
        return None if a is None else xp.asarray(a, dtype=dtype, device=device)

    return put(w), put(h), put(b)
