"""Per-layer statistics for JAX: one `ncgeom.ClassStats` per captured layer.

`capture_features(..., layers=...)` returns the raw outputs of several layers
of a Flax model in one forward pass; the functions here reduce each to
(samples, d) with ``ncgeom.layer_features(..., layout="channels_last")``
(JAX's NHWC: average pooling over H and W by default) and accumulate them in
a dict of `ClassStats`, a pytree that passes through ``jax.jit``.
`layer_metrics` turns the dict into an `ncgeom.DepthReport`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ncgeom import ClassStats
from ncgeom.measure.layers import layer_features

from .tracker import batch_stats, check_update, init_stats

__all__ = [
    "init_layer_stats",
    "init_second_pass",
    "layer_batch_stats",
    "layer_metrics",
    "update_layer_stats",
    "update_second_pass",
]

Array = Any
Reduce = str | Mapping[str, str]
LAYOUT = "channels_last"


def _mode(reduce: Reduce, name: str) -> str:
    if isinstance(reduce, str):
        return reduce
    if not isinstance(reduce, Mapping):
        msg = f"`reduce` must be a mode or a mapping layer -> mode; got {reduce!r}"
        raise TypeError(msg)
    if name not in reduce:
        msg = f"`reduce` gives no mode for the layer {name!r}; it names {sorted(reduce)}"
        raise ValueError(msg)
    return reduce[name]


def _check_features(features: Any) -> Mapping[str, Array]:
    if not isinstance(features, Mapping) or not features:
        msg = (
            "`features` must be a non-empty mapping layer -> array (as capture_features(..., "
            f"layers=...) returns); got {type(features).__name__}"
        )
        raise TypeError(msg)
    return features


def _keeps_gram(gram: bool, mode: str) -> bool:
    """Flattened layers never keep a (d, d) Gram: their NC1 comes from a second pass."""
    return gram and mode != "flatten"


def layer_batch_stats(
    features: Mapping[str, Array],
    labels: Array,
    num_classes: int,
    *,
    reduce: Reduce = "pool",
    gram: bool = True,
    dtype: Any = None,
) -> dict[str, ClassStats]:
    """The `ClassStats` of one batch for every layer (traceable, no host reads).

    Parameters
    ----------
    features : mapping str -> jax.Array
        Raw layer outputs, e.g. from ``capture_features(..., layers=...)``:
        (B, d), NHWC feature maps (B, H, W, C), sequences (B, L, C) or tokens.
    labels : jax.Array, shape (B,)
        Integer labels in [0, K); (B, T) for ``"tokens"`` layers is allowed
        as `ncgeom.layer_features` describes.
    num_classes : int
    reduce : str or mapping str -> str
        ``"pool"`` (average over every axis but the batch and the last),
        ``"flatten"`` (d = H*W*C, no Gram kept) or ``"tokens"`` (each token a
        sample), for all layers or per layer.
    gram : bool
        Keep the (d, d) within-class Gram of the pooled and token layers.
    dtype : dtype, optional
        Of the sums; default as `batch_stats`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ncgeom_jax import layer_batch_stats
    >>> maps = {"conv": jnp.ones((4, 3, 3, 2)), "dense": jnp.eye(4)}
    >>> stats = layer_batch_stats(maps, jnp.asarray([0, 0, 1, 1]), 2)
    >>> {name: s.dim for name, s in stats.items()}
    {'conv': 2, 'dense': 4}
    """
    result = {}
    for name, value in _check_features(features).items():
        mode = _mode(reduce, name)
        x, y = layer_features(value, labels, reduce=mode, layout=LAYOUT)
        result[name] = batch_stats(x, y, num_classes, gram=_keeps_gram(gram, mode), dtype=dtype)
    return result


def init_layer_stats(
    num_classes: int,
    features: Mapping[str, Any],
    *,
    reduce: Reduce = "pool",
    gram: bool = True,
    dtype: Any = None,
) -> dict[str, ClassStats]:
    """The empty state of every layer, with the dimensions `features` reduce to.

    Parameters
    ----------
    num_classes : int
    features : mapping str -> array or jax.ShapeDtypeStruct
        One batch of raw layer outputs, or only their shapes (e.g.
        ``jax.eval_shape`` of a ``capture_features`` call).
    reduce, gram, dtype
        As `layer_batch_stats`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import init_layer_stats
    >>> shapes = {"conv": jax.ShapeDtypeStruct((8, 5, 5, 3), jnp.float32)}
    >>> init_layer_stats(4, shapes, reduce="flatten")["conv"].dim
    75
    """
    result = {}
    for name, value in _check_features(features).items():
        mode = _mode(reduce, name)
        shape = jax.ShapeDtypeStruct(tuple(value.shape), value.dtype)
        rows = jax.ShapeDtypeStruct(shape.shape[:1], jnp.int32)
        reduced = jax.eval_shape(
            lambda x, y, m=mode: layer_features(x, y, reduce=m, layout=LAYOUT)[0], shape, rows
        )
        result[name] = init_stats(
            num_classes, int(reduced.shape[1]), gram=_keeps_gram(gram, mode), dtype=dtype
        )
    return result


def update_layer_stats(
    stats: Mapping[str, ClassStats],
    features: Mapping[str, Array],
    labels: Array,
    *,
    reduce: Reduce = "pool",
    validate: bool = True,
) -> dict[str, ClassStats]:
    """New per-layer statistics that also hold one batch (pure; compiles with ``validate=False``).

    Parameters
    ----------
    stats : mapping str -> ClassStats
        The state, e.g. from `init_layer_stats`; the same layers as `features`.
    features : mapping str -> jax.Array
        Raw layer outputs of the batch.
    labels : jax.Array
    reduce : str or mapping str -> str
        As `layer_batch_stats`; must be the mode the state was made with.
    validate : bool
        Check the batch on the host first (labels in [0, K), finite features,
        dimensions); must be False inside ``jax.jit``.

    Raises
    ------
    TypeError
        If ``validate=True`` inside a traced function.
    ValueError
        If the layers of `stats` and `features` differ, or a check fails.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import init_layer_stats, update_layer_stats
    >>> maps = {"conv": jnp.ones((4, 3, 3, 2)), "dense": jnp.eye(4)}
    >>> y = jnp.asarray([0, 0, 1, 1])
    >>> step = jax.jit(update_layer_stats, static_argnames=("reduce", "validate"))
    >>> state = step(init_layer_stats(2, maps), maps, y, validate=False)
    >>> state["conv"].counts.tolist()
    [2, 2]
    """
    features = _check_features(features)
    if not isinstance(stats, Mapping) or set(stats) != set(features):
        have = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
        msg = f"`stats` must hold the layers of `features`, {sorted(features)}; got {have}"
        raise ValueError(msg)
    result = {}
    for name, value in features.items():
        state = stats[name]
        if not isinstance(state, ClassStats):
            msg = f"`stats[{name!r}]` must be a ClassStats; got {type(state).__name__}"
            raise TypeError(msg)
        mode = _mode(reduce, name)
        x, y = layer_features(value, labels, reduce=mode, layout=LAYOUT)
        if validate:
            check_update(x, y, state, f"`features[{name!r}]` (reduced)")
        batch = batch_stats(
            x, y, state.num_classes, gram=state.gram is not None, dtype=state.dtype
        )
        result[name] = state.merge(batch)
    return result


def init_second_pass(stats: Mapping[str, ClassStats], *, ncc: bool = True) -> dict[str, Any]:
    """A `ncgeom.SecondPass` per layer, from the final first-pass statistics.

    Layers whose statistics keep no Gram (flattened) also accumulate the
    within-class scatter on the span of the centred means, which gives their
    NC1 with no (d, d) array; every layer gives the nearest-class-centre
    accuracy against the final means when `ncc` is True. Feed it the same data
    again with `update_second_pass` (eagerly, outside ``jax.jit``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ncgeom_jax import init_second_pass, layer_batch_stats
    >>> maps = {"conv": jnp.arange(48.0).reshape(4, 2, 2, 3)}
    >>> stats = layer_batch_stats(maps, jnp.asarray([0, 0, 1, 1]), 2, reduce="flatten")
    >>> init_second_pass(stats)["conv"].scatter  # flattened: no Gram, so NC1 comes from here
    True
    """
    from ncgeom.measure.layers import SecondPass

    return {
        name: SecondPass(state, scatter=state.gram is None, ncc=ncc)
        for name, state in stats.items()
    }


def update_second_pass(
    passes: Mapping[str, Any],
    features: Mapping[str, Array],
    labels: Array,
    *,
    reduce: Reduce = "pool",
) -> Mapping[str, Any]:
    """Add one batch of raw layer outputs to every layer's `ncgeom.SecondPass`.

    Returns `passes` (updated in place), for chaining. `reduce` must be the mode
    the first pass used.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import init_second_pass, layer_batch_stats, update_second_pass
    >>> jax.config.update("jax_enable_x64", True)
    >>> y = jnp.asarray([0, 0, 1, 1])
    >>> maps = {"dense": jnp.asarray([[1.0, 0.0], [0.2, 0.1], [0.0, 1.0], [0.9, 0.2]])}
    >>> passes = init_second_pass(layer_batch_stats(maps, y, 2))
    >>> float(update_second_pass(passes, maps, y)["dense"].ncc_accuracy())
    0.75
    """
    for name, value in _check_features(features).items():
        if name not in passes:
            msg = f"`passes` has no layer {name!r}; it holds {list(passes)}"
            raise ValueError(msg)
        x, y = layer_features(value, labels, reduce=_mode(reduce, name), layout=LAYOUT)
        passes[name].update(x, y)
    return passes


def layer_metrics(
    stats: Mapping[str, ClassStats],
    classifier: Array | None = None,
    *,
    second: Mapping[str, Any] | None = None,
    reduce: Reduce = "pool",
    bias: Array | None = None,
    lambda_w: float | None = None,
    lambda_h: float | None = None,
    counts: Sequence[int] | None = None,
    ood_mean: Array | None = None,
    layers: Sequence[str] | None = None,
) -> Any:
    """The `ncgeom.DepthReport` of per-layer statistics (on the host, outside ``jax.jit``).

    Parameters
    ----------
    stats : mapping str -> ClassStats
        One entry per layer; the last in depth order is the classifier's input.
    classifier : jax.Array (K, d), optional
        The classifier (a Flax kernel transposed), for the last layer's
        classifier metrics; `bias` likewise.
    second : mapping str -> SecondPass, optional
        From `init_second_pass` / `update_second_pass`: the nearest-class-centre
        accuracy per layer and the NC1 of flattened layers.
    reduce : str or mapping str -> str
        The mode each layer was reduced with (recorded in the report).
    lambda_w, lambda_h, counts
        As `nc_metrics`: the UFM+ optimum for the last layer.
    ood_mean : jax.Array (d,), optional
        For the last layer's NC5.
    layers : sequence of str, optional
        The layers in depth order (first = shallowest). Default: the order of
        `stats`. ``jax.jit`` returns dicts with their keys sorted, so pass the
        order of the captured features (``layers=list(features)``) for a state
        that went through a compiled function.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from ncgeom_jax import layer_batch_stats, layer_metrics
    >>> jax.config.update("jax_enable_x64", True)
    >>> y = jnp.arange(30) % 3
    >>> noise = jnp.sin(jnp.arange(90.0)).reshape(30, 3)
    >>> maps = {"a": jnp.eye(3)[y] + noise, "b": jnp.eye(3)[y] + 0.01 * noise}
    >>> report = layer_metrics(layer_batch_stats(maps, y, 3))
    >>> report.layers, report.value("b", "nc1") < report.value("a", "nc1")
    (('a', 'b'), True)
    """
    from ncgeom.checks import check_positive
    from ncgeom.measure.depth import depth_report
    from ncgeom.theory import ufm_relu_optimum

    if not isinstance(stats, Mapping) or not stats:
        msg = f"`stats` must be a non-empty mapping layer -> ClassStats; got {stats!r}"
        raise TypeError(msg)
    if (lambda_w is None) != (lambda_h is None):
        msg = (
            "`lambda_w` and `lambda_h` must be given together; "
            f"got lambda_w={lambda_w!r}, lambda_h={lambda_h!r}"
        )
        raise ValueError(msg)
    order = list(stats) if layers is None else list(layers)
    if sorted(order) != sorted(stats):
        msg = f"`layers` must name the layers of `stats`, {sorted(stats)}; got {order}"
        raise ValueError(msg)
    stats = {name: stats[name] for name in order}
    last = stats[order[-1]]
    theory = None
    if lambda_w is not None:
        lambda_w = check_positive(lambda_w, "lambda_w")
        lambda_h = check_positive(lambda_h, "lambda_h")
        if counts is None:
            counts = [int(n) for n in last.counts.tolist()]
        theory = ufm_relu_optimum(counts, lambda_w, lambda_h, xp=jnp, dtype=last.dtype)
    modes = {name: _mode(reduce, name) for name in order}
    return depth_report(
        stats,
        second=second,
        classifier=classifier,
        bias=bias,
        reduce=modes,
        theory=theory,
        ood_mean=ood_mean,
    )
