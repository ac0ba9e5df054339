"""ncgeom for JAX and Flax, built on ncgeom's public API only.

- `capture_features`: run a Flax (linen) model and return its output and its
  penultimate features: a value the model sows (``self.sow("intermediates",
  "features", h)``), or the input of a named layer (default: the last
  ``nn.Dense`` called).
- `capture_features(..., layers=...)`: the outputs of several layers (and
  sown values) of one forward pass, through Flax's intermediate capture;
  `init_layer_stats` / `update_layer_stats` / `layer_batch_stats` keep one
  `ncgeom.ClassStats` per layer (NHWC feature maps pooled over H and W by
  default), `init_second_pass` / `update_second_pass` replay the data for the
  nearest-class-centre accuracy and the NC1 of flattened layers, and
  `layer_metrics` gives the `ncgeom.DepthReport`.
- `init_stats` / `update_stats`: a functional tracker, state in and state out.
  The state is an `ncgeom.ClassStats`, registered as a JAX pytree, so that
  ``jax.jit(update_stats, ...)`` accumulates on the device; `nc_metrics` turns
  the state into an `ncgeom.NCReport` (on the host, outside jit).
- `psum_stats`: combine the statistics of the devices of a ``shard_map`` /
  ``pmap`` axis with ``jax.lax.psum`` (exact, inside jit).
- `ufm_penalty` / `ufm_loss`: the UFM+ regularisation terms and objective as
  JAX functions, differentiable with ``jax.grad``.
- `plugin`: the `ncgeom.plugins.FrameworkPlugin` of JAX (entry point
  ``jax = ncgeom_jax:plugin`` of the group ``ncgeom.plugins``).

Importing this package does not import JAX; the functions above import it
when first accessed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._plugin import JaxPlugin, plugin

if TYPE_CHECKING:
    from .capture import capture_features
    from .layers import (
        init_layer_stats,
        init_second_pass,
        layer_batch_stats,
        layer_metrics,
        update_layer_stats,
        update_second_pass,
    )
    from .regularizer import ufm_loss, ufm_penalty
    from .tracker import (
        batch_stats,
        init_stats,
        nc_metrics,
        psum_stats,
        register_pytree,
        update_stats,
        validate_batch,
    )

__all__ = [
    "JaxPlugin",
    "batch_stats",
    "capture_features",
    "init_layer_stats",
    "init_second_pass",
    "init_stats",
    "layer_batch_stats",
    "layer_metrics",
    "nc_metrics",
    "plugin",
    "psum_stats",
    "register_pytree",
    "ufm_loss",
    "ufm_penalty",
    "update_layer_stats",
    "update_second_pass",
    "update_stats",
    "validate_batch",
]

_LAZY = {
    "capture_features": "capture",
    "init_layer_stats": "layers",
    "init_second_pass": "layers",
    "layer_batch_stats": "layers",
    "layer_metrics": "layers",
    "update_layer_stats": "layers",
    "update_second_pass": "layers",
    "ufm_loss": "regularizer",
    "ufm_penalty": "regularizer",
    "batch_stats": "tracker",
    "init_stats": "tracker",
    "nc_metrics": "tracker",
    "psum_stats": "tracker",
    "register_pytree": "tracker",
    "update_stats": "tracker",
    "validate_batch": "tracker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
