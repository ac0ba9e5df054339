"""The UFM+ objective and its exact gradients.

Two forms of one objective. The full-sample form takes a classifier ``W``
(K, d), features ``H`` (N, d) and labels (N,)::

    f(W, H, b) = (1/N) sum_i w_{y_i} CE(W h_i + b + tau log pi, y_i)
                 + (lambda_w/2) ||W||^2 + (lambda_h/2) ||H||^2 + (lambda_b/2) ||b||^2

where ``||H||^2`` sums over all N samples, ``w`` are optional class weights
(1 by default) and ``tau log pi`` an optional logit adjustment (0 by default).
The class-collapsed form takes class means (K, d) and counts (K,) and is the
value of the full form when every feature equals its class mean::

    f = sum_k (n_k/N) w_k CE(W h_k + b + tau log pi, k)
        + (lambda_w/2) ||W||^2 + (lambda_h/2) sum_k n_k ||h_k||^2 + (lambda_b/2) ||b||^2

Gradients come from one pass that also returns the value. Everything uses the
array-API standard only, costs O(N K d) and runs on the inputs' namespace and
device. See ``docs/loss.md`` for the conventions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

from .._lib.backend import (
    array_device,
    backend_name,
    namespace,
    resolve_namespace,
    segment_count,
    to_host,
)
from .._lib.validate import (
    check_arrays_given,
    check_batch,
    check_bias_decay,
    check_bias_vector,
    check_class_vector,
    check_classifier_and_rows,
    check_columns,
    check_finite,
    check_nonnegative,
    check_real,
)

__all__ = [
    "CollapsedGradients",
    "Decays",
    "LossData",
    "LossOptions",
    "UFMGradients",
    "collapsed_data",
    "collapsed_gradients",
    "collapsed_objective",
    "evaluate",
    "full_data",
    "ufm_gradients",
    "ufm_objective",
]

Array = Any


@dataclass(frozen=True)
class UFMGradients:
    """Value and gradients of the full-sample UFM+ objective.

    Attributes
    ----------
    objective : array
        The objective, a 0-d array on the inputs' namespace and device.
    classifier : array
        Gradient with respect to the classifier, shape (K, d).
    features : array
        Gradient with respect to the features, shape (N, d).
    bias : array or None
        Gradient with respect to the bias, shape (K,); None without a bias.
    """

    objective: Array
    classifier: Array
    features: Array
    bias: Array | None


@dataclass(frozen=True)
class CollapsedGradients:
    """Value and gradients of the class-collapsed UFM+ objective.

    Attributes
    ----------
    objective : array
        The objective, a 0-d array on the inputs' namespace and device.
    classifier : array
        Gradient with respect to the classifier, shape (K, d).
    means : array
        Gradient with respect to the class means, shape (K, d). Row k is
        ``n_k`` times the gradient of the full form at any one sample of class
        k when all features equal their class means.
    bias : array or None
        Gradient with respect to the bias, shape (K,); None without a bias.
    """

    objective: Array
    classifier: Array
    means: Array
    bias: Array | None


# ---------------------------------------------------------------------------
# public layer: one signature, whose keywords are the fields of LossOptions


@dataclass(frozen=True)
class LossOptions:
    """The keyword options of every public UFM+ loss function, the one list of them.

    `ufm_objective`, `ufm_gradients`, `collapsed_objective` and
    `collapsed_gradients` take these fields as keyword-only arguments.

    Attributes
    ----------
    bias : array (K,), optional
        Classifier bias; omitted means no bias.
    lambda_b : float
        Weight decay on the bias (>= 0; needs a bias when > 0).
    class_weights : array or sequence (K,), optional
        Per-class weights of the cross-entropy.
    logit_adjustment : float, optional
        Temperature ``tau`` of the logit adjustment.
    prior : array or sequence (K,), optional
        Class prior of the logit adjustment.
    xp : module, optional
        Array namespace or library module (``numpy``, ``torch``, ...); inferred
        from the arrays when omitted, and must be theirs when given.
    """

    bias: Array | None = None
    lambda_b: float = 0.0
    class_weights: Array | None = None
    logit_adjustment: float | None = None
    prior: Array | None = None
    xp: ModuleType | None = None


_OPTION_NAMES = frozenset(field.name for field in fields(LossOptions))


def _shared_keywords(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with the fields of `LossOptions` as its keyword-only arguments.

    `function` takes them as one ``options`` object; the wrapper's signature
    (what `help` and `inspect.signature` show) lists them one by one. Python
    binds the positional arguments itself, so a wrong call is the TypeError it
    always gives.
    """
    keywords = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=field.default,
            annotation=field.type,
        )
        for field in fields(LossOptions)
    ]
    own = inspect.signature(function)
    positional = [p for p in own.parameters.values() if p.name != "options"]

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        chosen = {name: kwargs.pop(name) for name in _OPTION_NAMES & kwargs.keys()}
        return function(*args, options=LossOptions(**chosen), **kwargs)

    call.__signature__ = own.replace(parameters=[*positional, *keywords])  # type: ignore[attr-defined]
    return call


