"""The tab builder stays small: parts, not one long function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_function_in_the_tab_builder_is_over_80_lines():
    tree = ast.parse((ROOT / "ui" / "tab.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 80}  # fmt: skip
    assert not long, long
