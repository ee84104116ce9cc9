"""The private names we rely on still exist in the pinned libraries (a pin update is read against this list)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from pipelines.private_names import PRIVATE_NAMES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("module", "name", "where"), PRIVATE_NAMES, ids=[f"{m}.{n}" for m, n, _ in PRIVATE_NAMES])
def test_each_private_name_exists(module, name, where):
    obj = importlib.import_module(module)
    *owners, last = name.split(".")
    for part in owners:
        obj = getattr(obj, part)
    # An instance attribute exists once __init__ has run: its class's source must assign it.
    assert hasattr(obj, last) or re.search(rf"self\.{last}\b[^=\n]*=", inspect.getsource(obj)), (
        f"{module}.{name} is gone"
    )
    assert Path(ROOT, where.split(":")[0].split(",")[0]).exists()


def test_every_private_diffusers_import_is_listed():
    """A `from diffusers... import _name` anywhere in the project must be on the list."""
    listed = {name.split(".")[-1] for _, name, _ in PRIVATE_NAMES}
    for path in [*ROOT.glob("pipelines/*.py"), *ROOT.glob("ui/*.py"), *ROOT.glob("bench/*.py"), ROOT / "app.py"]:
        for name in re.findall(r"from (?:diffusers|gradio)[\w.]* import (_\w+)", path.read_text()):
            assert name in listed, f"{path.name}: {name}"