@_shared_keywords
def ufm_objective(
    classifier: Array,
    features: Array,
    labels: Array,
    lambda_w: float,
    lambda_h: float,
    *,
    options: LossOptions,
) -> Array:
    """The full-sample UFM+ objective.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Classifier ``W``; row k scores class k.
    features : array, shape (N, d)
        Features ``H``, one row per sample. The objective is defined for any
        real features; the non-negativity of UFM+ is a constraint of the
        minimisation (see `ncgeom.solve.solve_ufm`), not checked here.
    labels : array, shape (N,)
        Integer labels in ``[0, K)``.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features, >= 0.
    bias : array, shape (K,), optional
        Classifier bias ``b``; omitted means no bias.
    lambda_b : float, default 0
        Weight decay on the bias, >= 0; needs `bias` when > 0.
    class_weights : array or sequence, shape (K,), optional
        Per-class weights ``w_k >= 0`` of the cross-entropy. The weighted
        term is ``(1/N) sum_i w_{y_i} CE_i``: normalised by the number of
        samples, not by the total weight.
    logit_adjustment : float, optional
        Temperature ``tau`` of the logit adjustment: the cross-entropy is taken
        on ``logits + tau * log(prior)``.
    prior : array or sequence, shape (K,), optional
        Positive class prior of the logit adjustment; only its ratios matter.
        Defaults to the label frequencies ``n_k / N`` of `labels` (every class
        must then occur).
    xp : module, optional
        Array namespace or library module (``numpy``, ``torch``, ...); inferred
        from the arrays when omitted, and must be theirs when given
        (`TypeError` naming `xp` otherwise).

    Returns
    -------
    array
        The objective as a 0-d array on the inputs' namespace and device.

    Raises
    ------
    ValueError
        For inconsistent shapes, labels outside ``[0, K)``, negative weight
        decay or weights, a non-positive prior, or non-finite inputs.
    TypeError
        For non-floating arrays, non-integer labels or mixed array libraries.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.loss import ufm_objective
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> H = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    >>> y = np.array([0, 1, 1])
    >>> round(float(ufm_objective(W, H, y, 1e-2, 1e-2)), 6)
    0.244039
    """
    return evaluate_value(*full_problem(classifier, features, labels, lambda_w, lambda_h, options))


@_shared_keywords
def ufm_gradients(
    classifier: Array,
    features: Array,
    labels: Array,
    lambda_w: float,
    lambda_h: float,
    *,
    options: LossOptions,
) -> UFMGradients:
    """Value and exact gradients of the full-sample UFM+ objective, in one pass.

    With ``P = softmax(logits)``, ``Y`` the one-hot labels and
    ``G = diag(w_{y_i} / N) (P - Y)`` (rows = samples)::

        dF/dW = G^T H + lambda_w W
        dF/dH = G W + lambda_h H
        dF/db = sum_i G_i + lambda_b b

    Parameters are those of `ufm_objective`.

    Returns
    -------
    UFMGradients
        ``objective`` (0-d), ``classifier`` (K, d), ``features`` (N, d) and
        ``bias`` (K,) or None, on the inputs' namespace and device.

    Raises
    ------
    ValueError, TypeError
        As `ufm_objective`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.loss import ufm_gradients
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> H = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    >>> grads = ufm_gradients(W, H, np.array([0, 1, 1]), 1e-2, 1e-2)
    >>> grads.features.shape
    (3, 2)
    """
    data, variables = full_problem(classifier, features, labels, lambda_w, lambda_h, options)
    value, g_w, g_h, g_b = evaluate(data, *variables, grad=True)
    return UFMGradients(objective=value, classifier=g_w, features=g_h, bias=g_b)


