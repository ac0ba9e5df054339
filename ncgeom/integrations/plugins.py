"""Framework plugins: the `FrameworkPlugin` protocol and the plugin registry.

A plugin connects one framework (PyTorch, JAX, ...) to ncgeom. It answers
four questions: its `name`; whether an object belongs to it (`owns`, decided
without importing the framework); how to view one of its tensors as an
array-API array on the same device without copying (`to_array`); and how to
combine `ClassStats` across the processes of a distributed job
(`all_reduce_stats`).

Plugins are found through the entry-point group ``ncgeom.plugins`` (read once,
on the first lookup) and through `register_plugin`. The registry is the only
global state in ncgeom; a lock guards it, so lookups from several threads are
safe. A plugin's `all_reduce_stats` passes its framework's ``all_gather``
and ``all_reduce`` to `reduce_class_stats` (in `ncgeom.measure.distributed`,
next to `ClassStats`; also importable from here, its 0.1 path), which checks
every result of a collective. A plugin may also expose them as
``collectives()``, a `Collectives`, for the conformance suite to check; with
the optional ``reduce_scatter`` among them, `reduce_scatter_class_stats`
leaves each rank its shard of the classes (`class_shards`).
"""

from __future__ import annotations

import importlib.metadata
import threading
import warnings
from collections.abc import Callable, Collection
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .._lib.validate import check_protocol
from ..measure.distributed import (
    ClassShard,
    Collectives,
    class_shards,
    reduce_class_stats,
    reduce_scatter_class_stats,
)
from ..measure.shard_metrics import shard_classifier_metrics, shard_counts, shard_metrics
from ..measure.shard_ncc import shard_ncc_agreement
from ..measure.shard_nearest import ShardValues, shard_nearest_metrics
from ..measure.shard_pairs import shard_classifier_pair_metrics, shard_pair_metrics
from ..measure.shard_report import shard_report
from ..measure.shard_sampled import shard_sampled_pair_metrics
from ..measure.shard_theory import ShardTheory, shard_theory_metrics
from ..measure.sharded import ShardedClassStats
from ..measure.stats import ClassStats

__all__ = [
    "ClassShard",
    "Collectives",
    "ENTRY_POINT_GROUP",
    "FrameworkPlugin",
    "LoadedEntryPoint",
    "ShardTheory",
    "ShardValues",
    "ShardedClassStats",
    "available_plugins",
    "class_shards",
    "get_plugin",
    "load_entry_points",
    "reduce_class_stats",
    "reduce_scatter_class_stats",
    "register_plugin",
    "shard_classifier_metrics",
    "shard_classifier_pair_metrics",
    "shard_counts",
    "shard_metrics",
    "shard_ncc_agreement",
    "shard_nearest_metrics",
    "shard_pair_metrics",
    "shard_report",
    "shard_sampled_pair_metrics",
    "shard_theory_metrics",
    "unregister_plugin",
]

Array = Any

#: Entry-point group that installed plugins advertise themselves in.
ENTRY_POINT_GROUP = "ncgeom.plugins"

_PROTOCOL_MEMBERS = ("name", "owns", "to_array", "all_reduce_stats")


@runtime_checkable
class FrameworkPlugin(Protocol):
    """What ncgeom needs from a framework.

    Attributes
    ----------
    name : str
        Short unique name, e.g. ``"torch"``; the registry's key and the name
        of the plugin's entry point.

    Notes
    -----
    Importing the object an entry point names must not import the framework,
    and `owns` must not either: look the framework up in `sys.modules` (an
    object can only be a tensor of a framework that is already imported).
    Then loading every installed plugin stays cheap.

    Optionally, ``collectives()`` returns the `Collectives` (rank, world
    size, ``all_gather``, ``all_reduce``) that `all_reduce_stats` hands to
    `reduce_class_stats`, for the current process group (one process: rank
    0 of 1). The conformance suite then runs them, so that a broken
    collective fails there rather than in a distributed job. Its
    ``reduce_scatter`` is optional too (None: the framework has none);
    `reduce_scatter_class_stats` needs it, and the suite checks it when it
    is given. Plugins without it keep working: nothing else uses it.

    Examples
    --------
    >>> from ncgeom.plugins import FrameworkPlugin
    >>> class Nothing:
    ...     name = "nothing"
    ...     def owns(self, obj): return False
    ...     def to_array(self, tensor): raise TypeError("owns nothing")
    ...     def all_reduce_stats(self, stats): return stats
    >>> isinstance(Nothing(), FrameworkPlugin)
    True
    """

    name: str

    def owns(self, obj: Any) -> bool:
        """True if `obj` is a tensor of this plugin's framework."""
        ...

    def to_array(self, tensor: Any) -> Array:
        """View `tensor` as an array-API array on its device, without a copy."""
        ...

    def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
        """Statistics of the samples of every process (`stats` itself when alone)."""
        ...


# ----------------------------------------------------------------------------- registry
_LOCK = threading.RLock()
_PLUGINS: dict[str, FrameworkPlugin] = {}
_ORIGINS: dict[str, str] = {}
_FAILED: dict[str, str] = {}
_OWNS_FAILED: set[str] = set()
_ENTRY_POINTS_READ = False


