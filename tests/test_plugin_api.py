"""The plugin API: public modules plugins build on, and plugins that use nothing else."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PUBLIC = [
    "ncgeom.checks",
    "ncgeom.utils",
    "ncgeom.plugins",
    "ncgeom.testing.conformance",
    "ncgeom_jax",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_declare_a_sorted_all(name: str) -> None:
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item} is missing"


def test_plugins_import_no_private_module_of_ncgeom() -> None:
    private = re.compile(r"ncgeom\._")
    found = [
        f"{path.relative_to(PLUGINS)}:{number}: {line.strip()}"
        for path in sorted(PLUGINS.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if private.search(line)
    ]
    assert found == []


def test_the_private_names_still_work() -> None:
    import ncgeom._array
    import ncgeom._json
    import ncgeom._progress
    import ncgeom._validate
    from ncgeom import checks, utils

    for name in checks.__all__:
        assert getattr(ncgeom._validate, name) is getattr(checks, name)
    assert ncgeom._json.jsonable is utils.jsonable
    assert ncgeom._progress.Progress is utils.Progress
    assert ncgeom._array.to_host is utils.to_host