@_shared_keywords
def collapsed_objective(
    classifier: Array,
    means: Array,
    counts: Array,
    lambda_w: float,
    lambda_h: float,
    *,
    options: LossOptions,
) -> Array:
    """The class-collapsed UFM+ objective.

    ``f = sum_k (n_k/N) w_k CE(W h_k + b, k) + (lambda_w/2)||W||^2
    + (lambda_h/2) sum_k n_k ||h_k||^2 + (lambda_b/2)||b||^2`` with
    ``N = sum_k n_k``: the full-sample objective when every feature equals its
    class mean.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Classifier ``W``.
    means : array, shape (K, d)
        Class means ``h_k``, one row per class.
    counts : array or sequence, shape (K,)
        Samples per class ``n_k >= 0`` (real numbers are accepted), with a
        positive total.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features, >= 0.
    bias : array, shape (K,), optional
        Classifier bias; omitted means no bias.
    lambda_b : float, default 0
        Weight decay on the bias, >= 0; needs `bias` when > 0.
    class_weights : array or sequence, shape (K,), optional
        Per-class weights of the cross-entropy, normalised by ``N`` exactly as
        in `ufm_objective`.
    logit_adjustment : float, optional
        Temperature ``tau``: the cross-entropy is taken on
        ``logits + tau * log(prior)``.
    prior : array or sequence, shape (K,), optional
        Positive class prior of the logit adjustment; defaults to
        ``counts / N`` (every count must then be positive).
    xp : module, optional
        Array namespace or library module (``numpy``, ``torch``, ...); inferred
        from the arrays when omitted, and must be theirs when given
        (`TypeError` naming `xp` otherwise).

    Returns
    -------
    array
        The objective as a 0-d array on the inputs' namespace and device.

    Raises
    ------
    ValueError
        For inconsistent shapes, negative counts, weights or weight decay, a
        non-positive prior, or non-finite inputs.
    TypeError
        For non-floating arrays or mixed array libraries.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.loss import collapsed_objective
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> means = np.array([[2.0, 0.0], [0.0, 1.5]])
    >>> round(float(collapsed_objective(W, means, [1, 2], 1e-2, 1e-2)), 6)
    0.229085
    """
    return evaluate_value(
        *collapsed_problem(classifier, means, counts, lambda_w, lambda_h, options)
    )


@_shared_keywords
def collapsed_gradients(
    classifier: Array,
    means: Array,
    counts: Array,
    lambda_w: float,
    lambda_h: float,
    *,
    options: LossOptions,
) -> CollapsedGradients:
    """Value and exact gradients of the class-collapsed UFM+ objective, in one pass.

    With ``P = softmax(logits)`` (row k: the logits of class k's mean) and
    ``G = diag(n_k w_k / N) (P - I)``::

        dF/dW = G^T Hbar + lambda_w W
        dF/dh_k = (G W)_k + lambda_h n_k h_k
        dF/db = sum_k G_k + lambda_b b

    Parameters are those of `collapsed_objective`.

    Returns
    -------
    CollapsedGradients
        ``objective`` (0-d), ``classifier`` (K, d), ``means`` (K, d) and
        ``bias`` (K,) or None, on the inputs' namespace and device.

    Raises
    ------
    ValueError, TypeError
        As `collapsed_objective`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.loss import collapsed_gradients
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> means = np.array([[2.0, 0.0], [0.0, 1.5]])
    >>> grads = collapsed_gradients(W, means, [1, 2], 1e-2, 1e-2)
    >>> grads.means.shape
    (2, 2)
    """
    data, variables = collapsed_problem(classifier, means, counts, lambda_w, lambda_h, options)
    value, g_w, g_h, g_b = evaluate(data, *variables, grad=True)
    return CollapsedGradients(objective=value, classifier=g_w, means=g_h, bias=g_b)


