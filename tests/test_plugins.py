"""The plugin protocol, the registry, `reduce_class_stats` and the conformance suite.

The docs' example plugin (docs/examples/numpy_plugin.py) is tested here
against the conformance suite, single-process and with a simulated
multi-process communicator.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy_plugin import NumpyPlugin
from world import reduce_on_threads

from ncgeom import ClassStats, nc_report
from ncgeom import plugins as registry
from ncgeom.plugins import (
    Collectives,
    FrameworkPlugin,
    available_plugins,
    get_plugin,
    reduce_class_stats,
    register_plugin,
    unregister_plugin,
)
from ncgeom.report import NCReport
from ncgeom.testing import strategies as nst
from ncgeom.testing.conformance import CHECKS, OPTIONAL_CHECKS, ConformanceError, check_plugin


# ----------------------------------------------------------------------------- helpers
class Toy:
    """A minimal plugin that owns instances of `ToyTensor`."""

    def __init__(self, name: str = "toy") -> None:
        self.name = name

    def owns(self, obj: Any) -> bool:
        return isinstance(obj, ToyTensor)

    def to_array(self, tensor: Any) -> Any:
        if not self.owns(tensor):
            raise TypeError("not a ToyTensor")
        return tensor.data

    def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
        return stats


class ToyTensor:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty registry that has not read entry points yet; restored afterwards."""
    with registry._LOCK:
        saved = (
            dict(registry._PLUGINS),
            dict(registry._ORIGINS),
            dict(registry._FAILED),
            registry._ENTRY_POINTS_READ,
            set(registry._OWNS_FAILED),
        )
        registry._PLUGINS.clear()
        registry._ORIGINS.clear()
        registry._FAILED.clear()
        registry._OWNS_FAILED.clear()
        registry._ENTRY_POINTS_READ = False
    yield
    with registry._LOCK:
        registry._PLUGINS.clear()
        registry._PLUGINS.update(saved[0])
        registry._ORIGINS.clear()
        registry._ORIGINS.update(saved[1])
        registry._FAILED.clear()
        registry._FAILED.update(saved[2])
        registry._ENTRY_POINTS_READ = saved[3]
        registry._OWNS_FAILED.clear()
        registry._OWNS_FAILED.update(saved[4])


@pytest.fixture
def no_entry_points(monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])


def write_distribution(root: Path, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with entry points) under `root`."""
    info = root / "fakeplugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugins\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


PLUGIN_SOURCE = """
from ncgeom.plugins import FrameworkPlugin

class Plugin:
    def __init__(self, name):
        self.name = name
    def owns(self, obj):
        return False
    def to_array(self, tensor):
        raise TypeError("owns nothing")
    def all_reduce_stats(self, stats):
        return stats

