"""The examples of docs/testing.md run: each code block on its own, each test in it called."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_block_runs_and_its_tests_pass(index: int) -> None:
    scope: dict = {"__name__": f"docs_testing_{index}"}
    exec(compile(BLOCKS[index], f"docs/testing.md block {index}", "exec"), scope)
    tests = [value for name, value in scope.items() if name.startswith("test_")]
    assert tests, "every example block defines a test"
    for test in tests:
        test()