# ---------------------------------------------------------------------------
# the row form shared by both: rows are samples (full) or classes (collapsed)


@dataclass(frozen=True)
class LossData:
    """The fixed data of one UFM+ objective in row form: everything but the variables.

    ``f(W, H, b) = sum_r row_weight[r] CE(H_r W^T + b + logit_shift, target_r)
    + (lambda_w/2)||W||^2 + (1/2) sum_r row_decay[r] ||H_r||^2
    + (lambda_b/2)||b||^2``. Full form: rows are samples, ``row_weight =
    w_{y_i}/N`` and ``row_decay = lambda_h``. Collapsed form: rows are classes,
    ``row_weight = n_k w_k / N`` and ``row_decay = lambda_h n_k``.
    """

    xp: ModuleType
    onehot: Array  # (R, K) targets, in the working dtype
    row_weight: Array  # (R,)
    row_decay: Array  # (R,)
    logit_shift: Array | None  # (K,) logit adjustment tau * log(prior)
    lambda_w: float
    lambda_b: float


def evaluate(
    data: LossData,
    classifier: Array,
    features: Array,
    bias: Array | None,
    *,
    grad: bool = False,
) -> tuple[Array, ...]:
    """Value, or value and gradients ``(f, dW, dH, db)``, of the objective at (W, H, b).

    The variables may carry leading batch axes (the solver stacks its restarts):
    classifier (..., K, d), features (..., R, d), bias (..., K); the value then
    has the batch shape. No input checks: callers validate.
    """
    xp = data.xp
    onehot = data.onehot
    logits = xp.matmul(features, xp.matrix_transpose(classifier))
    if bias is not None:
        logits = logits + bias[..., None, :]
    if data.logit_shift is not None:
        logits = logits + data.logit_shift
    # Shift each row by its target logit: s_j = z_j - z_y, so CE = log sum_j e^{s_j}.
    # With m = max_j s_j >= 0 and e = exp(s - m): CE = m + log(e^{-m} + others),
    # others = sum_{j != y} e_j. A confident row (m = 0) gives CE = log1p(others),
    # accurate to the last bit even when CE is 1e-12, where log(1 + others)
    # would round to a multiple of 1e-16.
    shifted = logits - xp.sum(logits * onehot, axis=-1, keepdims=True)
    top = xp.max(shifted, axis=-1, keepdims=True)
    exps = xp.exp(shifted - top)
    off_target = exps * (1 - onehot)
    others = xp.sum(off_target, axis=-1)
    top = top[..., 0]
    total = others + xp.exp(-top)
    ce = xp.where(top > 0, top + xp.log(total), xp.log1p(others))
    decay = data.row_decay[:, None]
    value = (
        xp.sum(data.row_weight * ce, axis=-1)
        + (0.5 * data.lambda_w) * xp.sum(classifier * classifier, axis=(-2, -1))
        + 0.5 * xp.sum(decay * (features * features), axis=(-2, -1))
    )
    if bias is not None and data.lambda_b != 0.0:
        value = value + (0.5 * data.lambda_b) * xp.sum(bias * bias, axis=-1)
    if not grad:
        return (value,)
    # P - Y, with the target entry p_y - 1 = -others / total (no cancellation).
    scale = data.row_weight / total
    residual = (off_target - onehot * others[..., None]) * scale[..., None]
    g_w = xp.matmul(xp.matrix_transpose(residual), features) + data.lambda_w * classifier
    g_h = xp.matmul(residual, classifier) + decay * features
    g_b = None
    if bias is not None:
        g_b = xp.sum(residual, axis=-2)
        if data.lambda_b != 0.0:
            g_b = g_b + data.lambda_b * bias
    return (xp.asarray(value), g_w, g_h, g_b)  # NumPy reductions give scalars


def evaluate_value(data: LossData, variables: tuple[Array, Array, Array | None]) -> Array:
    """The objective alone, as a 0-d array."""
    return data.xp.asarray(evaluate(data, *variables)[0])


