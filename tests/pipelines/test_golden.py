"""The shape of what a request records, frozen before the runner is split into stages (issue: the runner as stages).

For a fixed request on `tiny`, `tiny-sd15`, `tiny-flux` and `tiny-flux2-klein`: the key paths of a single render's
metadata and diagnostics, of a 2-strength sweep's metadata, cell metadata and diagnostics, and of the settings file.
A move that drops, renames or adds a key fails here; an intended change regenerates the file and says so in its
commit:

    IMAGE_PROMPT_UPDATE_GOLDEN=1 python -m pytest tests/pipelines/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipelines import Engine, build_request
from pipelines.settings import settings_of

GOLDEN = Path(__file__).with_name("golden_keys.json")


def key_paths(value: Any, prefix: str = "") -> list[str]:
    """Every dict key as a dotted path; list items share one path (`name[]`), so counts do not matter."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths.update(key_paths(item, path))
    elif isinstance(value, list):
        for item in value:
            paths.update(key_paths(item, f"{prefix}[]"))
    return sorted(paths)


@pytest.fixture(scope="module")
def flux_engines(families, tiny_root):
    names = ("tiny-flux", "tiny-flux2-klein")
    return {name: Engine(families[name], tiny_root=tiny_root, max_batch=8) for name in names}


def shapes(engine: Engine, preset: Any, gold: Any) -> dict[str, list[str]]:
    request = build_request(preset, prompt="a golden vase", seed=5, steps=2, references=[gold])
    single = engine.generate(request)
    sweep = engine.generate_sweep(request.swept([0.0, 1.0]))
    return {
        "metadata": key_paths(single.metadata),
        "diagnostics": key_paths(single.diagnostics),
        "sweep_metadata": key_paths(sweep.metadata),
        "cell_metadata": key_paths(sweep.cell_metadata[0]),
        "sweep_diagnostics": key_paths(sweep.diagnostics),
        "settings": key_paths(settings_of(request)),
    }


def test_the_recorded_keys_are_unchanged(engines, flux_engines, presets, gold):
    actual = {
        name: shapes({**engines, **flux_engines}[name], presets["general"][name], gold)
        for name in ("tiny", "tiny-sd15", "tiny-flux", "tiny-flux2-klein")
    }
    if os.environ.get("IMAGE_PROMPT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for family, parts in expected.items():
        for part, keys in parts.items():
            got = actual[family][part]
            missing, added = sorted(set(keys) - set(got)), sorted(set(got) - set(keys))
            assert not missing and not added, f"{family} {part}: missing {missing}, added {added}"


def test_key_paths():
    assert key_paths({"a": {"b": 1}, "c": [{"d": 2}, {"e": 3}]}) == ["a", "a.b", "c", "c[].d", "c[].e"]
