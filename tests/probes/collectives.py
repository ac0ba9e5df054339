"""`reduce_class_stats` with collectives that work, and with broken ones.

Two ranks that hold the same statistics: a working pair of collectives gives
the statistics of the samples twice over. A collective that returns too few or
too many entries, None, or arrays of the wrong shape, on its first or on a
later call, must be refused with an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ncgeom import reduce_class_stats

from . import Probe, Raises, Returns
from . import formulas as f
from .data import FEATURES, LABELS, K, numpy_stats

ERROR = (TypeError, ValueError)


def _gather_ok(x: Any) -> list[Any]:
    return [x, x.copy()]


def _reduce_ok(x: Any) -> Any:
    return 2 * x


def _on_call(
    number: int, broken: Callable[[Any], Any], working: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """A collective that misbehaves on its `number`-th call (1-based) only."""
    calls = {"n": 0}

    def collective(x: Any) -> Any:
        calls["n"] += 1
        return broken(x) if calls["n"] == number else working(x)

    return collective


def _reduce(all_gather: Any = _gather_ok, all_reduce: Any = _reduce_ok) -> Any:
    return reduce_class_stats(
        numpy_stats(), rank=0, world_size=2, all_gather=all_gather, all_reduce=all_reduce
    )


def _raises(name: str) -> Raises:
    return Raises(ERROR, (name,))


def probes() -> list[Probe]:
    twice_x, twice_y = np.concatenate([FEATURES, FEATURES]), np.concatenate([LABELS, LABELS])
    ok = Returns(f.stats_check(twice_x, twice_y, K, 1e-10))
    rows: list[tuple[str, Callable[[], Any], Any]] = [
        ("working", lambda: _reduce(), ok),
        ("all_gather-too-few", lambda: _reduce(all_gather=lambda x: [x]), _raises("all_gather")),
        (
            "all_gather-too-many",
            lambda: _reduce(all_gather=lambda x: [x, x, x]),
            _raises("all_gather"),
        ),
        ("all_gather-None", lambda: _reduce(all_gather=lambda x: None), _raises("all_gather")),
        (
            "all_gather-wrong-shape",
            lambda: _reduce(all_gather=lambda x: [x, x[:-1]]),
            _raises("all_gather"),
        ),
        (
            "all_gather-wrong-shape-2nd-call",
            lambda: _reduce(all_gather=_on_call(2, lambda x: [x, x[:-1]], _gather_ok)),
            _raises("all_gather"),
        ),
        (
            "all_gather-too-few-2nd-call",
            lambda: _reduce(all_gather=_on_call(2, lambda x: [x], _gather_ok)),
            _raises("all_gather"),
        ),
        ("all_gather-not-callable", lambda: _reduce(all_gather=None), _raises("all_gather")),
        ("all_reduce-None", lambda: _reduce(all_reduce=lambda x: None), _raises("all_reduce")),
        (
            "all_reduce-wrong-shape",
            lambda: _reduce(all_reduce=lambda x: 2 * x[:-1]),
            _raises("all_reduce"),
        ),
        ("all_reduce-0-d", lambda: _reduce(all_reduce=lambda x: np.sum(x)), _raises("all_reduce")),
        (
            "all_reduce-None-2nd-call",
            lambda: _reduce(all_reduce=_on_call(2, lambda x: None, _reduce_ok)),
            _raises("all_reduce"),
        ),
        (
            "all_reduce-wrong-shape-2nd-call",
            lambda: _reduce(all_reduce=_on_call(2, lambda x: 2 * x[:-1], _reduce_ok)),
            _raises("all_reduce"),
        ),
        ("all_reduce-not-callable", lambda: _reduce(all_reduce="sum"), _raises("all_reduce")),
    ]
    return [Probe(f"collective-{name}", call, expect) for name, call, expect in rows]
