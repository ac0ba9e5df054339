"""The package layout: layers import downwards only, one door to array-api-compat,
one list of backends, and every name the docs mention imports by its documented path."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ncgeom
from ncgeom._lib.backend import BACKENDS
from ncgeom.cli import COMMAND_ENTRY_POINTS
from ncgeom.plugins import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ncgeom"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: What each folder of the package may import from ncgeom (besides itself).
ALLOWED = {
    "_lib": set(),
    "theory": {"_lib"},
    "measure": {"_lib", "theory"},
    "integrations": {"_lib", "theory", "measure"},
    "testing": {"_lib", "theory", "measure", "integrations"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _ncgeom_imports(path: Path) -> set[str]:
    """Absolute names of the ncgeom modules (or module attributes) `path` imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
    return {name for name in found if name == "ncgeom" or name.startswith("ncgeom.")}


def _folder(module: str) -> str | None:
    """The layer folder of an ncgeom module, None for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below(folder):
    assert (PACKAGE / folder / "__init__.py").is_file()
    wrong = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for target in _ncgeom_imports(path):
            layer = _folder(target)
            if layer != folder and layer not in ALLOWED[folder]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert wrong == []


def _module_graph() -> dict[str, set[str]]:
    """Module -> the ncgeom modules it imports anywhere (at the top or inside a
    function), packages' ``__init__`` files left out."""
    modules = {
        _module_name(path): path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"
    }
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _ncgeom_imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]  # an attribute of a module
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def test_no_two_modules_import_each_other():
    # Not even inside a function: a cycle hides an unclear division of work.
    graph = _module_graph()
    assert "ncgeom.measure.verdict" in graph["ncgeom.measure.report"]
    cycles = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_every_module_lives_in_a_layer_folder():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    # the package, `python -m ncgeom`, and the two facades of the plugin API
    assert top == ["__init__.py", "__main__.py", "checks.py", "utils.py"]
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(ALLOWED)


def test_only_the_backend_module_mentions_array_api_compat():
    # The same test as `grep -rln array_api_compat ncgeom`.
    mentions = sorted(
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if "array_api_compat" in p.read_text()
    )
    assert mentions == ["ncgeom/_lib/backend.py"]


def test_the_architecture_page_names_every_folder_and_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE or path.name == "__init__.py":
            continue
        assert f"`{path.stem}`" in page, path
    for folder in ALLOWED:
        assert f"`ncgeom/{folder}/`" in page


def test_one_list_of_backends(capsys):
    from conftest import DEVICES

    from benchmarks.backends import BACKENDS as TIMED
    from ncgeom.cli import main

    assert list(DEVICES) == list(BACKENDS)  # the test fixture covers each library
    assert set(TIMED) <= set(BACKENDS)
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--backend", "nope"])
    assert exit_.value.code == 2
    offered = ", ".join(repr(name) for name in BACKENDS)
    assert f"(choose from {offered})" in capsys.readouterr().err


def test_short_module_paths_are_the_moved_modules():
    pairs = {
        "ncgeom.stats": "ncgeom.measure.stats",
        "ncgeom.metrics": "ncgeom.measure.metrics",
        "ncgeom.report": "ncgeom.measure.report",
        "ncgeom.outofcore": "ncgeom.measure.outofcore",
        "ncgeom.verdict": "ncgeom.measure.verdict",
        "ncgeom.vocabulary": "ncgeom.measure.vocabulary",
        "ncgeom.theory_metrics": "ncgeom.theory.comparison",
        "ncgeom.loss": "ncgeom.theory.loss",
        "ncgeom.solve": "ncgeom.theory.solve",
        "ncgeom.plot": "ncgeom.theory.plot",
        "ncgeom.plugins": "ncgeom.integrations.plugins",
        "ncgeom.cli": "ncgeom.integrations.cli",
    }
    for short, home in pairs.items():
        assert importlib.import_module(short) is importlib.import_module(home)
        assert getattr(ncgeom, short.split(".")[1]) is importlib.import_module(home)


def test_short_paths_import_in_a_fresh_interpreter():
    code = (
        "import ncgeom.metrics, ncgeom.measure.metrics as m\n"
        "from ncgeom.solve import solve_ufm\n"
        "from ncgeom.plugins import reduce_class_stats\n"
        "from ncgeom.theory import ufm_relu_optimum\n"
        "assert ncgeom.metrics is m\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _documented_names() -> list[tuple[str, str]]:
    """(file, dotted name) for every ncgeom name the README and the docs give."""
    groups = {ENTRY_POINT_GROUP, COMMAND_ENTRY_POINTS}  # entry-point groups, not modules
    found = set()
    for path in DOCS:
        text = path.read_text()
        dotted = [
            match.group()
            for match in re.finditer(r"\bncgeom(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text)
            if not text.startswith("*", match.end())  # a glob of names, e.g. for mutmut
        ]
        for line_module, names in re.findall(
            r"^\s*from (ncgeom[\w.]*) import (\([^)]*\)|[^\n]*)", text, re.M
        ):
            for name in names.strip("()").replace("\n", " ").split(","):
                name = name.split(" as ")[0].strip()
                if name:
                    dotted.append(f"{line_module}.{name}")
        found.update(
            (path.name, name) for name in dotted if name not in groups and not name.endswith("_")
        )
    return sorted(found)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


DOCUMENTED = _documented_names()


def test_the_docs_name_many_paths():
    assert len(DOCUMENTED) > 60


@pytest.mark.parametrize(("page", "name"), DOCUMENTED)
def test_each_documented_name_imports_by_its_documented_path(page, name):
    assert _resolve(name) is not None
