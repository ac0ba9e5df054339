"""The `FrameworkPlugin` of JAX.

Importing this module does not import JAX: `owns` looks JAX up in
`sys.modules`, and the other methods import it when called.
"""

from __future__ import annotations

import sys
from typing import Any

from ncgeom import ClassStats
from ncgeom.plugins import (
    ClassShard,
    Collectives,
    class_shards,
    reduce_class_stats,
    reduce_scatter_class_stats,
)

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
        group = self.collectives()
        if group.world_size == 1:
            return stats
        return reduce_class_stats(
            stats,
            rank=group.rank,
            world_size=group.world_size,
            all_gather=group.all_gather,
            all_reduce=group.all_reduce,
        )

    def collectives(self) -> Collectives:
        """The collectives of the JAX processes, as ncgeom calls them.

        All three go through
        ``jax.experimental.multihost_utils.process_allgather``: the
        all-reduce and the reduce-scatter sum the gathered arrays, so the
        reduce-scatter returns the right rows but moves as much as an
        all-gather. Rank 0 of 1, with collectives that return their argument,
        in a job of one process.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from ncgeom_jax import plugin
        >>> alone = plugin.collectives()
        >>> alone.rank, alone.world_size, alone.reduce_scatter(jnp.ones(2)).tolist()
        (0, 1, [1.0, 1.0])
        """
        import jax

        world_size = jax.process_count()
        if world_size == 1:
            return Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
        from jax.experimental import multihost_utils

        rank = jax.process_index()

        def all_gather(x: Any) -> list[Any]:
            gathered = multihost_utils.process_allgather(x, tiled=False)
            return [jax.numpy.asarray(gathered[i]) for i in range(world_size)]

        def all_reduce(x: Any) -> Any:
            gathered = multihost_utils.process_allgather(x, tiled=False)
            return jax.numpy.sum(jax.numpy.asarray(gathered), axis=0)

        def reduce_scatter(x: Any) -> Any:
            start, stop = class_shards(x.shape[0], world_size)[rank]
            gathered = multihost_utils.process_allgather(x, tiled=False)
            return jax.numpy.sum(jax.numpy.asarray(gathered)[:, start:stop, ...], axis=0)

        return Collectives(rank, world_size, all_gather, all_reduce, reduce_scatter)

    def reduce_scatter_stats(self, stats: ClassStats, *, step: int = 0) -> ClassShard:
        """This process's shard of the classes of every JAX process's samples.

        Every process must call it; process r returns the classes
        ``class_shards(K, jax.process_count())[r]`` (see
        `ncgeom.plugins.reduce_scatter_class_stats`). In a job of one process,
        the whole table as the one shard.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from ncgeom import ClassStats
        >>> from ncgeom_jax import plugin
        >>> stats = ClassStats.from_features(jnp.eye(3), jnp.asarray([0, 1, 1]), 2)
        >>> shard = plugin.reduce_scatter_stats(stats)
        >>> shard.offset, shard.stats.counts.tolist()
        (0, [1, 2])
        """
        if not isinstance(stats, ClassStats):
            msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
            raise TypeError(msg)
        return reduce_scatter_class_stats(stats, self.collectives(), step=step)

    def __repr__(self) -> str:
        return "JaxPlugin(name='jax')"


#: The plugin object named by the ``ncgeom.plugins`` entry point ``jax``.
plugin = JaxPlugin()