plugin = Plugin({name!r})
"""


# ----------------------------------------------------------------------------- protocol
def test_protocol_is_runtime_checkable() -> None:
    assert isinstance(Toy(), FrameworkPlugin)
    assert isinstance(NumpyPlugin(), FrameworkPlugin)
    assert not isinstance(object(), FrameworkPlugin)


# ----------------------------------------------------------------------------- registry
def test_register_lookup_unregister(no_entry_points: None) -> None:
    toy = Toy()
    assert register_plugin(toy) is toy
    assert register_plugin(toy) is toy  # the same object twice is fine
    assert available_plugins() == ("toy",)
    assert get_plugin("toy") is toy
    assert get_plugin(ToyTensor(np.zeros(2))) is toy
    assert unregister_plugin("toy") is toy
    assert available_plugins() == ()


def test_duplicate_name_raises_unless_replace(no_entry_points: None) -> None:
    first, second = Toy(), Toy()
    register_plugin(first)
    with pytest.raises(
        ValueError, match=r"plugin named 'toy' is already registered.*replace=True"
    ):
        register_plugin(second)
    assert get_plugin("toy") is first
    register_plugin(second, replace=True)
    assert get_plugin("toy") is second


def test_register_rejects_non_plugins(no_entry_points: None) -> None:
    class Half:
        name = "half"

        def owns(self, obj: Any) -> bool:
            return False

    with pytest.raises(TypeError, match=r"`plugin` must implement FrameworkPlugin.*lacks "):
        register_plugin(Half())  # type: ignore[arg-type]
    bad = Toy(name="")
    with pytest.raises(TypeError, match=r"`plugin.name` must be a non-empty string.*; got ''"):
        register_plugin(bad)
    assert available_plugins() == ()


def test_unknown_name_and_unowned_object(no_entry_points: None) -> None:
    register_plugin(Toy())
    with pytest.raises(
        ValueError, match=r"no plugin named 'jax' is registered; available: \['toy'\]"
    ):
        get_plugin("jax")
    with pytest.raises(ValueError, match=r"no plugin named 'jax'"):
        unregister_plugin("jax")
    with pytest.raises(TypeError, match=r"no registered plugin owns an object of type list"):
        get_plugin([1.0, 2.0])


def test_ambiguous_owner_raises(no_entry_points: None) -> None:
    register_plugin(Toy("a"))
    register_plugin(Toy("b"))
    with pytest.raises(ValueError, match=r"several plugins claim .*ToyTensor: \['a', 'b'\]"):
        get_plugin(ToyTensor(np.zeros(1)))


def test_entry_points_load_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    write_distribution(
        tmp_path,
        {"alpha": "ncgeom_fake_alpha:plugin"},
        {"ncgeom_fake_alpha": PLUGIN_SOURCE.format(name="alpha")},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "ncgeom_fake_alpha" not in sys.modules  # nothing is read before a lookup
    plugin = get_plugin("alpha")
    assert plugin.name == "alpha"
    assert sys.modules["ncgeom_fake_alpha"].plugin is plugin
    assert "alpha" in available_plugins()
    with pytest.raises(ValueError, match=r"already registered \(entry point 'alpha'"):
        register_plugin(Toy("alpha"))
    monkeypatch.delitem(sys.modules, "ncgeom_fake_alpha")


def test_broken_entry_points_warn_and_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    write_distribution(
        tmp_path,
        {
            "good": "ncgeom_fake_good:plugin",
            "broken": "ncgeom_fake_missing_module:plugin",
            "renamed": "ncgeom_fake_renamed:plugin",
        },
        {
            "ncgeom_fake_good": PLUGIN_SOURCE.format(name="good"),
            "ncgeom_fake_renamed": PLUGIN_SOURCE.format(name="other"),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning, match=r"skips the plugin of entry point") as caught:
        names = available_plugins()
    messages = " ".join(str(w.message) for w in caught)
    assert "ModuleNotFoundError" in messages
    assert "loads a plugin named 'other'; the names must match" in messages
    assert "good" in names
    assert "broken" not in names
    assert "renamed" not in names
    with pytest.raises(ValueError, match=r"no plugin named 'broken'.*ModuleNotFoundError"):
        get_plugin("broken")
    for module in ("ncgeom_fake_good", "ncgeom_fake_renamed"):
        monkeypatch.delitem(sys.modules, module, raising=False)


def test_registry_reads_entry_points_once_under_concurrency(
    monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    calls = []
    plugin = Toy("slow")

    class Entry:
        name = "slow"
        value = "slow_module:plugin"

        def load(self) -> Toy:
            time.sleep(0.05)  # a slow import widens any race window
            return plugin

    def entry_points(**kwargs: Any) -> list[Entry]:
        calls.append(kwargs)
        time.sleep(0.05)
        return [Entry()]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    start = threading.Barrier(12)
    found: list[Any] = []
    errors: list[BaseException] = []

    def lookup() -> None:
        start.wait()
        try:
            found.append(get_plugin("slow"))
        except BaseException as error:  # recorded, then asserted on
            errors.append(error)

    threads = [threading.Thread(target=lookup) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert calls == [{"group": "ncgeom.plugins"}]
    assert len(found) == 12
    assert all(p is plugin for p in found)


# ----------------------------------------------------------------------------- reduce
class ThreadGroup:
    """Collectives between threads that play the ranks of a distributed job."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=20)
        self.slots: list[Any] = [None] * size

    def all_gather(self, rank: int, x: Any) -> list[Any]:
        self.slots[rank] = np.array(x, copy=True)
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def all_reduce(self, rank: int, x: Any) -> Any:
        parts = self.all_gather(rank, x)
        total = parts[0].copy()
        for part in parts[1:]:
            total = total + part
        return total


