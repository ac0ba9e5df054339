"""Every ```python block of README.md and docs/*.md runs.

The blocks of one page run in order in one namespace (a page builds on its
earlier blocks), in a temporary working directory. A block that cannot run
here is preceded by ``<!-- not run: REASON -->``; the reason must be given.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- not run: (?P<why>[^>]*?) -->\s*)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[str | None, str]]:
    """(reason it is not run, or None; code) of each python block of `page`."""
    return [(m.group("why"), m.group("code")) for m in BLOCK.finditer(page.read_text())]


PAGES = [page for page in ALL_PAGES if any(why is None for why, _ in blocks(page))]


def test_every_skipped_block_says_why():
    assert ROOT / "README.md" in PAGES
    for page in ALL_PAGES:
        for why, _ in blocks(page):
            assert why is None or len(why.strip()) > 10, (page.name, why)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page: Path, tmp_path, monkeypatch):
    found = blocks(page)
    runnable = [(i, code) for i, (why, code) in enumerate(found) if why is None]
    if any("torch" in code for _, code in runnable):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": f"docs_{page.stem}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, code in runnable:
            name = f"{os.path.relpath(page, ROOT)} block {index}"
            exec(compile(code, name, "exec"), scope)
