"""How far a point is from stationarity of UFM+ over ``(W, H >= 0)``: a KKT residual.

For the full-sample UFM+ objective of `ncgeom.loss.ufm_objective`
(no class weights, no logit adjustment, no decay on a bias)::

    f(W, H, b) = (1/N) sum_i CE(W h_i + b, y_i) + (lambda_w/2)||W||^2 + (lambda_h/2)||H||^2

the KKT conditions of ``min f`` subject to ``H >= 0`` are

- stationarity in the free classifier: ``grad_W f = 0``;
- in each feature entry: ``H >= 0``, ``grad_H f >= 0`` and
  ``H * grad_H f = 0`` (projected stationarity and complementarity);
- with a bias: ``grad_b f = 0``.

With ``R = P - Y`` (softmax minus one-hot, rows = samples), the data terms
``C_W = R^T H / N`` and ``C_H = R W / N`` and the gradients
``grad_W f = C_W + lambda_w W``, ``grad_H f = C_H + lambda_h H``, the residual
is the largest of three scale-free parts::

    r_W = ||grad_W f|| / max(lambda_w ||W||, ||C_W||)
    r_H = ||min(H, grad_H f / lambda_h)|| / max(||H||, ||C_H|| / lambda_h)
    r_b = ||grad_b f|| / ((1/N) sum_i ||R_i||)          (with a bias only)

(Frobenius norms; a part whose denominator is 0 has a zero numerator too and
counts 0). ``min(H, G)`` taken entry-wise is zero exactly when
``H >= 0, G >= 0, H * G = 0``: the natural residual of the complementarity
conditions; dividing ``grad_H f`` by ``lambda_h`` gives it the units of
``H``. Each part compares the gradient with the size of the two terms that
cancel at a stationary point, so 0.01 means "the terms cancel to 1%" at any
scale of W, H and the lambdas. The residual is 0 (to rounding) at the
closed-form optimum `ncgeom.ufm_relu_optimum` and at every other KKT point,
such as ``W = H = 0``.
"""

from __future__ import annotations

from typing import Any

from .._lib.backend import array_device, namespace, to_host, wide_float
from .loss import ufm_gradients

__all__ = ["ufm_kkt_residual", "ufm_kkt_parts"]

Array = Any


def ufm_kkt_parts(
    W: Array,
    H: Array,
    labels: Array,
    num_classes: int,
    lambda_w: float,
    lambda_h: float,
    bias: Array | None = None,
) -> dict[str, float]:
    """The parts ``r_W``, ``r_H`` (and ``r_b`` with a bias) of `ufm_kkt_residual`.

    Parameters and errors are those of `ufm_kkt_residual`.

    Returns
    -------
    dict
        ``{"classifier": r_W, "features": r_H}`` plus ``"bias": r_b`` when a
        bias is given, as Python floats.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.eye(2)
    >>> H = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> sorted(ufm_kkt_parts(W, H, np.array([0, 1]), 2, 1e-2, 1e-2))
    ['classifier', 'features']
    """
    _check_lambdas(lambda_w, lambda_h)
    xp = namespace(W=W, H=H, labels=labels, bias=bias)
    if W.ndim != 2 or W.shape[0] != num_classes:
        raise ValueError(
            f"`W` must have shape (num_classes, d) = ({num_classes}, d); got {tuple(W.shape)}"
        )
    wide = wide_float(xp)
    W = xp.astype(W, wide)
    H = xp.astype(H, wide)
    b = None if bias is None else xp.astype(bias, wide)
    grads = ufm_gradients(W, H, labels, float(lambda_w), float(lambda_h), bias=b)
    data_w = grads.classifier - lambda_w * W
    data_h = grads.features - lambda_h * H
    parts = {
        "classifier": _ratio(
            _norm(grads.classifier, xp), xp.maximum(lambda_w * _norm(W, xp), _norm(data_w, xp)), xp
        ),
        "features": _ratio(
            _norm(xp.minimum(H, grads.features / lambda_h), xp),
            xp.maximum(_norm(H, xp), _norm(data_h, xp) / lambda_h),
            xp,
        ),
    }
    if b is not None:
        parts["bias"] = _ratio(_norm(grads.bias, xp), _mean_row_norm(W, H, labels, b, xp), xp)
    host = to_host(xp.stack(list(parts.values())))
    return {name: float(value) for name, value in zip(parts, host, strict=True)}


def ufm_kkt_residual(
    W: Array,
    H: Array,
    labels: Array,
    num_classes: int,
    lambda_w: float,
    lambda_h: float,
    bias: Array | None = None,
) -> float:
    """Relative KKT residual of UFM+ over ``(W, H >= 0)`` (formula in the module docstring).

    Parameters
    ----------
    W : array, shape (K, d)
        Classifier; row k scores class k.
    H : array, shape (N, d)
        Features, one row per sample (the final features of a network).
    labels : array, shape (N,)
        Integer labels in ``[0, K)``.
    num_classes : int
        K, the number of rows of `W`.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features; both > 0.
    bias : array, shape (K,), optional
        Classifier bias (not decayed); adds the part ``r_b``.

    Returns
    -------
    float
        ``max(r_W, r_H[, r_b])``, computed in float64 (the widest float of the
        arrays' library); 0 at a KKT point.

    Raises
    ------
    ValueError
        If a lambda is not positive, `W` does not have `num_classes` rows, or
        the shapes or labels are inconsistent (as `ncgeom.loss.ufm_gradients`).
    TypeError
        As `ncgeom.loss.ufm_gradients`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([8, 4, 2], 2e-2, 2e-2)
    >>> y = np.repeat(np.arange(3), [8, 4, 2])
    >>> ufm_kkt_residual(opt.classifier(), opt.means()[y], y, 3, 2e-2, 2e-2) < 1e-10
    True
    >>> ufm_kkt_residual(1.1 * opt.classifier(), opt.means()[y], y, 3, 2e-2, 2e-2) > 0.01
    True
    """
    return max(ufm_kkt_parts(W, H, labels, num_classes, lambda_w, lambda_h, bias).values())


def _check_lambdas(lambda_w: Any, lambda_h: Any) -> None:
    for name, value in (("lambda_w", lambda_w), ("lambda_h", lambda_h)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` must be a real number; got {value!r}")
        if not value > 0:
            raise ValueError(f"`{name}` must be > 0 (the residual divides by it); got {value!r}")


def _norm(x: Array, xp: Any) -> Array:
    return xp.sqrt(xp.sum(x * x))


def _ratio(top: Array, bottom: Array, xp: Any) -> Array:
    safe = xp.where(bottom > 0, bottom, xp.ones_like(bottom))
    return xp.where(bottom > 0, top / safe, xp.zeros_like(top))


def _mean_row_norm(W: Array, H: Array, labels: Array, b: Array, xp: Any) -> Array:
    logits = xp.matmul(H, xp.matrix_transpose(W)) + b[None, :]
    logits = logits - xp.max(logits, axis=1, keepdims=True)
    exps = xp.exp(logits)
    probs = exps / xp.sum(exps, axis=1, keepdims=True)
    targets = xp.arange(W.shape[0], dtype=labels.dtype, device=array_device(labels))
    onehot = xp.astype(labels[:, None] == targets[None, :], probs.dtype)
    rows = probs - onehot
    return xp.mean(xp.sqrt(xp.sum(rows * rows, axis=1)))
