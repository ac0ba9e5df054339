"""The UFM+ regularisation terms and objective as JAX functions (differentiable, traceable)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ncgeom.checks import check_nonnegative, check_positive_int

__all__ = ["ufm_loss", "ufm_penalty"]

Array = Any


def ufm_penalty(
    weight: Array, features: Array, *, lambda_w: float, lambda_h: float, num_samples: int
) -> Array:
    """``(lambda_w/2)||W||_F^2 + (N/B)(lambda_h/2) sum_batch ||h_i||^2``.

    Added to the batch-mean cross-entropy, it makes the loss of a batch of B
    samples an unbiased estimate of the UFM+ objective of a training set of
    N samples (the conventions of `ncgeom.loss`: ``lambda_h`` multiplies the
    sum of ``||h_i||^2`` over all N samples). The JAX twin of
    ``ncgeom_torch.ufm_penalty``.

    Parameters
    ----------
    weight : jax.Array (K, d)
        Classifier W, rows are classes (a Flax ``Dense`` kernel is (d, K): pass
        its transpose).
    features : jax.Array (B, d)
    lambda_w, lambda_h : float
        >= 0.
    num_samples : int
        N.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ncgeom_jax import ufm_penalty
    >>> w, h = jnp.ones((2, 3)), jnp.ones((4, 3))
    >>> round(float(ufm_penalty(w, h, lambda_w=0.1, lambda_h=0.01, num_samples=8)), 6)
    0.42
    """
    lambda_w = check_nonnegative(lambda_w, "lambda_w")
    lambda_h = check_nonnegative(lambda_h, "lambda_h")
    num_samples = check_positive_int(num_samples, "num_samples")
    _check_shapes(weight, features)
    batch = features.shape[0]
    return 0.5 * lambda_w * jnp.sum(weight * weight) + (
        0.5 * lambda_h * num_samples / batch
    ) * jnp.sum(features * features)


def ufm_loss(
    weight: Array,
    features: Array,
    labels: Array,
    *,
    lambda_w: float,
    lambda_h: float,
    num_samples: int | None = None,
    bias: Array | None = None,
) -> Array:
    """Batch-mean cross-entropy of ``h W^T + b`` plus `ufm_penalty`.

    With the whole training set as the batch (``num_samples`` None), this is
    the UFM+ objective of `ncgeom.loss.ufm_objective`, and ``jax.grad`` of it
    equals `ncgeom.loss.ufm_gradients`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import ufm_loss
    >>> w, h, y = jnp.eye(2), jnp.eye(2), jnp.asarray([0, 1])
    >>> grad_w = jax.grad(ufm_loss)(w, h, y, lambda_w=0.1, lambda_h=0.1)
    >>> grad_w.shape
    (2, 2)
    """
    _check_shapes(weight, features)
    if labels.shape != (features.shape[0],):
        msg = f"`labels` must have shape ({features.shape[0]},); got {tuple(labels.shape)}"
        raise ValueError(msg)
    if features.shape[0] == 0:
        msg = "`features` must hold at least one row; got an empty batch"
        raise ValueError(msg)
    logits = features @ weight.T
    if bias is not None:
        logits = logits + bias
    log_p = jax.nn.log_softmax(logits, axis=1)
    picked = jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=1)
    n = features.shape[0] if num_samples is None else num_samples
    penalty = ufm_penalty(weight, features, lambda_w=lambda_w, lambda_h=lambda_h, num_samples=n)
    return -jnp.mean(picked) + penalty


def _check_shapes(weight: Array, features: Array) -> None:
    if features.ndim != 2:
        msg = f"`features` must be 2-D (batch, dim); got shape {tuple(features.shape)}"
        raise ValueError(msg)
    if weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        msg = (
            f"`weight` must have shape (num_classes, {features.shape[1]}), as many columns "
            f"as `features`; got {tuple(weight.shape)}"
        )
        raise ValueError(msg)
