"""The documentation runs what it shows: every Python block is either a
``testcode`` block (run by ``sphinx-build -b doctest`` in ``tox -e docs``) or a
``literalinclude`` of a script in examples/ (run by examples/test_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def test_no_python_block_that_nothing_runs() -> None:
    untested = []
    for page in sorted([*DOCS.rglob("*.rst"), *DOCS.rglob("*.md")]):
        text = page.read_text(encoding="utf-8")
        if re.search(r"^\s*\.\. code-block:: (python|py|pycon)\b|^```(python|py)\b", text, re.M):
            untested.append(page.name)
    assert not untested, untested


def test_every_included_example_exists_and_is_tested() -> None:
    tests = (DOCS.parent / "examples" / "test_examples.py").read_text(encoding="utf-8")
    for page in DOCS.rglob("*.rst"):
        for target in re.findall(r"literalinclude:: (\S+)", page.read_text(encoding="utf-8")):
            script = (page.parent / target).resolve()
            assert script.is_file(), (page.name, target)
            assert f'"{script.relative_to(DOCS.parent / "examples")}"' in tests, script
