"""A functional neural-collapse tracker for JAX: state in, state out, inside ``jax.jit``.

The state is an `ncgeom.ClassStats` whose arrays are JAX arrays. Importing
this module registers `ClassStats` as a JAX pytree (its six arrays are the
leaves), so the state passes through ``jax.jit``, ``jax.lax.scan``,
``shard_map`` and ``pmap`` like any other pytree, and ``ClassStats.merge``
traces.

Validation that reads values back to the host (labels in [0, K), finite
features) cannot run inside a traced function: `update_stats` does it only
when ``validate=True`` (the default, eager calls); inside ``jax.jit`` pass
``validate=False`` and, if the data are not trusted, call `validate_batch`
on the batch outside the compiled function. Unchecked, a label outside
[0, K) is dropped by the class sums while the batch's other rows count, and
NaN features make the statistics of their class NaN.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ncgeom import ClassStats, NCReport, nc_report
from ncgeom.checks import check_batch, check_num_classes, check_positive
from ncgeom.theory import ufm_relu_optimum

__all__ = [
    "batch_stats",
    "init_stats",
    "nc_metrics",
    "psum_stats",
    "register_pytree",
    "update_stats",
    "validate_batch",
]

Array = Any

# Features whose class means lie within 2**±16 of 1 are stored unscaled; beyond
# that, in units of the power of two nearest the largest mean entry, as
# `ClassStats.scale` describes (squares then stay inside the dtype's range).
_SCALE_FREE_EXPONENT = 16

_REGISTERED = False
_LOCK = threading.Lock()


def register_pytree() -> None:
    """Register `ncgeom.ClassStats` as a JAX pytree (once; later calls do nothing).

    The leaves are ``counts, shift, sums, sqnorms, gram, scale`` (a missing
    Gram or scale is an empty subtree). Importing `ncgeom_jax.tracker` calls it.

    Examples
    --------
    >>> import jax
    >>> from ncgeom import ClassStats
    >>> from ncgeom_jax import init_stats, register_pytree
    >>> register_pytree()
    >>> len(jax.tree_util.tree_leaves(init_stats(3, 4)))
    6
    """
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        jax.tree_util.register_pytree_node(ClassStats, _flatten, _unflatten)
        _REGISTERED = True


def _flatten(stats: ClassStats) -> tuple[tuple[Array, ...], None]:
    return (stats.counts, stats.shift, stats.sums, stats.sqnorms, stats.gram, stats.scale), None


def _unflatten(_: None, children: Sequence[Array]) -> ClassStats:
    return ClassStats(*children)


register_pytree()


def init_stats(
    num_classes: int, dim: int, *, gram: bool = True, dtype: Any = None, device: Any = None
) -> ClassStats:
    """The empty state: statistics of no samples, as JAX arrays.

    Parameters
    ----------
    num_classes, dim : int
        K (>= 2) and the feature dimension d.
    gram : bool
        Keep the (d, d) within-class Gram (NC1 of streamed statistics needs it).
    dtype : jax.numpy dtype, optional
        Precision of the sums: float64 when ``jax_enable_x64`` is on, else
        float32.
    device : jax.Device, optional
        Default: JAX's default device.

    Examples
    --------
    >>> from ncgeom_jax import init_stats
    >>> init_stats(3, 2).counts.tolist()
    [0, 0, 0]
    """
    if dtype is None:
        dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    return ClassStats.empty(num_classes, dim, gram=gram, xp=jnp, device=device, dtype=dtype)


def validate_batch(features: Array, labels: Array, num_classes: int) -> None:
    """Check one batch on the host: shapes, integer labels in [0, K), finite features.

    The checks of ncgeom's core (`ncgeom.checks.check_batch`), with its error
    messages; one small device-to-host read. Call it outside ``jax.jit``.

    Raises
    ------
    TypeError, ValueError
        As `ncgeom.ClassStats.update` would.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import validate_batch
    >>> jax.config.update("jax_enable_x64", True)  # int64 labels, float64 sums
    >>> validate_batch(jnp.ones((2, 3)), jnp.asarray([0, 3]), 3)
    Traceback (most recent call last):
        ...
    ValueError: `labels` must lie in [0, 3); got max 3 at row 1
    """
    check_batch(features, labels, check_num_classes(num_classes), jnp, check_finite=True)


def batch_stats(
    features: Array,
    labels: Array,
    num_classes: int,
    *,
    gram: bool = True,
    dtype: Any = None,
) -> ClassStats:
    """`ClassStats` of one batch, with JAX operations only (traceable, no host reads).

    The two passes of ncgeom's engine: class means (summed in the precision
    of `dtype`) set the shifts and the power-of-two scale, then the
    deviations from them give the class sums (the residual that makes the
    means exact), squared norms and Gram. Labels are not checked (see
    `validate_batch`).

    Parameters
    ----------
    features : jax.Array, shape (B, d)
    labels : jax.Array, shape (B,), integer in [0, K)
    num_classes : int
    gram : bool
    dtype : dtype, optional
        Default: float64 for float64 features, else float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ncgeom_jax import batch_stats
    >>> x = jnp.asarray([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    >>> stats = batch_stats(x, jnp.asarray([0, 0, 1]), 2)
    >>> stats.means.tolist(), stats.class_variances.tolist()
    ([[2.0, 0.0], [0.0, 2.0]], [1.0, 0.0])
    """
    num_classes = check_num_classes(num_classes)
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        msg = (
            "`features` must be (B, d) and `labels` (B,); got shapes "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
        raise ValueError(msg)
    if dtype is None:
        dtype = jnp.float64 if features.dtype == jnp.float64 else jnp.float32
    labels = labels.astype(jnp.int32 if num_classes < 2**31 else jnp.int64)
    x = features.astype(dtype)
    count_dtype = jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32
    counts = jax.ops.segment_sum(
        jnp.ones(labels.shape, dtype=count_dtype), labels, num_segments=num_classes
    )
    totals = jax.ops.segment_sum(x, labels, num_segments=num_classes)
    means = totals / jnp.maximum(counts, 1).astype(dtype)[:, None]
    largest = jnp.max(jnp.abs(means))
    usable = jnp.isfinite(largest) & (largest > 0)
    exponent = jnp.round(jnp.log2(jnp.where(usable, largest, 1.0)))
    far = jnp.abs(exponent) > _SCALE_FREE_EXPONENT
    scale = jnp.where(far, jnp.exp2(exponent), 1.0).astype(dtype)
    shift = means / scale
    dev = x / scale - shift[labels]
    sums = jax.ops.segment_sum(dev, labels, num_segments=num_classes)
    sqnorms = jax.ops.segment_sum(jnp.sum(dev * dev, axis=1), labels, num_segments=num_classes)
    return ClassStats(counts, shift, sums, sqnorms, dev.T @ dev if gram else None, scale)


def update_stats(
    stats: ClassStats, features: Array, labels: Array, *, validate: bool = True
) -> ClassStats:
    """New statistics that also hold one batch: ``stats.merge(batch_stats(...))``.

    Pure, so it compiles: ``jax.jit(update_stats, static_argnames="validate")``
    with ``validate=False``, or inside a training step.

    Parameters
    ----------
    stats : ClassStats
        The state (JAX arrays).
    features : jax.Array, shape (B, d)
    labels : jax.Array, shape (B,)
    validate : bool
        Check the batch on the host first (`validate_batch`; default). Must be
        False inside ``jax.jit`` (the check reads values back): then nothing
        checks the labels' range or the features' finiteness.

    Raises
    ------
    TypeError
        If ``validate=True`` inside a traced function.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import init_stats, update_stats
    >>> step = jax.jit(update_stats, static_argnames="validate")
    >>> stats = init_stats(2, 2)
    >>> for _ in range(3):
    ...     stats = step(stats, jnp.eye(2), jnp.asarray([0, 1]), validate=False)
    >>> stats.counts.tolist()
    [3, 3]
    """
    if not isinstance(stats, ClassStats):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    if validate:
        check_update(features, labels, stats)
    batch = batch_stats(
        features, labels, stats.num_classes, gram=stats.gram is not None, dtype=stats.dtype
    )
    return stats.merge(batch)


def check_update(
    features: Array, labels: Array, stats: ClassStats, what: str = "`features`"
) -> None:
    """The host checks of ``update_stats(..., validate=True)``: labels in range,
    finite features (`validate_batch`) and as many columns as `stats`.

    `what` names the features in the messages. Refused inside a traced
    function, which cannot read the batch back.
    """
    if any(isinstance(a, jax.core.Tracer) for a in (features, labels, stats.shift)):
        msg = (
            "`validate=True` reads the batch back to the host, which a traced function "
            "(jax.jit, scan, shard_map) cannot: pass validate=False inside it and call "
            "validate_batch(features, labels, num_classes) outside"
        )
        raise TypeError(msg)
    validate_batch(features, labels, stats.num_classes)
    if features.shape[1] != stats.dim:
        msg = f"{what} must have {stats.dim} columns like the statistics; got {features.shape[1]}"
        raise ValueError(msg)


def psum_stats(stats: ClassStats, axis_name: Any) -> ClassStats:
    """Combine the statistics of every device of a mapped axis with ``jax.lax.psum``.

    Call it inside ``jax.shard_map`` or ``jax.pmap`` (and ``jax.jit``); every
    device returns the statistics of all devices' samples. The algorithm of
    `ncgeom.plugins.reduce_class_stats`, in collectives that trace: a common
    power-of-two scale (``pmax``), the global class means as common shifts
    (one ``psum`` of ``n_k mean_k``), each device's statistics re-centred on
    them (`ClassStats.rebase`, exact), then the counts, sums, squared norms
    and Gram summed (``psum`` of a pytree). The shapes agree by construction.

    Parameters
    ----------
    stats : ClassStats
        This device's statistics.
    axis_name : hashable
        The mapped axis.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import batch_stats, psum_stats
    >>> def per_device(x, y):
    ...     return psum_stats(batch_stats(x, y, 2), "d")
    >>> x = jnp.eye(2)[None].repeat(jax.local_device_count(), axis=0)
    >>> y = jnp.asarray([[0, 1]]).repeat(jax.local_device_count(), axis=0)
    >>> stats = jax.pmap(per_device, axis_name="d")(x, y)
    >>> stats.counts[0].tolist() == [jax.local_device_count()] * 2
    True
    """
    if not isinstance(stats, ClassStats):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    has_samples = jnp.sum(stats.counts) > 0
    largest = jax.lax.pmax(jnp.where(has_samples, stats.unit_scale, 0.0), axis_name)
    scale = jnp.where(largest > 0, largest, 1.0).astype(stats.dtype)
    local = stats.rescaled(scale)
    counts = jax.lax.psum(local.counts, axis_name)
    n = local.counts.astype(local.dtype)[:, None]
    weighted = jax.lax.psum(n * local.scaled_means, axis_name)
    shift = weighted / jnp.maximum(counts, 1).astype(local.dtype)[:, None]
    local = local.rebase(shift)
    sums, sqnorms, gram = jax.lax.psum((local.sums, local.sqnorms, local.gram), axis_name)
    return ClassStats(counts, shift, sums, sqnorms, gram, scale)


def nc_metrics(
    stats: ClassStats,
    classifier: Array | None = None,
    *,
    lambda_w: float | None = None,
    lambda_h: float | None = None,
    counts: Sequence[int] | None = None,
    bias: Array | None = None,
    ood_mean: Array | None = None,
) -> NCReport:
    """The `ncgeom.NCReport` of the state (on the host: call it outside ``jax.jit``).

    Parameters
    ----------
    stats : ClassStats
    classifier : jax.Array (K, d), optional
        Enables the classifier metrics (e.g. ``params["Dense_1"]["kernel"].T``:
        a Flax kernel is (d, K)).
    lambda_w, lambda_h : float, optional
        Give both to compare with the UFM+ optimum
        (`ncgeom.theory.ufm_relu_optimum`) for `counts`.
    counts : sequence of int, optional
        Class counts of the training set; default the observed counts.
    bias : jax.Array (K,), optional
        The classifier's bias (e.g. ``params["Dense_1"]["bias"]``), for
        ``bias_collapse``; needs `classifier`.
    ood_mean : jax.Array (d,), optional
        Mean feature of out-of-distribution samples, for NC5
        (``ood_deviation``; see `ncgeom.nc_report`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import batch_stats, nc_metrics
    >>> jax.config.update("jax_enable_x64", True)  # float64 reports
    >>> y = jnp.arange(60) % 3
    >>> report = nc_metrics(batch_stats(5 * jnp.eye(3)[y] + 0.01 * (y[:, None] == 0), y, 3))
    >>> report.num_samples, report.nc1 < 1e-6
    (60, True)
    """
    if (lambda_w is None) != (lambda_h is None):
        msg = (
            "`lambda_w` and `lambda_h` must be given together; "
            f"got lambda_w={lambda_w!r}, lambda_h={lambda_h!r}"
        )
        raise ValueError(msg)
    theory = None
    if lambda_w is not None:
        lambda_w = check_positive(lambda_w, "lambda_w")
        lambda_h = check_positive(lambda_h, "lambda_h")
        if counts is None:
            counts = [int(n) for n in stats.counts.tolist()]
        theory = ufm_relu_optimum(counts, lambda_w, lambda_h, xp=jnp, dtype=stats.dtype)
    return nc_report(stats, classifier, bias, theory=theory, ood_mean=ood_mean)
