"""Every test the documentation names as proof of a promise exists.

The docs cite tests as `` `tests/file.py::test_name` ``, and later ones on the same line as
`` `::test_name` `` (same file).  A renamed or deleted test would leave a promise without its
proof; this finds it.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
_CITATION = re.compile(r"`((?:tests/[\w/]+\.py)?)::(\w+)(?:\[[^\]]*\])?`")


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def _citations(doc: Path) -> list[tuple[int, str, str]]:
    found = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        current = ""
        for match in _CITATION.finditer(line):
            current = match.group(1) or current
            found.append((number, current, match.group(2)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_cited_test_exists(doc: Path) -> None:
    missing = []
    for line, file, name in _citations(doc):
        path = REPO / file
        if not file or not path.is_file() or name not in _test_names(path):
            missing.append(f"{doc.name}:{line}: {file or '?'}::{name}")
    assert not missing, "cited but not found:\n" + "\n".join(missing)


def test_the_check_finds_citations() -> None:
    assert len(_citations(REPO / "docs" / "reliability.md")) > 50
