"""Table-driven probes of the input contract (docs/errors.md, "Input classes").

A `Probe` calls one public entry point with one class of bad or unusual input
and states what it must get: a correct result, checked against a float64 NumPy
formula of `probes.formulas` (`Returns`), or a `TypeError`/`ValueError` whose
one-line message names the argument in backticks (`Raises`). Where the contract
allows both (a container that may be converted exactly or refused), `Either`
accepts a correct result or the error, never a wrong result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Either", "Probe", "Raises", "Returns", "check_probe", "ids"]


@dataclass(frozen=True)
class Raises:
    """A `kind` exception whose message is one line naming one of `names` in backticks.

    `also` lists further substrings the message must hold (a hint, the bad
    value); `forbid` substrings it must not hold (a wrong diagnosis).
    """

    kind: type[Exception] | tuple[type[Exception], ...]
    names: tuple[str, ...]
    also: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()

    def check(self, error: BaseException) -> None:
        shown = f"{type(error).__name__}: {error}"
        if not isinstance(error, self.kind):
            raise AssertionError(f"expected {_kinds(self.kind)}; got {shown}") from error
        text = str(error)
        if not any(f"`{name}`" in text for name in self.names):
            wanted = " or ".join(f"`{name}`" for name in self.names)
            raise AssertionError(f"the message must name {wanted}; got {shown}") from error
        if "\n" in text.strip():
            raise AssertionError(f"the message must be one line; got {shown!r}") from error
        missing = [part for part in self.also if part not in text]
        if missing:
            raise AssertionError(f"the message must contain {missing}; got {shown}") from error
        wrong = [part for part in self.forbid if part in text]
        if wrong:
            raise AssertionError(f"the message must not say {wrong}; got {shown}") from error


@dataclass(frozen=True)
class Returns:
    """A result; `check(result)` raises AssertionError when it is wrong."""

    check: Callable[[Any], None]


@dataclass(frozen=True)
class Either:
    """A correct result (`returns`) or the error `raises`; never a wrong result."""

    returns: Returns
    raises: Raises


Outcome = Raises | Returns | Either


@dataclass(frozen=True)
class Probe:
    """One entry point called with one class of input, and the outcome it must get."""

    id: str
    call: Callable[[], Any]
    expect: Outcome


def check_probe(probe: Probe) -> None:
    """Call the probe and check its outcome; AssertionError says what happened instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = probe.call()
        except Exception as error:  # an AssertionError raised by the library too
            expect = probe.expect
            if isinstance(expect, Returns):
                msg = f"expected a result; got {type(error).__name__}: {error}"
                raise AssertionError(msg) from error
            if isinstance(expect, Raises):
                expect.check(error)
                return
            try:
                expect.raises.check(error)
            except AssertionError as wrong:
                raise AssertionError(f"a correct result, or: {wrong}") from error
            return
    expect = probe.expect
    if isinstance(expect, Raises):
        wanted = " or ".join(f"`{name}`" for name in expect.names)
        msg = f"expected {_kinds(expect.kind)} naming {wanted}; got a result: {_short(result)}"
        raise AssertionError(msg)
    returns = expect.returns if isinstance(expect, Either) else expect
    returns.check(result)


def ids(probes: Sequence[Probe]) -> list[str]:
    """The probes' ids, checked to be unique (pytest would rename duplicates)."""
    names = [probe.id for probe in probes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate probe ids: {duplicates}")
    return names


def _kinds(kind: type[Exception] | tuple[type[Exception], ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
