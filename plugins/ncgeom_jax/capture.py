"""Features of Flax (linen) models: the penultimate features, or several layers at once.

Without ``layers=``, `capture_features` returns the penultimate features (a
sown value or the input of a layer). With ``layers=``, it returns the outputs
of every matched submodule and the matched sown values of one forward pass,
through Flax's intermediate capture (``capture_intermediates`` with a filter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn

__all__ = ["capture_features"]

Array = Any
#: What ``layers=`` accepts: a name or path, a module type, a predicate
#: ``(path, module) -> bool``, or a sequence of names and types.
LayerSpec = str | type | Callable[[str, Any], bool] | Sequence[str | type]


def capture_features(
    model: nn.Module,
    variables: Mapping[str, Any],
    *args: Any,
    layer: str | None = None,
    layers: LayerSpec | None = None,
    sown: str = "features",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Apply a Flax model and return its output and its features.

    With ``layers=`` (several layers in one forward pass), the features are a
    dict ``{name: array}`` in call order: the *output* of every submodule that
    `layers` matches (as Flax's ``capture_intermediates`` records it) and every
    matched value the model sows in ``"intermediates"``; see below.

    Without ``layers=``, the penultimate features, in order of precedence:

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
    layers : str, type, callable or sequence, optional
        Several layers at once (not with `layer`). A string matches a
        submodule whose ``/``-joined path (``"block1/Conv_0"``) or name
        (``"Conv_0"``: every submodule of that name) it equals, and a sown
        value whose path (``"block1/features"``) or name (every value sown
        under it) it equals; a type matches the submodules that are
        instances of it (``nn.Conv``); a callable ``(path, module) -> bool``
        selects submodules. The model itself (its output is `output`) is
        never taken.
    sown : str
        Name of the sown value to look for (default ``"features"``; not used
        with `layers`).

    Returns
    -------
    output
        What the model returns.
    features : jax.Array or dict
        Without `layers`: (B, d), the layer's first positional input. With
        `layers`: ``{key: array}`` in call order, the raw output of each
        matched submodule under its path and each matched sown value under
        ``"<path>/<name>"``; a sown value comes before the output of the
        module that sows it, and a module called more than once gives its
        last output. Reduce feature maps with ``ncgeom.layer_features(...,
        layout="channels_last")`` (NHWC) or `ncgeom_jax.layer_batch_stats`.

    Raises
    ------
    TypeError
        If `layers` is not one of the forms above.
    ValueError
        If `layer` is never called, nothing is sown and no ``nn.Dense`` is
        called, `layers` matches nothing (the message lists what it could
        match), or both `layer` and `layers` are given.

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
    >>> logits, found = capture_features(net, variables, x, layers=nn.Dense)
    >>> {name: value.shape for name, value in found.items()}
    {'Dense_0': (5, 8), 'Dense_1': (5, 3)}
    """
    if layers is not None:
        if layer is not None:
            msg = f"give one of `layer` and `layers`; got layer={layer!r} and layers={layers!r}"
            raise ValueError(msg)
        return _capture_layers(model, variables, args, kwargs, _matcher(layers))
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


def _matcher(layers: Any) -> Callable[[str, Any], bool]:
    """A predicate ``(path, module_or_None) -> bool`` for ``layers=``.

    For a sown value the module is None and the path ends in the value's name.
    """
    if callable(layers) and not isinstance(layers, type):
        predicate = layers
        return lambda path, module: module is not None and bool(predicate(path, module))
    items = [layers] if isinstance(layers, (str, type)) else layers
    if not isinstance(items, Sequence) or not items:
        msg = (
            "`layers` must be a name or path, a module type, a predicate (path, module) -> "
            f"bool, or a non-empty sequence of names and types; got {layers!r}"
        )
        raise TypeError(msg)
    names, types = set(), []
    for item in items:
        if isinstance(item, str):
            names.add(item)
        elif isinstance(item, type):
            types.append(item)
        else:
            msg = f"`layers` must hold names and module types; got {item!r} in {layers!r}"
            raise TypeError(msg)

    def match(path: str, module: Any) -> bool:
        if path in names or path.rsplit("/", 1)[-1] in names:
            return True
        return module is not None and isinstance(module, tuple(types))

    return match


def _module_path(module: Any) -> str:
    return "/".join(str(part) for part in getattr(module, "path", ()) or ())


def _capture_layers(
    model: nn.Module,
    variables: Mapping[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    match: Callable[[str, Any], bool],
) -> tuple[Any, dict[str, Array]]:
    """Apply the model once under Flax's intermediate capture; see `capture_features`."""
    finished: list[str] = []  # module paths, in the order their calls finish
    taken: set[str] = set()

    def capture(module: Any, method_name: str) -> bool:
        path = _module_path(module)
        finished.append(path)
        if method_name != "__call__" or not path:
            return False
        if match(path, module):
            taken.add(path)
            return True
        return False

    output, state = model.apply(
        variables, *args, capture_intermediates=capture, mutable=["intermediates"], **kwargs
    )
    tree = state.get("intermediates", {})
    features: dict[str, Array] = {}
    for path in dict.fromkeys(finished):
        node = _subtree(tree, path)
        for key, value in node.items():
            if key == "__call__" or not isinstance(value, tuple) or not value:
                continue
            sown_path = f"{path}/{key}" if path else key
            if match(sown_path, None):
                features[sown_path] = value[-1]
        if path in taken and isinstance(node.get("__call__"), tuple):
            features[path] = node["__call__"][-1]
    if not features:
        modules = sorted({p for p in finished if p})
        sown_names = sorted(_sown_paths(tree))
        msg = (
            f"`layers` matches no submodule and no sown value; submodules: {modules}; "
            f"sown values: {sown_names}"
        )
        raise ValueError(msg)
    return output, features


def _subtree(tree: Any, path: str) -> Mapping[str, Any]:
    node = tree
    for part in path.split("/") if path else ():
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def _sown_paths(tree: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, tuple):
                if key != "__call__":
                    found.append(path)
            else:
                found.extend(_sown_paths(value, path))
    return found
