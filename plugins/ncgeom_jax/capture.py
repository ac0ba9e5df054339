"""Penultimate features of Flax (linen) models: sown values or the input of a layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

__all__ = ["capture_features"]

Array = Any


def capture_features(
    model: nn.Module,
    variables: Mapping[str, Any],
    *args: Any,
    layer: str | None = None,
    sown: str = "features",
    **kwargs: Any,
) -> tuple[Any, Array]:
    """Apply a Flax model and return its output and its penultimate features.

    Which features, in order of precedence:

    1. ``layer`` given: the input of the submodule of that name or path
       (``"Dense_1"``, ``"head/Dense_0"``), as a forward pre-hook would see it.
    2. a value the model sows under the name `sown` in the collection
       ``"intermediates"`` (``self.sow("intermediates", "features", h)``).
    3. otherwise, the input of the last ``nn.Dense`` the model calls: the
       classifier's input in a model whose head is a dense layer.

    Pure and traceable: the capture happens while the model runs (through
    ``flax.linen.intercept_methods``), so the call works inside ``jax.jit``
    and the features keep their gradient.

    Parameters
    ----------
    model : flax.linen.Module
    variables : mapping
        The model's variables (``{"params": ...}``).
    *args, **kwargs
        Passed to ``model.apply`` (the inputs, ``train=...``, ``rngs=...``).
    layer : str, optional
        Name or ``/``-joined path of the layer whose input to capture.
    sown : str
        Name of the sown value to look for (default ``"features"``).

    Returns
    -------
    output
        What the model returns.
    features : jax.Array
        (B, d); the layer's first positional input.

    Raises
    ------
    ValueError
        If `layer` is never called, or nothing is sown and no ``nn.Dense`` is
        called.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from ncgeom_jax import capture_features
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         h = nn.relu(nn.Dense(8)(x))
    ...         return nn.Dense(3, use_bias=False)(h)
    >>> net, x = Net(), jnp.ones((5, 4))
    >>> variables = net.init(jax.random.key(0), x)
    >>> logits, h = capture_features(net, variables, x)
    >>> logits.shape, h.shape
    ((5, 3), (5, 8))
    >>> bool(jnp.allclose(logits, h @ variables["params"]["Dense_1"]["kernel"]))
    True
    """
    if layer is not None and not isinstance(layer, str):
        msg = f"`layer` must be a layer's name or path; got {type(layer).__name__}"
        raise TypeError(msg)
    calls: list[tuple[str, Array]] = []
    seen: list[str] = []

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__" and call_args:
            path = "/".join(str(part) for part in getattr(module, "path", ()) or ())
            seen.append(path or str(module.name))
            if layer is None:
                if isinstance(module, nn.Dense):
                    calls.append((path, call_args[0]))
            elif layer in (path, module.name):
                calls.append((path, call_args[0]))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        output, state = model.apply(variables, *args, mutable=["intermediates"], **kwargs)
    if layer is not None:
        if not calls:
            names = sorted(set(seen))
            msg = f"`layer` {layer!r} is never called by the model; its layers: {names}"
            raise ValueError(msg)
        return output, calls[-1][1]
    found = _find_sown(state.get("intermediates", {}), sown)
    if found:
        if len(found) > 1:
            msg = (
                f"the model sows {sown!r} in {len(found)} places; pass `layer` or sow "
                "one value under that name"
            )
            raise ValueError(msg)
        return output, found[0]
    if not calls:
        msg = (
            f"the model sows no {sown!r} and calls no nn.Dense: pass `layer`, or sow the "
            f'features (self.sow("intermediates", {sown!r}, h))'
        )
        raise ValueError(msg)
    return output, calls[-1][1]


def _find_sown(tree: Any, name: str) -> list[Array]:
    """The last value sown under `name` in each module of an ``intermediates`` tree."""
    found: list[Array] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if key == name and isinstance(value, tuple) and value:
                found.append(value[-1])
            else:
                found.extend(_find_sown(value, name))
    return found
