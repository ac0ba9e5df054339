"""Conformance suite for `ncgeom.plugins.FrameworkPlugin` implementations.

A plugin author runs `check_plugin` with the plugin and a function that turns
a NumPy array into a tensor of the framework (on the device under test). Each
check either passes, is skipped with a reason (a property the framework does
not let us observe), or raises `ConformanceError` saying what is wrong:

================  =======================================================================
check             what it verifies
================  =======================================================================
protocol          the object implements FrameworkPlugin; `name` is a non-empty string
owns              ``owns(tensor)`` is True (a bool) for the framework's tensors
rejects_foreign   ``owns`` is False for objects of other libraries and `to_array` raises
                  TypeError on them
to_array          the result is an array-API array with the tensor's shape, dtype,
                  values and device
zero_copy         no copy: same data pointer (through DLPack) and/or an in-place change
                  of the tensor is visible in the array
class_stats       `ClassStats.from_features` on converted tensors stays on the
                  framework's namespace and equals float64 NumPy formulas
nc_report         `nc_report` on those statistics (with a classifier) equals the NumPy
                  float64 report, and NC1 equals its direct formula
all_reduce        ``all_reduce_stats`` is the identity in a single process
registry          register, look up by name and by tensor, list, unregister (the
                  registry is left as it was found)
collectives       (optional, for a plugin with ``collectives()``) its all-gather returns
                  one array per rank in rank order and its all-reduce their sum, each
                  of the argument's shape, dtype and library; `reduce_class_stats`
                  through them equals the float64 reference (counts times the number
                  of processes, the same means and covariance). With a
                  ``reduce_scatter`` among them: it returns the sum of this rank's
                  rows (`class_shards`), and `reduce_scatter_class_stats` through
                  them gives the rows of this rank's classes of the same reference
================  =======================================================================

The ``collectives`` check runs the plugin's collectives in whatever process
group ``plugin.collectives()`` describes: alone (rank 0 of 1), or with every
process of a group running the suite at once, where it checks the values
across the ranks too.

With pytest, one test per check::

    import pytest
    from ncgeom.testing.conformance import CHECKS, check_plugin

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check):
        outcome = check_plugin(plugin, make_tensor, checks=[check])[check]
        if outcome != "passed":
            pytest.skip(outcome)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .._lib.backend import array_device, namespace, to_host
from .._lib.validate import check_positive
from ..integrations import plugins as registry
from ..measure import distributed
from ..measure.report import NCReport, nc_report
from ..measure.stats import ClassStats

__all__ = ["CHECKS", "ConformanceError", "OPTIONAL_CHECKS", "check_plugin"]

#: Names of the checks every plugin must pass, in the order `check_plugin` runs them.
CHECKS = (
    "protocol",
    "owns",
    "rejects_foreign",
    "to_array",
    "zero_copy",
    "class_stats",
    "nc_report",
    "all_reduce",
    "registry",
)
#: Checks of optional plugin members, run after `CHECKS` when the plugin has
#: the member (``collectives``), and skipped with a reason when named without it.
OPTIONAL_CHECKS = ("collectives",)

_NUM_CLASSES = 4
_DIM = 6
_COUNTS = (24, 14, 7, 3)


class ConformanceError(AssertionError):
    """A plugin violates the FrameworkPlugin contract (the message says how)."""


def check_plugin(
    plugin: Any,
    make_tensor: Callable[[np.ndarray], Any],
    *,
    mutate: Callable[[Any], None] | None = None,
    foreign: Iterable[Any] = (),
    checks: Sequence[str] | None = None,
    rtol: float = 1e-10,
) -> dict[str, str]:
    """Run the conformance checks on a plugin.

    Parameters
    ----------
    plugin : FrameworkPlugin
        The plugin under test.
    make_tensor : callable
        ``make_tensor(array)`` returns a tensor of the framework holding a copy
        of the NumPy `array` (float64 or int64, 1-D or 2-D) with the same
        dtype, on the device to test.
    mutate : callable, optional
        ``mutate(tensor)`` adds 1 to every element of a float64 tensor in
        place. Enables the visible-mutation half of ``zero_copy`` (leave it
        out for frameworks with immutable tensors).
    foreign : iterable
        Extra objects the plugin must not own, e.g. tensors of another
        framework. Python builtins are always tried.
    checks : sequence of str, optional
        Names from `CHECKS` and `OPTIONAL_CHECKS` to run (default: all of
        `CHECKS`, and the optional checks of the members the plugin has).
    rtol : float
        Relative tolerance of the numerical comparisons (float64).

    Returns
    -------
    dict
        ``{check: "passed" | "skipped: <reason>"}`` for each check run.

    Raises
    ------
    ConformanceError
        At the first failing check, naming it.
    ValueError
        For an unknown check name.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.testing.conformance import check_plugin
    >>> class Numpy:
    ...     name = "numpy-doc"
    ...     def owns(self, obj): return isinstance(obj, np.ndarray)
    ...     def to_array(self, tensor):
    ...         if not self.owns(tensor):
    ...             raise TypeError(f"not a NumPy array: {type(tensor).__name__}")
    ...         return tensor
    ...     def all_reduce_stats(self, stats): return stats
    >>> outcome = check_plugin(Numpy(), np.array, mutate=lambda a: np.add(a, 1, out=a))
    >>> sorted(set(outcome.values()))
    ['passed']
    """
    _check_arguments(make_tensor, mutate, checks)
    rtol = check_positive(rtol, "rtol")
    if checks is None:
        selected = CHECKS + tuple(name for name in OPTIONAL_CHECKS if hasattr(plugin, name))
    else:
        selected = tuple(checks)
    known = CHECKS + OPTIONAL_CHECKS
    unknown = [name for name in selected if name not in known]
    if unknown:
        msg = f"`checks` must be names from {known}; got unknown {unknown}"
        raise ValueError(msg)
    case = _Case(plugin, make_tensor, mutate, tuple(foreign), rtol)
    results: dict[str, str] = {}
    for name in selected:
        try:
            results[name] = getattr(case, f"check_{name}")() or "passed"
        except ConformanceError:
            raise
        except Exception as error:
            msg = (
                f"check {name!r} of plugin {_name(plugin)!r} raised "
                f"{type(error).__name__}: {error}"
            )
            raise ConformanceError(msg) from error
    return results


def _check_arguments(make_tensor: Any, mutate: Any, checks: Any) -> None:
    """TypeErrors naming an argument of `check_plugin` of the wrong kind."""
    if not callable(make_tensor):
        msg = (
            "`make_tensor` must be callable (a NumPy array -> a tensor of the framework); "
            f"got {type(make_tensor).__name__}"
        )
        raise TypeError(msg)
    if mutate is not None and not callable(mutate):
        msg = f"`mutate` must be callable or None; got {type(mutate).__name__}"
        raise TypeError(msg)
    if checks is not None and (
        isinstance(checks, (str, bytes))
        or not isinstance(checks, Iterable)
        or not all(isinstance(name, str) for name in checks)
    ):
        msg = f"`checks` must be a sequence of check names (str); got {checks!r}"
        raise TypeError(msg)


def _name(plugin: Any) -> str:
    return str(getattr(plugin, "name", type(plugin).__name__))


def _fail(check: str, plugin: Any, what: str) -> ConformanceError:
    return ConformanceError(f"check {check!r} of plugin {_name(plugin)!r} failed: {what}")


def _dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imbalanced features (N, d), labels (N,) and a classifier (K, d), float64/int64."""
    rng = np.random.default_rng(20240602)
    means = 3.0 * rng.normal(size=(_NUM_CLASSES, _DIM))
    labels = np.repeat(np.arange(_NUM_CLASSES), _COUNTS)
    labels = labels[rng.permutation(labels.size)]
    features = means[labels] + 0.5 * rng.normal(size=(labels.size, _DIM))
    classifier = means - means.mean(axis=0) + 0.3 * rng.normal(size=means.shape)
    return features, labels.astype(np.int64), classifier