def run_ranks(size: int, work: Any) -> list[Any]:
    """Run ``work(rank, group)`` on `size` threads; return results or exceptions."""
    group = ThreadGroup(size)
    results: list[Any] = [None] * size

    def target(rank: int) -> None:
        try:
            results[rank] = work(rank, group)
        except Exception as error:
            results[rank] = error

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def reduce_on(rank: int, group: ThreadGroup, stats: ClassStats) -> ClassStats:
    return reduce_class_stats(
        stats,
        rank=rank,
        world_size=group.size,
        all_gather=lambda x: group.all_gather(rank, x),
        all_reduce=lambda x: group.all_reduce(rank, x),
    )


def near_collapse_data(
    seed: int = 0, k: int = 4, d: int = 5, n: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """Class means of norm ~1e4 with a spread of 1e-3: raw moments would cancel."""
    rng = np.random.default_rng(seed)
    means = 1e4 * rng.normal(size=(k, d))
    labels = rng.integers(0, k, size=n)
    labels[:k] = np.arange(k)
    return means[labels] + 1e-3 * rng.normal(size=(n, d)), labels


def reference(features: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Direct float64 formulas for the quantities the statistics must reproduce."""
    counts = np.bincount(labels, minlength=k)
    means = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    dev = features - means[labels]
    variances = np.array([(dev[labels == c] ** 2).sum(axis=1).mean() for c in range(k)])
    return {
        "counts": counts,
        "means": means,
        "class_variances": variances,
        "within_covariance": dev.T @ dev / labels.size,
    }


def assert_matches(stats: ClassStats, expected: dict[str, np.ndarray], rtol: float) -> None:
    np.testing.assert_array_equal(np.asarray(stats.counts), expected["counts"])
    for field in ("means", "class_variances"):
        scale = np.abs(expected[field]).max()
        np.testing.assert_allclose(
            np.asarray(getattr(stats, field)), expected[field], rtol=rtol, atol=rtol * scale
        )
    scale = np.abs(expected["within_covariance"]).max()
    np.testing.assert_allclose(
        np.asarray(stats.within_covariance()),
        expected["within_covariance"],
        rtol=rtol,
        atol=rtol * scale,
    )


def test_reduce_equals_all_data_even_when_ranks_lack_classes() -> None:
    features, labels = near_collapse_data()
    k = 4
    # rank 0 never sees class 2 (so its shift for class 2 is a meaningless zero),
    # rank 1 holds everything else of odd rows, rank 2 saw no sample at all.
    rank0 = np.flatnonzero((labels != 2) & (np.arange(labels.size) % 2 == 0))
    rank1 = np.setdiff1d(np.arange(labels.size), rank0)
    local = [
        ClassStats.from_features(features[rank0], labels[rank0], k),
        ClassStats.from_features(features[rank1], labels[rank1], k),
        ClassStats.empty(k, 1),
    ]
    results = run_ranks(3, lambda rank, group: reduce_on(rank, group, local[rank]))
    expected = reference(features, labels, k)
    for result in results:
        assert isinstance(result, ClassStats), result
        # variances of 1e-6 about means of 1e4: accurate only with owners' shifts
        assert_matches(result, expected, rtol=1e-8)
    for other in results[1:]:
        for field in ("counts", "shift", "sums", "sqnorms", "gram"):
            np.testing.assert_array_equal(getattr(other, field), getattr(results[0], field))
    whole = nc_report(ClassStats.from_features(features, labels, k)).to_dict()
    combined = nc_report(results[0]).to_dict()
    for metric in NCReport.METRICS:
        if whole[metric] is not None:
            assert combined[metric] == pytest.approx(whole[metric], rel=1e-10, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=nst.labelled_features(), ranks=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_reduce_over_any_partition_equals_one_shot(
    data: nst.LabelledFeatures, ranks: int, seed: int
) -> None:
    k = len(data.counts)
    owner = np.random.default_rng(seed).integers(0, ranks, size=data.labels.size)
    local = []
    for rank in range(ranks):
        rows = owner == rank
        if rows.any():
            local.append(ClassStats.from_features(data.features[rows], data.labels[rows], k))
        else:
            local.append(ClassStats.empty(k, 1))
    results = run_ranks(ranks, lambda rank, group: reduce_on(rank, group, local[rank]))
    expected = reference(data.features, data.labels, k)
    for result in results:
        assert isinstance(result, ClassStats), result
        assert_matches(result, expected, rtol=1e-9)


def test_reduce_reports_layout_mismatch_on_every_rank() -> None:
    rng = np.random.default_rng(1)
    local = [
        ClassStats.from_features(rng.normal(size=(20, 3)), np.arange(20) % 3, 3),
        ClassStats.from_features(rng.normal(size=(20, 3)), np.arange(20) % 4, 4),
    ]
    results = run_ranks(2, lambda rank, group: reduce_on(rank, group, local[rank]))
    for rank, result in enumerate(results):
        assert isinstance(result, ValueError)
        assert "disagree on num_classes (rank 0: 3, rank 1: 4)" in str(result)
        assert f"this is rank {rank}" in str(result)


def test_reduce_reports_dim_and_gram_mismatch() -> None:
    rng = np.random.default_rng(2)
    local = [
        ClassStats.from_features(rng.normal(size=(20, 3)), np.arange(20) % 2, 2),
        ClassStats.from_features(rng.normal(size=(20, 5)), np.arange(20) % 2, 2, gram=False),
    ]
    results = run_ranks(2, lambda rank, group: reduce_on(rank, group, local[rank]))
    for result in results:
        assert isinstance(result, ValueError)
        assert "dim (rank 0: 3, rank 1: 5)" in str(result)
        assert "gram (rank 0: True, rank 1: False)" in str(result)


def test_reduce_single_process_and_bad_arguments() -> None:
    stats = ClassStats.from_features(np.eye(4), np.array([0, 1, 1, 0]), 2)
    same = reduce_class_stats(
        stats, rank=0, world_size=1, all_gather=lambda x: [x], all_reduce=lambda x: x
    )
    assert_matches(same, reference(np.eye(4), np.array([0, 1, 1, 0]), 2), rtol=0)
    with pytest.raises(ValueError, match=r"`rank` must lie in \[0, 2\); got 2"):
        reduce_class_stats(stats, rank=2, world_size=2, all_gather=list, all_reduce=list)
    with pytest.raises(ValueError, match=r"`world_size` must be an integer >= 1; got 0"):
        reduce_class_stats(stats, rank=0, world_size=0, all_gather=list, all_reduce=list)
    with pytest.raises(TypeError, match=r"`stats` must be a ClassStats; got ndarray"):
        reduce_class_stats(np.eye(2), rank=0, world_size=1, all_gather=list, all_reduce=list)


# ----------------------------------------------------------------------------- broken collectives
def two_ranks() -> list[ClassStats]:
    """Two ranks with different counts (so that a lost rank or an average shows)."""
    features, labels = near_collapse_data(seed=5, k=3, d=4, n=60)
    return [
        ClassStats.from_features(features[:40], labels[:40], 3),
        ClassStats.from_features(features[40:], labels[40:], 3),
    ]


BROKEN_COLLECTIVES = {
    "gather_one_entry": (
        {"all_gather": lambda rank, xs: xs[:1]},
        ValueError,
        r"^`all_gather` returned 1 array; expected 2 numpy arrays \(one per rank, in rank "
        r"order\), each of shape \(7,\) and dtype int64$",
    ),
    "gather_reversed": (
        {"all_gather": lambda rank, xs: xs[::-1]},
        ValueError,
        r"^`all_gather` returned \[.*\] as the entry of rank \d, where this rank's own array "
        r"\[.*\] belongs: the entries must be in rank order$",
    ),
    "gather_own_array_repeated": (
        {"all_gather": lambda rank, xs: [xs[rank]] * len(xs)},
        ValueError,
        r"^`all_reduce` \(call 1 of 2\) and `all_gather` disagree on the counts: class \d ",
    ),
    "gather_lists": (
        {"all_gather": lambda rank, xs: [x.tolist() for x in xs]},
        TypeError,
        r"^`all_gather` returned a list of 7 as the entry of rank 0; expected 2 numpy arrays",
    ),
    "gather_float_counts": (
        {"all_gather": lambda rank, xs: [x.astype(np.float64) for x in xs]},
        TypeError,
        r"^`all_gather` returned a ndarray of shape \(7,\) and dtype float64 as the entry of "
        r"rank 0; expected 2 numpy arrays .* dtype int64$",
    ),
    "reduce_none": (
        {"all_reduce": lambda rank, xs: None},
        TypeError,
        r"^`all_reduce` returned None; expected one numpy array of shape \(15,\) and dtype "
        r"float64, the element-wise sum over the ranks \(a collective that works in place "
        r"must still return the array\)$",
    ),
    "reduce_wrong_shape": (
        {"all_reduce": lambda rank, xs: sum(xs)[:1]},
        ValueError,
        r"^`all_reduce` returned a ndarray of shape \(1,\) and dtype float64; expected one "
        r"numpy array of shape \(15,\)",
    ),
    "reduce_average": (
        {"all_reduce": lambda rank, xs: sum(xs) / len(xs)},
        ValueError,
        r"^`all_reduce` \(call 1 of 2\) and `all_gather` disagree on the counts: class \d has "
        r"\d+ samples on all ranks by `all_gather` and [\d.]+ by `all_reduce`",
    ),
    "reduce_unreduced": (
        {"all_reduce": lambda rank, xs: xs[rank]},
        ValueError,
        r"^`all_reduce` \(call 1 of 2\) and `all_gather` disagree on the counts",
    ),
    "second_reduce_average": (
        {"all_reduce": lambda rank, xs: sum(xs) / (1 if xs[0].size == 15 else len(xs))},
        ValueError,
        r"^`all_reduce` \(call 2 of 2\) and `all_gather` disagree on the counts",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_COLLECTIVES))
def test_a_broken_collective_raises_naming_it(case: str) -> None:
    combine, error, message = BROKEN_COLLECTIVES[case]
    results = reduce_on_threads(two_ranks(), combine=combine)
    raised = [r for r in results if isinstance(r, error)]
    assert raised, results  # at least the rank that sees it; no rank returns wrong statistics
    assert not [r for r in results if isinstance(r, ClassStats)], results
    for result in raised:
        assert re.search(message, str(result)), str(result)


def test_correct_collectives_in_either_form_combine_exactly() -> None:
    """The reference case of the broken ones above: a stacked all-gather (one
    array with a leading rank axis) and the list form give all the data."""
    parts = two_ranks()
    features, labels = near_collapse_data(seed=5, k=3, d=4, n=60)
    stacked = {"all_gather": lambda rank, xs: np.stack(xs)}
    for combine in (None, stacked):
        for result in reduce_on_threads(parts, combine=combine):
            assert isinstance(result, ClassStats), result
            assert_matches(result, reference(features, labels, 3), rtol=1e-8)


def test_collective_checks_run_on_every_backend(backend: Any) -> None:
    features, labels = near_collapse_data(seed=5, k=3, d=4, n=60)
    parts = [
        ClassStats.from_features(backend.asarray(features[rows]), backend.asarray(labels[rows]), 3)
        for rows in (slice(0, 40), slice(40, None))
    ]
    for result in reduce_on_threads(parts):
        assert isinstance(result, ClassStats), result
        np.testing.assert_array_equal(backend.to_numpy(result.counts), np.bincount(labels))
    average = {"all_reduce": lambda rank, xs: sum(xs[1:], xs[0]) / len(xs)}
    for result in reduce_on_threads(parts, combine=average):
        assert isinstance(result, ValueError), result
        assert str(result).startswith("`all_reduce` (call 1 of 2) and `all_gather` disagree")


def test_collectives_must_be_callable() -> None:
    stats = two_ranks()[0]
    with pytest.raises(TypeError, match=r"^`all_gather` must be callable \(.*\); got NoneType$"):
        reduce_class_stats(stats, rank=0, world_size=1, all_gather=None, all_reduce=list)
    with pytest.raises(TypeError, match=r"^`all_reduce` must be callable \(.*\); got int$"):
        reduce_class_stats(stats, rank=0, world_size=1, all_gather=list, all_reduce=3)


def test_a_collective_of_another_library_is_refused() -> None:
    import torch

    stats = two_ranks()[0]
    with pytest.raises(TypeError, match=r"^`all_reduce` returned a Tensor .* expected one numpy"):
        reduce_class_stats(
            stats,
            rank=0,
            world_size=1,
            all_gather=lambda x: [x],
            all_reduce=lambda x: torch.from_numpy(x),
        )


# ----------------------------------------------------------------------------- conformance
def foreign_objects() -> list[Any]:
    import array_api_strict

    objects: list[Any] = [array_api_strict.asarray([1.0, 2.0]), np.float64(1.0)]
    if importlib.util.find_spec("torch") is not None:
        import torch

        objects.append(torch.zeros(2))
    return objects


@pytest.mark.parametrize("check", CHECKS)
def test_docs_example_plugin_conforms(check: str) -> None:
    outcome = check_plugin(
        NumpyPlugin(),
        np.array,
        mutate=lambda a: np.add(a, 1, out=a),
        foreign=foreign_objects(),
        checks=[check],
    )
    assert outcome == {check: "passed"}


class FakeComm:
    """The part of an mpi4py communicator the example plugin uses (mpi4py's spelling)."""

    def __init__(self, rank: int, group: ThreadGroup) -> None:
        self.rank, self.group = rank, group

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.group.size

    def allgather(self, x: Any) -> list[Any]:
        return self.group.all_gather(self.rank, x)

    def allreduce(self, x: Any) -> Any:
        return self.group.all_reduce(self.rank, x)


def test_docs_example_plugin_reduces_across_processes() -> None:
    features, labels = near_collapse_data(seed=3, k=3, d=4, n=90)
    parts = np.array_split(np.arange(labels.size), 3)

    def work(rank: int, group: ThreadGroup) -> ClassStats:
        rows = parts[rank]
        stats = ClassStats.from_features(features[rows], labels[rows], 3)
        return NumpyPlugin(comm=FakeComm(rank, group)).all_reduce_stats(stats)

    for result in run_ranks(3, work):
        assert isinstance(result, ClassStats), result
        assert_matches(result, reference(features, labels, 3), rtol=1e-8)


def test_conformance_catches_a_copying_plugin() -> None:
    class Copying(NumpyPlugin):
        def to_array(self, tensor: Any) -> Any:
            return np.array(super().to_array(tensor), copy=True)

    with pytest.raises(ConformanceError, match=r"'zero_copy' .* copied the data"):
        check_plugin(Copying(), np.array, checks=["zero_copy"])


def test_conformance_catches_a_greedy_plugin() -> None:
    class Greedy(NumpyPlugin):
        def owns(self, obj: Any) -> bool:
            return hasattr(obj, "__len__")

    with pytest.raises(ConformanceError, match=r"'rejects_foreign' .* owns\(list\) returned True"):
        check_plugin(Greedy(), np.array, checks=["rejects_foreign"])


def test_conformance_catches_wrong_values_and_bad_reduction() -> None:
    class Scaled(NumpyPlugin):
        def to_array(self, tensor: Any) -> Any:
            return super().to_array(tensor) * 2 if tensor.dtype == np.float64 else tensor

    with pytest.raises(ConformanceError, match=r"'to_array' .* values differ"):
        check_plugin(Scaled(), np.array, checks=["to_array"])

    class Doubling(NumpyPlugin):
        def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
            return stats.merge(stats)

    with pytest.raises(ConformanceError, match=r"'all_reduce' .* changed the counts"):
        check_plugin(Doubling(), np.array, checks=["all_reduce"])


class GroupPlugin(NumpyPlugin):
    """The example plugin with its collectives exposed (optional member)."""

    def __init__(self, comm: Any = None, gather: Any = None, reduce: Any = None) -> None:
        super().__init__(comm)
        self.gather, self.reduce = gather, reduce

    def collectives(self) -> Collectives:
        if self.comm is None:
            alone = Collectives(0, 1, lambda x: [x], lambda x: x)
        else:
            alone = Collectives(
                self.comm.Get_rank(),
                self.comm.Get_size(),
                self.comm.allgather,
                self.comm.allreduce,
            )
        return alone._replace(
            all_gather=self.gather or alone.all_gather, all_reduce=self.reduce or alone.all_reduce
        )


def test_conformance_runs_the_collectives_a_plugin_exposes() -> None:
    outcome = check_plugin(GroupPlugin(), np.array, mutate=lambda a: np.add(a, 1, out=a))
    assert list(outcome) == [*CHECKS, *OPTIONAL_CHECKS]
    assert set(outcome.values()) == {"passed"}
    skipped = check_plugin(NumpyPlugin(), np.array, checks=["collectives"])["collectives"]
    assert skipped.startswith("skipped: the plugin has no `collectives()`")


@pytest.mark.parametrize(
    ("gather", "reduce", "message"),
    [
        (lambda x: [x, x], None, r"raised ValueError: `all_gather` returned 2 arrays; expected 1"),
        (lambda x: [], None, r"raised ValueError: `all_gather` returned 0 arrays; expected 1"),
        (
            lambda x: [x.astype(np.float32)],
            None,
            r"raised TypeError: `all_gather` returned a ndarray of shape \(2, 3\) and dtype "
            r"float32 as the entry of rank 0",
        ),
        (lambda x: [x + 1], None, r"failed: `all_gather` returned \[\[1\.0, 2\.0, 3\.0\]"),
        (None, lambda x: None, r"raised TypeError: `all_reduce` returned None; expected one"),
        (None, lambda x: x[:1], r"raised ValueError: `all_reduce` returned a ndarray of shape"),
        (None, lambda x: 0 * x, r"failed: `all_reduce` returned \[\[0\.0, 0\.0, 0\.0\]"),
    ],
)
def test_conformance_fails_a_plugin_whose_collective_is_broken(
    gather: Any, reduce: Any, message: str
) -> None:
    plugin = GroupPlugin(gather=gather, reduce=reduce)
    with pytest.raises(
        ConformanceError, match=r"^check 'collectives' of plugin 'numpy' " + message
    ):
        check_plugin(plugin, np.array)


def test_conformance_checks_collectives_across_processes() -> None:
    """Every rank of a group runs the suite's collectives check at once."""

    def run(average: bool) -> list[Any]:
        def work(rank: int, group: ThreadGroup) -> Any:
            comm = FakeComm(rank, group)
            reduce = (lambda x: comm.allreduce(x) / group.size) if average else None
            return check_plugin(GroupPlugin(comm, reduce=reduce), np.array, checks=["collectives"])

        return run_ranks(3, work)

    assert run(average=False) == [{"collectives": "passed"}] * 3
    for result in run(average=True):
        assert isinstance(result, ConformanceError), result
        assert str(result) == (
            "check 'collectives' of plugin 'numpy' failed: `all_reduce` returned "
            "[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]; expected [[3.0, 6.0, 9.0], [12.0, 15.0, 18.0]], "
            "the element-wise sum over the ranks"
        )


def test_conformance_skips_what_it_cannot_observe_and_rejects_unknown_checks() -> None:
    class Opaque:
        """A tensor type without DLPack: zero-copy cannot be observed."""

        def __init__(self, data: np.ndarray) -> None:
            self.data = data

    class OpaquePlugin(Toy):
        def owns(self, obj: Any) -> bool:
            return isinstance(obj, Opaque)

    outcome = check_plugin(OpaquePlugin("opaque"), Opaque, checks=["zero_copy", "owns"])
    assert outcome["owns"] == "passed"
    assert outcome["zero_copy"].startswith("skipped: neither data pointers")
    with pytest.raises(ValueError, match=r"`checks` must be names from .*unknown \['speed'\]"):
        check_plugin(OpaquePlugin("opaque"), Opaque, checks=["speed"])


def test_the_guide_example_is_the_tested_plugin() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = guide.split("## A complete example", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(code, "docs/plugins.md", "exec"), scope)
    outcome = check_plugin(
        scope["plugin"], np.array, mutate=lambda a: np.add(a, 1, out=a), foreign=foreign_objects()
    )
    assert set(outcome.values()) == {"passed"}


# ----------------------------------------------------------------------------- broken entry points
BROKEN_SOURCES = {
    "ncgeom_fake_exits": "import sys\nsys.exit(3)\n",
    "ncgeom_fake_function": "def plugin(obj):\n    return obj\n",
    "ncgeom_fake_init_fails": (
        "class plugin:\n    name = 'init'\n    def __init__(self):\n"
        "        raise RuntimeError('no framework here')\n"
    ),
}


def test_entry_points_that_exit_or_load_the_wrong_object_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    write_distribution(
        tmp_path,
        {
            "good": "ncgeom_fake_good2:plugin",
            "exits": "ncgeom_fake_exits:plugin",
            "function": "ncgeom_fake_function:plugin",
            "init": "ncgeom_fake_init_fails:plugin",
        },
        {"ncgeom_fake_good2": PLUGIN_SOURCE.format(name="good"), **BROKEN_SOURCES},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning) as caught:
        names = available_plugins()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3  # one warning per broken entry point
    for name, reason in [
        ("exits", "SystemExit(3) raised at import"),
        ("function", "must implement FrameworkPlugin"),
        ("init", "RuntimeError: no framework here"),
    ]:
        (message,) = [m for m in messages if f"entry point {name!r}" in m]
        assert "distribution fakeplugins 1.0" in message
        assert reason in message
    assert "good" in names
    assert not {"exits", "function", "init"} & set(names)
    for module in ("ncgeom_fake_good2", *BROKEN_SOURCES):
        monkeypatch.delitem(sys.modules, module, raising=False)


def test_owns_that_raises_is_skipped_with_one_warning(no_entry_points: None) -> None:
    class Raising(Toy):
        def owns(self, obj: Any) -> bool:
            raise AttributeError("looked at the wrong attribute")

    toy = register_plugin(Toy())
    register_plugin(Raising("raising"))
    with pytest.warns(RuntimeWarning, match=r"plugin 'raising' .*owns\(\) raised AttributeError"):
        assert get_plugin(ToyTensor(np.zeros(1))) is toy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every lookup
        assert get_plugin(ToyTensor(np.zeros(1))) is toy
        with pytest.raises(TypeError, match="no registered plugin owns"):
            get_plugin(1.5)


def test_unreadable_entry_point_metadata_warns(
    monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    def entry_points(**_: Any) -> list[Any]:
        raise OSError("corrupt metadata")

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with pytest.warns(RuntimeWarning, match=r"cannot read the entry points .*corrupt metadata"):
        assert available_plugins() == ()


def test_broken_entry_points_never_take_down_import_or_cli(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    write_distribution(
        root,
        {"exits": "ncgeom_fake_exits:plugin"},
        {"ncgeom_fake_exits": BROKEN_SOURCES["ncgeom_fake_exits"]},
    )
    info = root / "fakeplugins-1.0.dist-info" / "entry_points.txt"
    info.write_text(
        info.read_text() + "[ncgeom.commands]\nexits = ncgeom_fake_exits:command\n"
        "function = ncgeom_fake_function:plugin\n"
    )
    (root / "ncgeom_fake_function.py").write_text(BROKEN_SOURCES["ncgeom_fake_function"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    code = (
        "import ncgeom, ncgeom.plugins as p, ncgeom.cli as c; "
        "print(sorted(p.available_plugins())); "
        "raise SystemExit(c.main(['theory', '--counts', '3,2', '--lambda-w', '1e-3', "
        "'--lambda-h', '1e-3', '--json']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'exits'" in result.stderr and "SystemExit(3) raised at import" in result.stderr
    assert "'function'" in result.stderr
    assert '"objective"' in result.stdout


def test_conformance_arguments_of_the_wrong_kind_are_named() -> None:
    cases = [
        ({"make_tensor": 5}, TypeError, r"^`make_tensor` must be callable \(.*\); got int$"),
        ({"mutate": "add"}, TypeError, r"^`mutate` must be callable or None; got str$"),
        ({"checks": "owns"}, TypeError, r"^`checks` must be a sequence of check names"),
        ({"checks": [1]}, TypeError, r"^`checks` must be a sequence of check names"),
        ({"rtol": -1.0}, ValueError, r"^`rtol` must be > 0; got -1\.0$"),
        ({"rtol": "tight"}, TypeError, r"^`rtol` must be a real number; got 'tight'$"),
    ]
    for kwargs, error, message in cases:
        arguments = {"make_tensor": np.array, **kwargs}
        with pytest.raises(error, match=message):
            check_plugin(NumpyPlugin(), **arguments)