# ---------------------------------------------------------------------------
# problem data from checked values (the solver builds its own this way)


def full_data(
    labels: Array,
    num_classes: int,
    decays: Decays,
    *,
    class_weights: Array | None,
    logit_shift: Array | None,
    xp: ModuleType,
    dtype: Any,
) -> LossData:
    """The data of the full-sample objective for checked int64 `labels` (N >= 1)
    and checked per-class vectors in `dtype`."""
    device = array_device(labels)
    num_rows = labels.shape[0]
    targets = xp.arange(num_classes, dtype=labels.dtype, device=device)
    row_weight = xp.full((num_rows,), 1.0 / num_rows, dtype=dtype, device=device)
    if class_weights is not None:
        row_weight = row_weight * xp.take(class_weights, labels, axis=0)
    return LossData(
        xp=xp,
        onehot=xp.astype(labels[:, None] == targets[None, :], dtype),
        row_weight=row_weight,
        row_decay=xp.full((num_rows,), decays.lambda_h, dtype=dtype, device=device),
        logit_shift=logit_shift,
        lambda_w=decays.lambda_w,
        lambda_b=decays.lambda_b,
    )


def collapsed_data(
    counts: Array,
    total: float,
    decays: Decays,
    *,
    class_weights: Array | None,
    logit_shift: Array | None,
    xp: ModuleType,
) -> LossData:
    """The data of the class-collapsed objective for checked `counts` (K,), in the
    working dtype, whose sum is `total` > 0, and checked per-class vectors."""
    row_weight = counts / total
    if class_weights is not None:
        row_weight = row_weight * class_weights
    return LossData(
        xp=xp,
        onehot=xp.eye(counts.shape[0], dtype=counts.dtype, device=array_device(counts)),
        row_weight=row_weight,
        row_decay=decays.lambda_h * counts,
        logit_shift=logit_shift,
        lambda_w=decays.lambda_w,
        lambda_b=decays.lambda_b,
    )


@dataclass(frozen=True)
class Decays:
    """Checked weight decays and the logit adjustment's temperature (0 without one)."""

    lambda_w: float
    lambda_h: float
    lambda_b: float
    tau: float


# ---------------------------------------------------------------------------
# the one parser of the public functions' arguments

Variables = tuple[Array, Array, Array | None]


def full_problem(
    classifier: Array,
    features: Array,
    labels: Array,
    lambda_w: float,
    lambda_h: float,
    options: LossOptions,
) -> tuple[LossData, Variables]:
    """Check the full-sample arguments: the problem data and the variables (W, H, b)."""
    bias = options.bias
    check_arrays_given(classifier=classifier, features=features, labels=labels)
    xp = _checked_namespace(
        options.xp, classifier=classifier, features=features, labels=labels, bias=bias
    )
    decays = _check_decays(lambda_w, lambda_h, options)
    num_classes, dtype = check_classifier_and_rows(classifier, features, "features", xp)
    check_columns(features, "features", classifier.shape[1], "classifier", rows="samples")
    if features.shape[0] == 0:
        msg = "`features` must hold at least one sample; got 0 rows"
        raise ValueError(msg)
    labels = check_batch(features, labels, num_classes, xp)
    device = array_device(labels)
    weights = _class_vector(options.class_weights, "class_weights", num_classes, xp, device, dtype)

    def label_frequencies() -> Array:
        return xp.astype(segment_count(labels, num_classes, xp), dtype) / labels.shape[0]

    hint = " (default: the label frequencies; pass `prior` when a class has no sample)"
    data = full_data(
        labels,
        num_classes,
        decays,
        class_weights=weights,
        logit_shift=_checked_logit_shift(
            decays.tau, options.prior, label_frequencies, hint, num_classes, xp, device, dtype
        ),
        xp=xp,
        dtype=dtype,
    )
    return data, _variables(classifier, features, bias, num_classes, xp, dtype)


