"""Presets are data, validated at start-up with messages that name file, key, value and the allowed range."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipelines import PresetError, load_families, load_mode_presets
from pipelines.presets import MODES, PRESET_DIR


def test_shipped_presets_are_valid(families, presets):
    assert {"sdxl", "sd15", "tiny", "tiny-sd15"} <= set(families)
    for mode in MODES:
        assert set(presets[mode]) == set(families)
    assert presets["general"]["sdxl"].strength.default == 0.5
    assert families["sdxl"].adapters["plus"].weight_name == "ip-adapter-plus_sdxl_vit-h.safetensors"
    assert families["sd15"].adapters["plain"].image_encoder.subfolder == "models/image_encoder"


@pytest.fixture
def preset_copy(tmp_path: Path) -> Path:
    for f in PRESET_DIR.glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def load_all(folder: Path):
    return load_mode_presets(load_families(folder), folder)


def test_out_of_range_default_is_reported_exactly(preset_copy):
    edit(preset_copy / "general.toml", "strength = { default = 0.5", "strength = { default = 3.0")
    with pytest.raises(
        PresetError, match=re.escape("presets/general.toml: [sdxl].strength.default = 3.0 is outside [0.0, 1.5]")
    ):
        load_all(preset_copy)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('variant = "plain"', 'variant = "huge"', "[sdxl].variant = 'huge' is not one of ['plain', 'plus']"),
        ("steps = { default = 30,", "steps = { default = 30.5,", "[sdxl].steps.default = 30.5 must be an integer"),
        (
            "width = { default = 1024, min = 512, max = 1536",
            "width = { default = 1024, min = 512, max = 9000",
            "[sdxl].width bounds [512, 9000] must lie inside [32, 2048]",
        ),
        ("[sdxl]\n", "[sdxl]\ncolour = 1\n", "[sdxl] has unknown keys ['colour']"),
        ("max_pixels = 1572864", "max_pixels = 5", "[sdxl].max_pixels = 5 must be an integer in [1024, 4194304]"),
        ('variants = ["plain", "plus"]', 'variants = ["plain", "mega"]', "[sdxl].variants names 'mega'"),
    ],
)
def test_mode_preset_errors(preset_copy, old, new, message):
    edit(preset_copy / "general.toml", old, new)
    with pytest.raises(PresetError, match=re.escape(message)):
        load_all(preset_copy)


def test_models_errors(preset_copy):
    edit(preset_copy / "models.toml", 'pipeline = "sdxl"', 'pipeline = "flux"')
    with pytest.raises(PresetError, match=re.escape("presets/models.toml: [sdxl].pipeline = 'flux' is not one of")):
        load_all(preset_copy)


def test_missing_family_section(preset_copy):
    text = (preset_copy / "general.toml").read_text()
    (preset_copy / "general.toml").write_text(text.split("[tiny-sd15]")[0])
    with pytest.raises(PresetError, match=re.escape("no section for families ['tiny-sd15']")):
        load_all(preset_copy)


def test_invalid_toml(preset_copy):
    (preset_copy / "general.toml").write_text("[sdxl\n")
    with pytest.raises(PresetError, match=re.escape("presets/general.toml: invalid TOML")):
        load_all(preset_copy)
