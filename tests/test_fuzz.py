"""Fuzzing the entry points: bad and edge inputs give a correct result or a clear error.

Every property draws arguments that are sometimes valid and often not (wrong
types, dtypes, shapes, signs, NaN/Inf, huge and tiny magnitudes, integers
beyond int64) and asserts the contract of every public entry point: either a
result that satisfies the function's own invariants, or a `TypeError` /
`ValueError` whose message names one of the arguments in backticks. Any other
exception type fails. The default run draws a bounded number of examples per
property (the whole file stays well under 30 s on two cores); the `slow` run
(``python -m pytest -m slow tests/test_fuzz.py``) draws many more.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncgeom import loss
from ncgeom._validate import check_batch
from ncgeom.cli import main
from ncgeom.plugins import get_plugin, register_plugin, unregister_plugin
from ncgeom.solve import solve_ufm, working_memory
from ncgeom.theory import (
    collapse_threshold,
    critical_regularization,
    min_samples_to_survive,
    ufm_relu_optimum,
)

#: Examples per property: the default run, and the `slow` run.
BUDGETS = [
    pytest.param(60, id="default"),
    pytest.param(1500, id="slow", marks=pytest.mark.slow),
]


def fuzz_settings(budget: int) -> settings:
    return settings(
        max_examples=budget,
        deadline=None,
        derandomize=budget < 100,  # the default run is reproducible
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def expect_result_or_named_error(call: Callable[[], Any], names: tuple[str, ...]) -> Any:
    """Run `call`; a TypeError/ValueError must name one of `names`; return None then."""
    try:
        return call()
    except (TypeError, ValueError) as error:
        message = str(error)
        named = re.findall(r"`([A-Za-z_][A-Za-z_0-9.\-]*)`", message)
        assert any(name.split(".")[0] in names for name in named), (
            f"{type(error).__name__} names none of {names}: {message}"
        )
        assert "\n" not in message.strip(), message
        return None


# ----------------------------------------------------------------------------- strategies
huge_ints = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63)])
odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "1e-3", "abc", b"1"]),
    st.just([1.0]),
    st.just(object()),
)
lambdas = st.one_of(
    st.floats(1e-12, 1.0),
    st.sampled_from([0.0, -1e-3, math.nan, math.inf, 1e-320, 1e300]),
    odd_scalars,
)
count_values = st.one_of(
    st.integers(1, 10**6),
    st.integers(-3, 0),
    huge_ints,
    st.floats(0.5, 1e20),
    st.sampled_from([math.nan, math.inf, 2.5, True]),
)


@st.composite
def counts_like(draw: st.DrawFn) -> Any:
    """Counts: lists, NumPy arrays of any numeric dtype, odd shapes and objects."""
    kind = draw(st.sampled_from(["list", "array", "good", "shape", "odd"]))
    if kind == "good":
        return draw(st.lists(st.integers(1, 10**4), min_size=2, max_size=12))
    if kind == "list":
        return draw(st.lists(count_values, min_size=0, max_size=6))
    if kind == "array":
        dtype = draw(
            st.sampled_from(
                ["int8", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64"]
            )
        )
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        top = 10**6 if info is None else int(info.max)
        low = 0 if info is None else int(info.min)
        values = draw(st.lists(st.integers(max(low, -5), top), min_size=0, max_size=6))
        return np.array(values, dtype=dtype)
    if kind == "shape":
        return np.ones(draw(st.sampled_from([(), (2, 2), (1, 3), (0,)])), dtype=np.int64)
    return draw(odd_scalars)


# ----------------------------------------------------------------------------- theory
@pytest.mark.parametrize("budget", BUDGETS)
def test_theory_functions(budget: int) -> None:
    names = ("counts", "lambda_w", "lambda_h", "dim", "k", "lambda_w` * `lambda_h")

    @fuzz_settings(budget)
    @given(
        counts_like(),
        lambdas,
        lambdas,
        st.one_of(st.none(), st.integers(-2, 20), odd_scalars),
        st.one_of(st.integers(-2, 12), odd_scalars),
    )
    def run(counts: Any, lw: Any, lh: Any, dim: Any, k: Any) -> None:
        opt = expect_result_or_named_error(lambda: ufm_relu_optimum(counts, lw, lh, dim), names)
        if opt is not None:
            host = np.asarray(opt.counts)
            alive = np.asarray(opt.alive)
            assert opt.num_samples == sum(int(v) for v in host)  # exact, never wrapped
            assert np.array_equal(alive, host > opt.collapse_count) or np.any(
                np.isclose(host, opt.collapse_count, rtol=1e-3)
            )
            assert float(opt.objective) >= 0 and np.all(np.asarray(opt.margins) >= 0)
            assert opt.dim >= opt.num_alive
        threshold = expect_result_or_named_error(lambda: collapse_threshold(counts, lw, lh), names)
        if threshold is not None:
            assert threshold > 0 and math.isfinite(threshold)
        critical = expect_result_or_named_error(lambda: critical_regularization(counts), names)
        if critical is not None:
            assert np.all(np.asarray(critical) > 0)
        survive = expect_result_or_named_error(
            lambda: min_samples_to_survive(counts, k, lw, lh), names
        )
        assert survive is None or (isinstance(survive, int) and survive >= 1)

    run()


# ----------------------------------------------------------------------------- solver
@pytest.mark.parametrize("budget", BUDGETS)
def test_solver(budget: int) -> None:
    names = (
        "counts", "lambda_w", "lambda_h", "lambda_b", "dim", "form", "restarts", "tol",
        "max_iter", "max_bytes", "class_weights", "logit_adjustment", "dtype", "seed",
        "itemsize", "bias", "device",
    )  # fmt: skip
    small_counts = st.one_of(
        st.lists(st.integers(1, 6), min_size=2, max_size=4),
        st.sampled_from([[10**9, 10], [10**6, 10], [2**63, 1], [0, 3], [3], [2.5, 1]]),
        counts_like(),
    )

    @fuzz_settings(budget)
    @given(
        small_counts,
        lambdas,
        lambdas,
        st.one_of(st.integers(0, 5), odd_scalars),
        st.sampled_from(["collapsed", "full", "sampled", None]),
        st.one_of(st.integers(0, 3), st.sampled_from([-1, 2.0, None])),
        st.one_of(st.none(), st.floats(1e-12, 1.0), st.sampled_from([0.0, -1.0, math.nan])),
        st.one_of(st.integers(1, 40), st.sampled_from([0, -3, 1.5])),
        st.one_of(st.just(2**30), st.none(), st.sampled_from([0, 1000, -1, 1.0])),
        st.one_of(st.booleans(), st.sampled_from([None, 1, "yes"])),
        st.one_of(st.integers(0, 2**64), st.sampled_from([None, -1, 1.5, "abc"])),
        st.sampled_from([None, "cpu", "cuda", 7]),
    )
    def run(
        counts: Any,
        lw: Any,
        lh: Any,
        dim: Any,
        form: Any,
        restarts: Any,
        tol: Any,
        max_iter: Any,
        max_bytes: Any,
        bias: Any,
        seed: Any,
        device: Any,
    ) -> None:
        try:
            size = working_memory(counts, dim, form=form or "collapsed", restarts=1)
        except (TypeError, ValueError):
            size = 0
        if max_bytes is None and size > 2**27:
            max_bytes = 2**27  # the fuzz run itself stays small
        sol = expect_result_or_named_error(
            lambda: solve_ufm(
                counts,
                lw,
                lh,
                dim,
                form=form,
                restarts=restarts,
                tol=tol,
                bias=bias,
                max_iter=max_iter,
                max_bytes=max_bytes,
                seed=seed,
                device=device,
            ),
            names,
        )
        if sol is not None:
            assert np.all(np.asarray(sol.means) >= 0)
            assert math.isfinite(sol.objective) and sol.objective >= 0
            assert sol.classifier.shape == (len(sol.counts), dim)

    run()


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("budget", BUDGETS)
def test_loss_functions(budget: int) -> None:
    names = (
        "classifier", "features", "labels", "means", "counts", "lambda_w", "lambda_h",
        "lambda_b", "bias", "class_weights", "logit_adjustment", "prior", "num_classes",
    )  # fmt: skip
    arrays = st.sampled_from(
        [
            np.ones((3, 4)),
            np.ones((4, 3)),
            np.ones((3,)),
            np.ones((0, 4)),
            np.full((3, 4), np.nan),
            np.full((3, 4), np.inf),
            np.ones((3, 4), dtype=np.float32),
            np.ones((3, 4), dtype=np.int64),
            np.ones((3, 4), dtype=bool),
            [[1.0] * 4] * 3,
            None,
        ]
    )
    label_arrays = st.sampled_from(
        [
            np.array([0, 1, 2]),
            np.array([0, 1, 2], dtype=np.uint8),
            np.array([0, 1, 2], dtype=np.uint64),
            np.array([0, 1, 2**63 + 1], dtype=np.uint64),
            np.array([0, 1, 3]),
            np.array([0, -1, 2]),
            np.array([True, False, True]),
            np.array(["a", "b", "c"]),
            np.array([0.0, 1.0, 2.0]),
            np.array([0, 1]),
        ]
    )

    @fuzz_settings(budget)
    @given(arrays, arrays, label_arrays, lambdas, lambdas, st.sampled_from([0, 1, 2, 3]))
    def run(w: Any, h: Any, y: Any, lw: Any, lh: Any, which: int) -> None:
        calls = [
            lambda: loss.ufm_objective(w, h, y, lw, lh),
            lambda: loss.ufm_gradients(w, h, y, lw, lh),
            lambda: loss.collapsed_objective(w, h, np.array([3.0, 2.0, 1.0]), lw, lh),
            lambda: loss.collapsed_gradients(w, h, [3, 2, 1], lw, lh),
        ]
        result = expect_result_or_named_error(calls[which], names)
        if result is not None:
            value = float(result if which % 2 == 0 else result.objective)
            assert value >= 0  # never NaN; +inf only where the dtype overflows (lambda 1e300)

    run()


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("budget", BUDGETS)
def test_label_contract(budget: int) -> None:
    import array_api_compat.numpy as xp

    dtypes = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]

    @fuzz_settings(budget)
    @given(
        st.sampled_from(dtypes),
        st.lists(st.integers(-(2**63), 2**64 - 1), min_size=0, max_size=8),
        st.integers(2, 300),
    )
    def run(dtype: str, values: list[int], num_classes: int) -> None:
        info = np.iinfo(dtype)
        values = [min(max(v, int(info.min)), int(info.max)) for v in values]
        labels = np.array(values, dtype=dtype)
        features = np.ones((len(values), 2))
        out = expect_result_or_named_error(
            lambda: check_batch(features, labels, num_classes, xp), ("labels",)
        )
        valid = all(0 <= v < num_classes for v in values)
        assert (out is not None) == valid
        if out is not None:
            assert out.dtype == np.int64 and out.tolist() == values

    run()


# ----------------------------------------------------------------------------- CLI
def _cli_value(draw: st.DrawFn) -> str:
    return draw(
        st.one_of(
            st.sampled_from(
                ["0", "-1", "1e-3", "nan", "inf", "-inf", "", "x", "3,2", "1e400", "2.5"]
            ),
            st.integers(-10, 10**20).map(str),
            st.lists(st.integers(-2, 10**19), min_size=0, max_size=5).map(
                lambda v: ",".join(map(str, v))
            ),
        )
    )


@st.composite
def theory_argv(draw: st.DrawFn) -> list[str]:
    argv = ["theory"]
    options = {
        "--counts": st.lists(st.integers(1, 500), min_size=2, max_size=6).map(
            lambda v: ",".join(map(str, v))
        ),
        "--lambda-w": st.floats(1e-6, 1e-1).map(repr),
        "--lambda-h": st.floats(1e-6, 1e-1).map(repr),
        "--dim": st.integers(1, 8).map(str),
    }
    for option, good in options.items():
        mode = draw(st.sampled_from(["good", "good", "bad", "missing"]))
        if mode == "good":
            argv += [option, draw(good)]
        elif mode == "bad":
            argv += [option, _cli_value(draw)]
    if draw(st.booleans()):
        argv.append("--json")
    return argv


@st.composite
def verify_argv(draw: st.DrawFn) -> list[str]:
    argv = ["verify", "--configs", "1", "--max-iter", "30", "--restarts", "1"]
    for option in ("--max-classes", "--max-count", "--seed", "--tol", "--form", "--backend"):
        if draw(st.booleans()):
            value = _cli_value(draw)
            if option == "--max-classes" and value.isdigit() and int(value) > 6:
                value = draw(st.sampled_from(["100000", "10000000000", "5"]))
            if option == "--max-count" and value.isdigit() and int(value) > 50:
                value = draw(st.sampled_from(["10000000", str(2**62), "50"]))
            argv += [option, value]
    return argv


@pytest.mark.parametrize("budget", BUDGETS)
def test_cli_commands(budget: int) -> None:
    @fuzz_settings(budget)
    @given(st.one_of(theory_argv(), verify_argv()))
    def run(argv: list[str]) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # usage errors, as argparse does
                code = exit_.code
        text = err.getvalue()
        assert "Traceback" not in text
        if code == 0:
            assert out.getvalue()
        elif argv[0] == "verify" and code == 1 and not text:
            assert "outside the limits" in out.getvalue()  # a real gap, reported
        else:
            assert code in (1, 2), (argv, code, text)
            assert text.count("\n") == 1 and text.startswith(f"ncgeom {argv[0]}: error: "), text

    run()


# ----------------------------------------------------------------------------- registry
class _Plugin:
    def __init__(self, name: Any, owns: Any = None) -> None:
        self.name = name
        self._owns = owns

    def owns(self, obj: Any) -> bool:
        if isinstance(self._owns, BaseException):
            raise self._owns
        return obj is self._owns

    def to_array(self, tensor: Any) -> Any:
        return tensor

    def all_reduce_stats(self, stats: Any) -> Any:
        return stats


@pytest.mark.parametrize("budget", BUDGETS)
def test_registry(budget: int) -> None:
    plugin_like = st.one_of(
        st.builds(
            _Plugin,
            st.one_of(st.text(max_size=6), odd_scalars, st.just(" spaced ")),
            st.one_of(st.none(), st.just(ValueError("owns fails"))),
        ),
        odd_scalars,
    )

    @fuzz_settings(budget)
    @given(plugin_like, st.one_of(odd_scalars, st.text(max_size=6)))
    def run(plugin: Any, lookup: Any) -> None:
        registered = expect_result_or_named_error(
            lambda: register_plugin(plugin), ("plugin", "plugin.name")
        )
        try:
            try:
                found = get_plugin(lookup)
            except (TypeError, ValueError) as error:
                assert "plugin" in str(error)
            else:
                assert found.name == lookup or found.owns(lookup)
        finally:
            if registered is not None:
                unregister_plugin(registered.name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an owns() that raises warns once
        run()
