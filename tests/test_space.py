"""The README's Space front matter, the pins and the presets agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def front_matter() -> dict[str, object]:
    """A small reader for the README's YAML header (keys, scalars and lists of scalars)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "README.md must start with a --- YAML front matter block"
    data: dict[str, object] = {}
    key = None
    for line in match.group(1).splitlines():
        if line.startswith("  - "):
            data.setdefault(key, []).append(line[4:].strip())
        else:
            key, _, value = line.partition(":")
            value = value.strip().strip('"')
            data[key] = value if value else []
    return data


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pairs = (line.split("==") for line in lines if "==" in line)
    return {name.split("[")[0]: version for name, version in pairs}  # "gradio[mcp]" pins gradio


def test_space_metadata_matches_the_pins():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == pins()["gradio"]
    assert meta["python_version"] == "3.11"
    for key in ("title", "license", "short_description", "suggested_hardware"):
        assert meta[key], key
    assert len(meta["short_description"]) <= 60  # the Hub's limit


def test_every_checkpoint_is_listed(families):
    meta = front_matter()
    models = set(meta["models"])
    preload = {}
    for entry in meta["preload_from_hub"]:
        repo, _, files = entry.partition(" ")
        preload[repo] = set(files.split(",")) if files else None
    for family in (f for f in families.values() if f.source == "hub"):
        for repo, _ in family.hub_checkpoints():
            assert repo in models, f"{repo} (family {family.name}) is missing from the README's models:"
    space = families["sdxl"]  # what a GPU Space runs by default
    for repo, file in space.hub_checkpoints():
        if repo in space.alt_bases.values():
            continue  # an alternative base downloads when a person switches to it
        assert repo in preload, f"{repo} is not preloaded"
        files = preload[repo]
        if file is None:
            assert "model_index.json" in files or "config.json" in files
            variant = space.weights_variant if repo == space.base else None
            if variant:
                assert f"unet/diffusion_pytorch_model.{variant}.safetensors" in files
        elif file.endswith("/"):
            assert {file + "config.json", file + "model.safetensors"} <= files
        else:
            assert file in files, f"{repo}/{file} is not preloaded"


@pytest.mark.parametrize("name", ["torch", "gradio", "diffusers", "transformers", "insightface", "onnxruntime-gpu"])
def test_pins_are_exact(name):
    assert re.fullmatch(r"\d+(\.\d+)+", pins()[name])
    assert "onnxruntime" not in pins()  # onnxruntime-gpu alone: both packages share one import folder