class LoadedEntryPoint(NamedTuple):
    """One entry point that loaded and passed its group's check."""

    name: str
    value: Any
    origin: str


def load_entry_points(
    group: str,
    check: Callable[[str, Any], Any],
    *,
    kind: str = "entry point",
    skip: Collection[str] = (),
) -> tuple[list[LoadedEntryPoint], dict[str, str]]:
    """Load every entry point of `group`; skip, with one warning each, those that fail.

    The one loader of ncgeom's entry points (plugins and ``ncgeom``
    subcommands). An entry point fails when reading the installed metadata,
    importing its object or `check` raises anything, `SystemExit` at import
    included; it is then skipped with a `RuntimeWarning` naming the group, the
    entry point and its distribution, and never takes down the caller.

    Parameters
    ----------
    group : str
        Entry-point group, e.g. `ENTRY_POINT_GROUP`.
    check : callable
        ``check(name, obj)`` returns the object to keep (e.g. an instance of
        a loaded class) or raises with a message saying what is wrong.
    kind : str
        What the group holds, for the warning (``"plugin"``, ``"command"``).
    skip : collection of str
        Names not to load at all (e.g. taken by built-ins).

    Returns
    -------
    loaded : list of LoadedEntryPoint
        The objects that loaded and passed `check`, in the order found (an
        entry point found twice on ``sys.path`` once).
    failed : dict of str to str
        Name to a one-line reason, for each entry point skipped.

    Examples
    --------
    >>> from ncgeom.plugins import load_entry_points
    >>> loaded, failed = load_entry_points("no.such.group", lambda name, obj: obj)
    >>> loaded, failed
    ([], {})
    """
    loaded: list[LoadedEntryPoint] = []
    failed: dict[str, str] = {}
    try:
        entries = list(importlib.metadata.entry_points(group=group))
    except Exception as error:  # unreadable metadata of some installed distribution
        warnings.warn(
            f"ncgeom cannot read the entry points of group {group!r}: "
            f"{type(error).__name__}: {error}",
            RuntimeWarning,
            stacklevel=3,
        )
        return loaded, failed
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        name, value = str(getattr(entry, "name", "?")), str(getattr(entry, "value", "?"))
        if (name, value) in seen or name in skip:  # found twice on sys.path, or not wanted
            continue
        seen.add((name, value))
        where = f"entry point {name!r} ({value}) of {_distribution(entry)}"
        try:
            obj = check(name, entry.load())
        except (Exception, SystemExit) as error:
            reason = _reason(error)
            failed[name] = f"{where} failed: {reason}"
            warnings.warn(
                f"ncgeom skips the {kind} of {where} in group {group!r}: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        loaded.append(LoadedEntryPoint(name, obj, where))
    return loaded, failed


def _distribution(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    try:
        name = dist.name if dist is not None else None
    except Exception:  # a distribution without readable metadata
        name = None
    if not name:
        return "an unknown distribution"
    version = getattr(dist, "version", None)
    return f"distribution {name}" + (f" {version}" if version else "")


def _reason(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit({error.code!r}) raised at import"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# Kept here: besides the protocol, the check consults this module's registry.
def _checked_plugin(name: str, plugin: Any) -> FrameworkPlugin:
    """`check` of the plugin group: a FrameworkPlugin (or a class of one) named `name`."""
    if isinstance(plugin, type):
        plugin = plugin()
    check_protocol(plugin, f"entry point {name!r}", "FrameworkPlugin", _PROTOCOL_MEMBERS)
    if plugin.name != name:
        msg = f"it loads a plugin named {plugin.name!r}; the names must match"
        raise ValueError(msg)
    if name in _PLUGINS and _PLUGINS[name] is not plugin:
        msg = f"a plugin named {name!r} is already registered ({_ORIGINS[name]})"
        raise ValueError(msg)
    return plugin


def _read_entry_points() -> None:
    """Load every plugin of the entry-point group (called once, under the lock)."""
    loaded, failed = load_entry_points(ENTRY_POINT_GROUP, _checked_plugin, kind="plugin")
    _FAILED.update(failed)
    for entry in loaded:
        _PLUGINS[entry.name] = entry.value
        _ORIGINS[entry.name] = entry.origin


def _ensure_entry_points() -> None:
    # Called with the lock held. The flag is set before loading so that a
    # plugin module which itself calls `register_plugin` does not recurse;
    # other threads wait on the lock until loading has finished.
    global _ENTRY_POINTS_READ
    if _ENTRY_POINTS_READ:
        return
    _ENTRY_POINTS_READ = True
    _read_entry_points()


def register_plugin(plugin: FrameworkPlugin, *, replace: bool = False) -> FrameworkPlugin:
    """Add a plugin to the registry (in addition to the installed entry points).

    Parameters
    ----------
    plugin : FrameworkPlugin
        An object with `name`, `owns`, `to_array` and `all_reduce_stats`.
    replace : bool
        Replace a different plugin registered under the same name instead of
        raising. Registering the same object twice is always allowed.

    Returns
    -------
    FrameworkPlugin
        `plugin`, so the call can be used on a module-level object.

    Raises
    ------
    TypeError
        If `plugin` does not implement the protocol.
    ValueError
        If another plugin already has this name and `replace` is False.

    Examples
    --------
    >>> from ncgeom.plugins import get_plugin, register_plugin, unregister_plugin
    >>> class Nothing:
    ...     name = "nothing"
    ...     def owns(self, obj): return False
    ...     def to_array(self, tensor): raise TypeError("owns nothing")
    ...     def all_reduce_stats(self, stats): return stats
    >>> plugin = register_plugin(Nothing())
    >>> get_plugin("nothing") is plugin
    True
    >>> unregister_plugin("nothing") is plugin
    True
    """
    check_protocol(plugin, "plugin", "FrameworkPlugin", _PROTOCOL_MEMBERS)
    with _LOCK:
        _ensure_entry_points()
        current = _PLUGINS.get(plugin.name)
        if current is not None and current is not plugin and not replace:
            msg = (
                f"`plugin.name` must be unique: a plugin named {plugin.name!r} is already "
                f"registered ({_ORIGINS[plugin.name]}); pass replace=True to replace it"
            )
            raise ValueError(msg)
        if current is not plugin:
            _PLUGINS[plugin.name] = plugin
            _ORIGINS[plugin.name] = "register_plugin"
            _FAILED.pop(plugin.name, None)
            _OWNS_FAILED.discard(plugin.name)
    return plugin


def unregister_plugin(name: str) -> FrameworkPlugin:
    """Remove the plugin registered as `name` and return it.

    A plugin of an entry point stays removed for the rest of the process.

    Raises
    ------
    ValueError
        If no plugin has this name.

    Examples
    --------
    >>> from ncgeom.plugins import unregister_plugin
    >>> unregister_plugin("no-such-plugin")
    Traceback (most recent call last):
    ...
    ValueError: no plugin named 'no-such-plugin' is registered; available: ...
    """
    with _LOCK:
        _ensure_entry_points()
        if name not in _PLUGINS:
            raise ValueError(_unknown_name_message(name))
        _ORIGINS.pop(name)
        _OWNS_FAILED.discard(name)
        return _PLUGINS.pop(name)


def available_plugins() -> tuple[str, ...]:
    """Names of the registered plugins (installed entry points included), sorted.

    Examples
    --------
    >>> from ncgeom.plugins import available_plugins
    >>> isinstance(available_plugins(), tuple)
    True
    """
    with _LOCK:
        _ensure_entry_points()
        return tuple(sorted(_PLUGINS))


def get_plugin(obj_or_name: Any) -> FrameworkPlugin:
    """The plugin with this name, or the one plugin that owns this object.

    Parameters
    ----------
    obj_or_name : str or tensor
        A plugin name (``"torch"``), or a tensor of some framework.

    Raises
    ------
    ValueError
        If no plugin has the given name (the message lists the available
        ones and any entry point that failed to load), or several plugins
        claim the object.
    TypeError
        If no registered plugin owns the object.

    Examples
    --------
    >>> from ncgeom.plugins import get_plugin
    >>> get_plugin(object())
    Traceback (most recent call last):
    ...
    TypeError: no registered plugin owns an object of type object; ...
    """
    with _LOCK:
        _ensure_entry_points()
        plugins = dict(_PLUGINS)
    if isinstance(obj_or_name, str):
        plugin = plugins.get(obj_or_name)
        if plugin is None:
            with _LOCK:
                raise ValueError(_unknown_name_message(obj_or_name))
        return plugin
    owners = [plugin for plugin in plugins.values() if _owns(plugin, obj_or_name)]
    kind = _type_name(obj_or_name)
    if not owners:
        msg = (
            f"no registered plugin owns an object of type {kind}; available plugins: "
            f"{sorted(plugins)} (install the framework's plugin or call register_plugin)"
        )
        raise TypeError(msg)
    if len(owners) > 1:
        names = sorted(plugin.name for plugin in owners)
        msg = (
            f"several plugins claim an object of type {kind}: {names}; "
            "look the plugin up by name instead"
        )
        raise ValueError(msg)
    return owners[0]


def _owns(plugin: FrameworkPlugin, obj: Any) -> bool:
    """`plugin.owns(obj)`; a plugin whose `owns` raises owns nothing (one warning per plugin)."""
    try:
        return bool(plugin.owns(obj))
    except Exception as error:
        with _LOCK:
            first = plugin.name not in _OWNS_FAILED
            _OWNS_FAILED.add(plugin.name)
            origin = _ORIGINS.get(plugin.name, "register_plugin")
        if first:
            warnings.warn(
                f"ncgeom skips the plugin {plugin.name!r} ({origin}) in lookups by object: "
                f"its owns() raised {_reason(error)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


def _unknown_name_message(name: str) -> str:
    msg = f"no plugin named {name!r} is registered; available: {sorted(_PLUGINS)}"
    if name in _FAILED:
        msg += f" ({_FAILED[name]})"
    return msg


def _type_name(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