def collapsed_problem(
    classifier: Array,
    means: Array,
    counts: Any,
    lambda_w: float,
    lambda_h: float,
    options: LossOptions,
) -> tuple[LossData, Variables]:
    """Check the class-collapsed arguments: the problem data and the variables (W, H, b)."""
    bias = options.bias
    check_arrays_given(classifier=classifier, means=means)
    xp = _checked_namespace(options.xp, classifier=classifier, means=means, bias=bias)
    decays = _check_decays(lambda_w, lambda_h, options)
    num_classes, dtype = check_classifier_and_rows(classifier, means, "means", xp)
    if tuple(means.shape) != tuple(classifier.shape):
        msg = (
            f"`means` must have the shape of `classifier` {tuple(classifier.shape)}; "
            f"got {tuple(means.shape)}"
        )
        raise ValueError(msg)
    check_finite(means, "means", xp)
    device = array_device(classifier)
    counts = check_class_vector(counts, "counts", num_classes, xp, device, dtype)
    total = float(to_host(xp.sum(counts)))
    if total <= 0:
        msg = f"`counts` must have a positive total; got {to_host(counts).tolist()}"
        raise ValueError(msg)
    weights = _class_vector(options.class_weights, "class_weights", num_classes, xp, device, dtype)
    hint = " (default: counts / N; pass `prior` when a count is 0)"
    data = collapsed_data(
        counts,
        total,
        decays,
        class_weights=weights,
        logit_shift=_checked_logit_shift(
            decays.tau, options.prior, lambda: counts / total, hint, num_classes, xp, device, dtype
        ),
        xp=xp,
    )
    return data, _variables(classifier, means, bias, num_classes, xp, dtype)


def _checked_namespace(xp: Any, **arrays: Array) -> ModuleType:
    """The arrays' namespace; `xp`, when given, must be a library module
    (`resolve_namespace`) whose namespace is theirs."""
    found = namespace(**arrays)
    if xp is None:
        return found
    wanted = resolve_namespace(xp)
    if wanted is not found:
        msg = (
            f"`xp` must be the namespace of the arrays ({backend_name(found)}); got "
            f"{backend_name(wanted)}: leave `xp` out, it is inferred from the arrays"
        )
        raise TypeError(msg)
    return found


def _variables(
    classifier: Array,
    rows: Array,
    bias: Array | None,
    num_classes: int,
    xp: ModuleType,
    dtype: Any,
) -> Variables:
    if bias is not None:
        check_bias_vector(bias, num_classes, xp)
        bias = _cast(bias, dtype, xp)
    return (_cast(classifier, dtype, xp), _cast(rows, dtype, xp), bias)


def _check_decays(lambda_w: Any, lambda_h: Any, options: LossOptions) -> Decays:
    """The weight decays and the temperature of the options."""
    tau = options.logit_adjustment
    return Decays(
        lambda_w=check_nonnegative(lambda_w, "lambda_w"),
        lambda_h=check_nonnegative(lambda_h, "lambda_h"),
        lambda_b=check_bias_decay(options.lambda_b, options.bias is not None, "pass `bias`"),
        tau=0.0 if tau is None else check_real(tau, "logit_adjustment"),
    )


def _class_vector(
    value: Any, name: str, size: int, xp: ModuleType, device: Any, dtype: Any
) -> Array | None:
    """`check_class_vector` of an optional per-class vector (None stays None)."""
    if value is None:
        return None
    return check_class_vector(value, name, size, xp, device, dtype)


def _checked_logit_shift(
    tau: float,
    prior: Any,
    default_prior: Callable[[], Array],
    default_hint: str,
    num_classes: int,
    xp: ModuleType,
    device: Any,
    dtype: Any,
) -> Array | None:
    """``tau * log(prior)`` (None without a logit adjustment); `default_prior`
    when `prior` is None, and `default_hint` then says so if it is not positive."""
    if tau == 0.0:
        return None
    hint = ""
    if prior is None:
        prior, hint = default_prior(), default_hint
    checked = check_class_vector(
        prior, "prior", num_classes, xp, device, dtype, positive=True, hint=hint
    )
    return tau * xp.log(checked)


def _cast(x: Array, dtype: Any, xp: ModuleType) -> Array:
    return x if x.dtype == dtype else xp.astype(x, dtype)
