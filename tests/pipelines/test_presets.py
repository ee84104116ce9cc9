"""Presets are data, validated at start-up with messages that name file, key, value and the allowed range."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipelines import PresetError, load_families, load_mode_presets
from pipelines.presets import MODES, PRESET_DIR


def test_shipped_presets_are_valid(families, presets):
    assert {"sdxl", "sd15", "tiny", "tiny-sd15", "flux", "tiny-flux"} <= set(families)
    for mode in MODES:
        assert set(presets[mode]) == {name for name, f in families.items() if mode in f.modes}
    assert families["flux"].modes == ("general",) and presets["general"]["flux"].variants == ("xlabs", "redux")
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
    edit(
        preset_copy / "general.toml",
        "[tiny]\n",
        "[sdxl]\nstrength = { default = 3.0, min = 0.0, max = 1.5, step = 0.05 }\n\n[tiny]\n",
    )
    with pytest.raises(
        PresetError, match=re.escape("presets/general.toml: [sdxl].strength.default = 3.0 is outside [0.0, 1.5]")
    ):
        load_all(preset_copy)


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("general.toml", 'variant = "plain"', 'variant = "huge"',
         "presets/general.toml: [default].variant = 'huge' is not one of ['plain', 'plus']"),
        ("models.toml", "steps = { default = 30,", "steps = { default = 30.5,",
         "presets/models.toml: [sdxl.defaults].steps.default = 30.5 must be an integer"),
        ("models.toml", "width = { default = 1024, min = 512, max = 1536",
         "width = { default = 1024, min = 512, max = 9000",
         "presets/models.toml: [sdxl.defaults].width bounds [512, 9000] must lie inside [32, 2048]"),
        ("general.toml", "[tiny]\n", "[tiny]\ncolour = 1\n",
         "presets/general.toml: [tiny] has unknown keys ['colour']"),
        ("models.toml", "max_pixels = 1572864", "max_pixels = 5",
         "presets/models.toml: [sdxl.defaults].max_pixels = 5 must be an integer in [1024, 4194304]"),
        ("general.toml", 'variants = ["plain", "plus"]', 'variants = ["plain", "mega"]',
         "presets/general.toml: [default].variants names 'mega'"),
        ("face.toml", '[tiny]\nvariant = "faceid"', '[tiny]\nvariant = "plain"',
         "presets/face.toml: [tiny].variant = 'plain' is not one of ['faceid', 'faceid-plusv2']"),
        ("anime.toml", "compare = [0.0, 0.35", "compare = [9.0, 0.35",
         "presets/anime.toml: [default].compare = [9.0, 0.35, 0.5, 0.7, 0.9] must be 1 to 16 numbers inside"),
    ],
)  # fmt: skip
def test_preset_errors_name_the_table_each_key_came_from(preset_copy, file, old, new, message):
    edit(preset_copy / file, old, new)
    with pytest.raises(PresetError, match=re.escape(message)):
        load_all(preset_copy)


def test_a_family_section_overrides_whole_keys_of_the_default(preset_copy, presets):
    assert presets["anime"]["sdxl"].steps.default == 28 and presets["anime"]["tiny"].steps.default == 4  # [default]
    assert presets["general"]["sdxl"].steps.default == 30  # models.toml's family defaults
    assert presets["face"]["tiny"].variant == "faceid" and presets["face"]["sdxl"].variant == "faceid-plusv2"
    assert presets["style"]["sd15"].block_maps["style"] == {"up": {"block_1": [0.0, 1.0, 0.0]}}


def test_a_family_offers_only_its_modes(preset_copy):
    edit(preset_copy / "models.toml", 'base = "tiny-sd15"\nmodes = ["general", "face", "anime", "style"]',
         'base = "tiny-sd15"\nmodes = ["general", "style"]')  # fmt: skip
    with pytest.raises(PresetError, match=re.escape("face.toml: [tiny-sd15] is here, but models.toml says")):
        load_all(preset_copy)
    for mode in ("face", "anime"):
        text = (preset_copy / f"{mode}.toml").read_text()
        (preset_copy / f"{mode}.toml").write_text(text.split("[tiny-sd15]")[0])
    loaded = load_all(preset_copy)
    assert "tiny-sd15" not in loaded["face"] and "tiny-sd15" in loaded["general"]


def test_models_errors(preset_copy):
    edit(preset_copy / "models.toml", 'pipeline = "sdxl"', 'pipeline = "sd3"')
    with pytest.raises(PresetError, match=re.escape("presets/models.toml: [sdxl].pipeline = 'sd3' is not one of")):
        load_all(preset_copy)


def test_invalid_toml(preset_copy):
    (preset_copy / "general.toml").write_text("[sdxl\n")
    with pytest.raises(PresetError, match=re.escape("presets/general.toml: invalid TOML")):
        load_all(preset_copy)
