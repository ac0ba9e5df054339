"""The examples of docs/jax.md and docs/lightning.md are the tested scripts, and they run."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = {"jax.md": "jax_training.py", "lightning.md": "lightning_training.py"}
NEEDS = {"jax.md": "flax", "lightning.md": "lightning"}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_page_shows_the_example_script(page: str) -> None:
    text = (DOCS / page).read_text()
    code = text.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert code == (DOCS / "examples" / PAGES[page]).read_text()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_example_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(NEEDS[page])
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(DOCS / "examples" / PAGES[page]), run_name="docs_example")
    assert scope["report"].num_samples if "report" in scope else scope["callback"].history


def test_the_plugin_guide_walks_through_ncgeom_jax() -> None:
    guide = (DOCS / "plugins.md").read_text()
    assert "## Worked example: `ncgeom_jax`" in guide
    assert "## The plugin API" in guide
    for module in ("ncgeom.checks", "ncgeom.utils", "ncgeom.plugins"):
        assert f"`{module}`" in guide
