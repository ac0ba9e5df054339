"""The `FrameworkPlugin` of JAX.

Importing this module does not import JAX: `owns` looks JAX up in
`sys.modules`, and the other methods import it when called.
"""

from __future__ import annotations

import sys
from typing import Any

from ncgeom import ClassStats
from ncgeom.plugins import reduce_class_stats

__all__ = ["JaxPlugin", "plugin"]


class JaxPlugin:
    """ncgeom's plugin for JAX arrays (registered as ``"jax"``).

    JAX arrays are array-API arrays through ``array_api_compat`` (their
    namespace is ``jax.numpy``), so `to_array` returns the array itself.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ncgeom_jax import plugin
    >>> x = jnp.ones((3, 2))
    >>> plugin.owns(x), plugin.owns([1.0, 2.0])
    (True, False)
    >>> plugin.to_array(x) is x
    True
    """

    name = "jax"

    def owns(self, obj: Any) -> bool:
        """True for a `jax.Array` (tracers included); never imports JAX to decide."""
        jax = sys.modules.get("jax")
        return jax is not None and isinstance(obj, jax.Array)

    def to_array(self, tensor: Any) -> Any:
        """The array itself: no copy, same device.

        Raises
        ------
        TypeError
            If `tensor` is not a `jax.Array`.
        """
        if not self.owns(tensor):
            msg = f"`tensor` must be a jax.Array; got {type(tensor).__name__}"
            raise TypeError(msg)
        return tensor

    def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
        """Statistics of the samples of every JAX process (multi-host jobs).

        `stats` itself when the job has one process. Otherwise every process
        must call it; the statistics are combined with
        `ncgeom.plugins.reduce_class_stats` over
        ``jax.experimental.multihost_utils.process_allgather``. To combine the
        devices of one process inside ``jax.jit``, use `psum_stats`.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from ncgeom import ClassStats
        >>> from ncgeom_jax import plugin
        >>> stats = ClassStats.from_features(jnp.eye(3), jnp.asarray([0, 1, 1]), 2)
        >>> plugin.all_reduce_stats(stats) is stats
        True
        """
        if not isinstance(stats, ClassStats):
            msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
            raise TypeError(msg)
        import jax

        world_size = jax.process_count()
        if world_size == 1:
            return stats
        from jax.experimental import multihost_utils

        def all_gather(x: Any) -> list[Any]:
            gathered = multihost_utils.process_allgather(x, tiled=False)
            return [jax.numpy.asarray(gathered[i]) for i in range(world_size)]

        def all_reduce(x: Any) -> Any:
            gathered = multihost_utils.process_allgather(x, tiled=False)
            return jax.numpy.sum(jax.numpy.asarray(gathered), axis=0)

        return reduce_class_stats(
            stats,
            rank=jax.process_index(),
            world_size=world_size,
            all_gather=all_gather,
            all_reduce=all_reduce,
        )

    def __repr__(self) -> str:
        return "JaxPlugin(name='jax')"


#: The plugin object named by the ``ncgeom.plugins`` entry point ``jax``.
plugin = JaxPlugin()
