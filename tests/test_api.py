"""Every public module declares a sorted `__all__` whose names exist."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "ncgeom",
    "ncgeom.metrics",
    "ncgeom.report",
    "ncgeom.stats",
    "ncgeom.theory",
    "ncgeom.theory_metrics",
    "ncgeom.loss",
    "ncgeom.solve",
    "ncgeom.plugins",
    "ncgeom.outofcore",
    "ncgeom.cli",
    "ncgeom.testing",
    "ncgeom.testing.strategies",
    "ncgeom.testing.conformance",
    "ncgeom_torch",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported)
    for item in exported:
        assert hasattr(module, item), f"{name}.{item} is missing"


def test_core_import_does_not_import_frameworks():
    import subprocess
    import sys

    frameworks = "('torch', 'cupy', 'dask', 'matplotlib')"
    code = f"import sys, ncgeom; print(sorted(m for m in {frameworks} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