def _reference_moments(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Counts, means, class variances, Sigma_W and NC1 by direct float64 formulas."""
    counts = np.array([(labels == k).sum() for k in range(_NUM_CLASSES)])
    means = np.stack([features[labels == k].mean(axis=0) for k in range(_NUM_CLASSES)])
    dev = features - means[labels]
    variances = np.array([(dev[labels == k] ** 2).sum(axis=1).mean() for k in range(_NUM_CLASSES)])
    sigma_w = dev.T @ dev / labels.size
    centred = means - features.mean(axis=0)
    sigma_b = centred.T @ centred / _NUM_CLASSES
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / _NUM_CLASSES)
    return counts, means, variances, sigma_w, nc1


class _Case:
    def __init__(
        self,
        plugin: Any,
        make_tensor: Callable[[np.ndarray], Any],
        mutate: Callable[[Any], None] | None,
        foreign: tuple[Any, ...],
        rtol: float,
    ) -> None:
        self.plugin = plugin
        self.make_tensor = make_tensor
        self.mutate = mutate
        self.foreign = foreign
        self.rtol = rtol
        self.features, self.labels, self.classifier = _dataset()

    # ------------------------------------------------------------------ helpers
    def fail(self, check: str, what: str) -> ConformanceError:
        return _fail(check, self.plugin, what)

    def convert(self, array: np.ndarray, check: str) -> Any:
        tensor = self.make_tensor(array.copy())
        out = self.plugin.to_array(tensor)
        try:
            namespace(array=out)
        except TypeError:
            raise self.fail(
                check, f"to_array returned {type(out).__name__}, not an array-API array"
            ) from None
        return out

    def stats(self, check: str) -> ClassStats:
        return ClassStats.from_features(
            self.convert(self.features, check), self.convert(self.labels, check), _NUM_CLASSES
        )

    def close(self, check: str, what: str, actual: Any, expected: Any) -> None:
        actual = np.asarray(to_host(actual), dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if actual.shape != expected.shape:
            raise self.fail(check, f"{what} has shape {actual.shape}, expected {expected.shape}")
        scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
        if not np.allclose(actual, expected, rtol=self.rtol, atol=self.rtol * scale):
            error = float(np.max(np.abs(actual - expected)))
            raise self.fail(
                check, f"{what} differs from the float64 reference (max abs error {error:.3g})"
            )

    # ------------------------------------------------------------------ checks
    def check_protocol(self) -> None:
        if not isinstance(self.plugin, registry.FrameworkPlugin):
            missing = [
                m
                for m in ("name", "owns", "to_array", "all_reduce_stats")
                if not hasattr(self.plugin, m)
            ]
            raise self.fail("protocol", f"does not implement FrameworkPlugin (lacks {missing})")
        name = self.plugin.name
        if not isinstance(name, str) or not name or name != name.strip():
            raise self.fail("protocol", f"`name` must be a non-empty string; got {name!r}")

    def check_owns(self) -> None:
        for array in (self.features, self.labels):
            tensor = self.make_tensor(array.copy())
            owned = self.plugin.owns(tensor)
            if owned is not True:
                raise self.fail(
                    "owns",
                    f"owns({type(tensor).__name__} of dtype {array.dtype}) returned {owned!r}",
                )

    def check_rejects_foreign(self) -> None:
        builtins = ([1.0, 2.0], (1, 2), 1.0, 3, "tensor", b"\x00", None, {"a": 1}, object())
        for obj in (*builtins, *self.foreign):
            owned = self.plugin.owns(obj)
            if owned is not False:
                raise self.fail(
                    "rejects_foreign", f"owns({type(obj).__name__}) returned {owned!r}, not False"
                )
            try:
                self.plugin.to_array(obj)
            except TypeError:
                continue
            raise self.fail(
                "rejects_foreign", f"to_array({type(obj).__name__}) did not raise TypeError"
            )

    def check_to_array(self) -> None:
        tensor = self.make_tensor(self.features.copy())
        array = self.plugin.to_array(tensor)
        try:
            xp = namespace(array=array)
        except TypeError:
            raise self.fail(
                "to_array", f"returned {type(array).__name__}, not an array-API array"
            ) from None
        if tuple(array.shape) != self.features.shape:
            raise self.fail(
                "to_array", f"shape {tuple(array.shape)}, expected {self.features.shape}"
            )
        if array.dtype != xp.float64:
            raise self.fail("to_array", f"dtype {array.dtype} for a float64 tensor")
        if not np.array_equal(to_host(array), self.features):
            raise self.fail("to_array", "values differ from the tensor's")
        labels = self.plugin.to_array(self.make_tensor(self.labels.copy()))
        if labels.dtype != xp.int64:
            raise self.fail("to_array", f"dtype {labels.dtype} for an int64 tensor")
        source, target = _dlpack_device(tensor), _dlpack_device(array)
        if source is not None and target is not None and source != target:
            raise self.fail("to_array", f"moved the data from device {source} to {target}")

    def check_zero_copy(self) -> str | None:
        tensor = self.make_tensor(self.features.copy())
        array = self.plugin.to_array(tensor)
        verified = []
        source, target = _data_pointer(tensor), _data_pointer(array)
        if source is not None and target is not None:
            if source != target:
                raise self.fail("zero_copy", "to_array copied the data (data pointers differ)")
            verified.append("pointer")
        if self.mutate is not None:
            before = np.array(to_host(array), dtype=np.float64, copy=True)
            self.mutate(tensor)
            after = np.asarray(to_host(array), dtype=np.float64)
            if not np.array_equal(after, before + 1):
                raise self.fail(
                    "zero_copy", "an in-place change of the tensor is not visible in the array"
                )
            verified.append("mutation")
        if not verified:
            return (
                "skipped: neither data pointers (DLPack on the host) nor a `mutate` "
                "function were available"
            )
        return None

    def check_class_stats(self) -> None:
        features = self.convert(self.features, "class_stats")
        stats = ClassStats.from_features(
            features, self.convert(self.labels, "class_stats"), _NUM_CLASSES
        )
        if namespace(stats=stats.shift) is not namespace(features=features):
            raise self.fail("class_stats", "the statistics left the framework's namespace")
        if array_device(stats.shift) != array_device(features):
            raise self.fail("class_stats", "the statistics left the tensors' device")
        counts, means, variances, sigma_w, _ = _reference_moments(self.features, self.labels)
        if to_host(stats.counts).tolist() != counts.tolist():
            raise self.fail(
                "class_stats",
                f"counts {to_host(stats.counts).tolist()}, expected {counts.tolist()}",
            )
        self.close("class_stats", "class means", stats.means, means)
        self.close("class_stats", "class variances", stats.class_variances, variances)
        self.close("class_stats", "within-class covariance", stats.within_covariance(), sigma_w)

    def check_nc_report(self) -> None:
        stats = self.stats("nc_report")
        classifier = self.convert(self.classifier, "nc_report")
        report = nc_report(stats, classifier)
        reference = nc_report(
            ClassStats.from_features(self.features, self.labels, _NUM_CLASSES), self.classifier
        )
        if report.counts != reference.counts or report.dim != reference.dim:
            raise self.fail(
                "nc_report",
                f"counts/dim {report.counts}/{report.dim}, expected "
                f"{reference.counts}/{reference.dim}",
            )
        for metric in NCReport.METRICS:
            got, want = getattr(report, metric), getattr(reference, metric)
            if (got is None) != (want is None):
                raise self.fail("nc_report", f"{metric} is {got!r}, expected {want!r}")
            if want is not None:
                self.close("nc_report", metric, got, want)
        self.close(
            "nc_report",
            "nc1 (direct formula)",
            report.nc1,
            _reference_moments(self.features, self.labels)[4],
        )

    def check_all_reduce(self) -> None:
        stats = self.stats("all_reduce")
        reduced = self.plugin.all_reduce_stats(stats)
        if not isinstance(reduced, ClassStats):
            raise self.fail(
                "all_reduce", f"all_reduce_stats returned {type(reduced).__name__}, not ClassStats"
            )
        if namespace(reduced=reduced.shift) is not namespace(stats=stats.shift):
            raise self.fail("all_reduce", "all_reduce_stats changed the namespace")
        if to_host(reduced.counts).tolist() != to_host(stats.counts).tolist():
            raise self.fail("all_reduce", "all_reduce_stats changed the counts in one process")
        for field in ("means", "class_variances"):
            self.close(
                "all_reduce", field, getattr(reduced, field), to_host(getattr(stats, field))
            )
        self.close(
            "all_reduce",
            "within-class covariance",
            reduced.within_covariance(),
            to_host(stats.within_covariance()),
        )

    def check_collectives(self) -> str | None:
        make = getattr(self.plugin, "collectives", None)
        if make is None:
            return (
                "skipped: the plugin has no `collectives()` (an optional member), so its "
                "all-gather and all-reduce run only in a job of several processes"
            )
        if not callable(make):
            raise self.fail(
                "collectives", f"`collectives` must be callable; got {type(make).__name__}"
            )
        group = make()
        rank, world_size = self._group(group)
        base = np.arange(6.0).reshape(2, 3)
        for dtype in (np.float64, np.int64):
            x = self.convert((base + rank).astype(dtype), "collectives")
            gathered = distributed._gathered(group.all_gather(x), x, world_size)
            for r, item in enumerate(gathered):
                if not np.array_equal(to_host(item), base + r):
                    raise self.fail(
                        "collectives",
                        f"`all_gather` returned {to_host(item).tolist()} as the entry of "
                        f"rank {r}; expected {(base + r).tolist()} (every rank's array, in "
                        "rank order)",
                    )
        x = self.convert(base + rank, "collectives")
        summed = to_host(distributed._reduced(group.all_reduce(x), x))
        expected = world_size * base + world_size * (world_size - 1) / 2
        if not np.array_equal(summed, expected):
            raise self.fail(
                "collectives",
                f"`all_reduce` returned {summed.tolist()}; expected {expected.tolist()}, "
                "the element-wise sum over the ranks",
            )
        reduced = self._reduce_through(group, rank, world_size)
        if getattr(group, "reduce_scatter", None) is not None:
            self._check_reduce_scatter(group, rank, world_size)
            self._scatter_through(group, rank, world_size, reduced)
        return None

    def _check_reduce_scatter(self, group: Any, rank: int, world_size: int) -> None:
        """The plugin's reduce-scatter sums this rank's shard of the rows."""
        if not callable(group.reduce_scatter):
            raise self.fail(
                "collectives",
                f"`reduce_scatter` must be callable or None; got "
                f"{type(group.reduce_scatter).__name__}",
            )
        base = np.arange(15.0).reshape(5, 3)
        start, stop = distributed.class_shards(base.shape[0], world_size)[rank]
        expected = world_size * base[start:stop] + world_size * (world_size - 1) / 2
        for dtype in (np.float64, np.int64):
            x = self.convert((base + rank).astype(dtype), "collectives")
            own = x[start:stop, ...]
            summed = to_host(distributed._scattered(group.reduce_scatter(x), own, start, stop))
            if not np.array_equal(summed, expected):
                raise self.fail(
                    "collectives",
                    f"`reduce_scatter` returned {summed.tolist()}; expected "
                    f"{expected.tolist()}, the element-wise sum over the ranks of the rows "
                    f"{start}:{stop} (this rank's shard)",
                )

    def _scatter_through(
        self, group: Any, rank: int, world_size: int, reduced: ClassStats
    ) -> None:
        """`reduce_scatter_class_stats` through the plugin's collectives: the rows
        of this rank's classes of the float64 reference, and the Gram of
        `reduce_class_stats` (`reduced`)."""
        fields = (rank, world_size, group.all_gather, group.all_reduce, group.reduce_scatter)
        shard = distributed.reduce_scatter_class_stats(
            self.stats("collectives"), distributed.Collectives(*fields)
        )
        start, stop = distributed.class_shards(_NUM_CLASSES, world_size)[rank]
        if (shard.offset, shard.num_classes) != (start, _NUM_CLASSES):
            raise self.fail(
                "collectives",
                f"reduce_scatter_class_stats gave the shard at {shard.offset} of "
                f"{shard.num_classes} classes; expected {start} of {_NUM_CLASSES}",
            )
        counts, means, variances, _, _ = _reference_moments(self.features, self.labels)
        got = to_host(shard.stats.counts).tolist()
        want = (world_size * counts[start:stop]).tolist()
        if got != want:
            raise self.fail(
                "collectives",
                f"reduce_scatter_class_stats gave counts {got}; expected {want} for the "
                f"classes {start}:{stop}",
            )
        self.close("collectives", "shard means", shard.stats.means, means[start:stop])
        self.close(
            "collectives", "shard variances", shard.stats.class_variances, variances[start:stop]
        )
        self.close(
            "collectives",
            "pooled Gram of the shard",
            shard.gram * shard.stats.unit_scale**2,
            to_host(reduced.gram * reduced.unit_scale**2),
        )

    def _group(self, group: Any) -> tuple[int, int]:
        """Rank and size of what ``collectives()`` returned, checked."""
        fields = ("rank", "world_size", "all_gather", "all_reduce")
        missing = [field for field in fields if not hasattr(group, field)]
        if missing:
            raise self.fail(
                "collectives",
                f"collectives() returned {type(group).__name__}, which lacks {missing}; "
                "expected an ncgeom.plugins.Collectives",
            )
        rank, world_size = group.rank, group.world_size
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            raise self.fail(
                "collectives",
                f"collectives() gave rank {rank!r} of world size {world_size!r}; expected "
                "integers with 0 <= rank < world_size",
            )
        return rank, world_size

    def _reduce_through(self, group: Any, rank: int, world_size: int) -> ClassStats:
        """`reduce_class_stats` through the plugin's collectives, every rank holding
        the same samples: the statistics of ``world_size`` copies of them."""
        stats = self.stats("collectives")
        reduced = distributed.reduce_class_stats(
            stats,
            rank=rank,
            world_size=world_size,
            all_gather=group.all_gather,
            all_reduce=group.all_reduce,
        )
        if namespace(reduced=reduced.shift) is not namespace(stats=stats.shift):
            raise self.fail("collectives", "reduce_class_stats changed the namespace")
        counts, means, variances, sigma_w, _ = _reference_moments(self.features, self.labels)
        got, want = to_host(reduced.counts).tolist(), (world_size * counts).tolist()
        if got != want:
            raise self.fail(
                "collectives",
                f"reduce_class_stats through the collectives gave counts {got}; expected "
                f"{want} ({world_size} processes with {counts.tolist()} each)",
            )
        self.close("collectives", "class means", reduced.means, means)
        self.close("collectives", "class variances", reduced.class_variances, variances)
        self.close("collectives", "within-class covariance", reduced.within_covariance(), sigma_w)
        return reduced

    def check_registry(self) -> None:
        name = self.plugin.name
        before = registry.available_plugins()
        previous = registry.get_plugin(name) if name in before else None
        registry.register_plugin(self.plugin, replace=True)
        try:
            if registry.get_plugin(name) is not self.plugin:
                raise self.fail("registry", f"get_plugin({name!r}) did not return the plugin")
            if name not in registry.available_plugins():
                raise self.fail("registry", f"{name!r} missing from available_plugins()")
            tensor = self.make_tensor(self.features.copy())
            found = registry.get_plugin(tensor)
            if found is not self.plugin:
                raise self.fail(
                    "registry", f"get_plugin(tensor) returned {_name(found)!r}, not the plugin"
                )
        finally:
            registry.unregister_plugin(name)
            if previous is not None:
                registry.register_plugin(previous)
        if registry.available_plugins() != before:
            raise self.fail("registry", "the registry was not restored")


def _dlpack_device(x: Any) -> tuple[int, int] | None:
    try:
        kind, index = x.__dlpack_device__()
    except Exception:
        return None
    return int(kind), int(index)


def _data_pointer(x: Any) -> int | None:
    """Address of the first element, through DLPack on the host; None if unavailable."""
    try:
        view = np.from_dlpack(x)
    except Exception:
        return None
    return int(view.__array_interface__["data"][0])
