"""The PNG carries everything needed to reproduce it, and reproducing it gives the same pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines import build_request
from pipelines.images import load_reference
from pipelines.metadata import PNG_KEY, read_png_metadata, save_png


def test_png_metadata_round_trips_and_reproduces(engines, presets, gold, tmp_path):
    preset = presets["general"]["tiny"]
    request = build_request(preset, prompt="gold vase", references=[gold], strength=0.7, seed=11, variant="plus")
    result = engines["tiny"].generate(request)
    path = save_png(result.image, result.metadata, tmp_path / "out.png")

    meta = read_png_metadata(path)
    assert meta == result.metadata
    assert Image.open(path).text[PNG_KEY]  # a tEXt chunk named image_prompt
    assert meta["mode"] == "general" and meta["prompt"] == "gold vase" and meta["seed"] == 11
    assert (meta["strength"], meta["steps"], meta["guidance"], meta["width"], meta["height"]) == (0.7, 4, 5.0, 64, 64)
    assert meta["references_sha256"] == [load_reference(gold).sha256]
    assert meta["adapter"] == "tiny-ip-adapter/sdxl_models/ip-adapter-plus_sdxl.safetensors"
    assert meta["base_model"] == "tiny-sdxl" and meta["model_family"] == "tiny"
    assert {"torch", "diffusers", "transformers", "pillow"} <= set(meta["packages"])

    keys = ("prompt", "negative_prompt", "strength", "variant", "seed", "steps", "guidance", "width", "height")
    again = build_request(preset, references=[gold], **{k: meta[k] for k in keys})
    repeat = engines["tiny"].generate(again)
    assert np.array_equal(np.asarray(repeat.image), np.asarray(Image.open(path)))


def test_png_without_metadata(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_png_metadata(tmp_path / "plain.png") is None
