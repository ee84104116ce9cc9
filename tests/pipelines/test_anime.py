"""Anime-character mode: prompt templates, Plus + Plus-Face on a face close-up, and an alternative base."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import Engine, InvalidRequestError, build_request
from tests.conftest import pixels


@pytest.fixture
def anime(presets):
    return presets["anime"]["tiny"]


def face() -> Image.Image:
    return Image.new("RGB", (40, 40), (250, 200, 180))


def test_prompt_template(anime):
    request = build_request(anime, prompt="in a night market")
    assert request.settings.full_prompt == "in a night market, anime style"
    assert request.settings.prompt == "in a night market"  # metadata keeps what the person wrote
    assert build_request(anime, prompt="").settings.full_prompt == "anime style"


def test_plus_face_needs_a_close_up(engines, anime, gold):
    request = build_request(anime, prompt="x", references=[gold], variant="plus+plus-face")
    with pytest.raises(InvalidRequestError, match="needs a face close-up"):
        engines["tiny"].generate(request)


def test_plus_face_uses_the_close_up(engines, anime, gold):
    engine = engines["tiny"]
    plus = engine.generate(build_request(anime, prompt="x", seed=2, references=[gold]))
    both = engine.generate(
        build_request(anime, prompt="x", seed=2, references=[gold], face_references=[face()], variant="plus+plus-face")
    )
    assert np.abs(pixels(plus.image) - pixels(both.image)).mean() > 0.5
    assert both.metadata["adapter"].count("ip-adapter-plus") == 2 and "plus-face" in both.metadata["adapter"]
    assert both.metadata["face_references_sha256"]
    assert both.diagnostics["encoder_calls"] <= 2
    again = engine.generate(
        build_request(anime, prompt="x", seed=2, references=[gold], face_references=[face()], variant="plus+plus-face")
    )
    assert again.diagnostics["encoder_calls"] == 0 and np.array_equal(pixels(again.image), pixels(both.image))


def test_base_swap_keeps_adapters_in_memory(families, tiny_root, anime, gold, monkeypatch):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    request = build_request(anime, prompt="x", seed=2, references=[gold])
    default = pixels(engine.generate(request).image)
    loads = engine.counters["adapter_loads"]

    import diffusers.loaders.ip_adapter as ip_loader

    monkeypatch.setattr(ip_loader, "_get_model_file", lambda *a, **k: pytest.fail("adapter re-read from disk"))
    on_anime = build_request(anime, prompt="x", seed=2, references=[gold], base="anime")
    swapped = engine.generate(on_anime)
    assert engine.generate(on_anime).metadata == swapped.metadata  # already in use: nothing reloads
    assert engine.counters["base_loads"] == 2 and engine.counters["adapter_loads"] == loads
    assert swapped.metadata["base_model"] == "tiny-sdxl-anime" and swapped.metadata["base"] == "anime"
    assert swapped.diagnostics["base"] == "anime"
    assert np.abs(pixels(swapped.image) - default).mean() > 1.0
    assert engine.loaded_bases == ["anime"]  # --max-bases 1: one base in memory at a time
    assert np.array_equal(pixels(engine.generate(request).image), default)
    assert engine.counters["base_loads"] == 3
    with pytest.raises(InvalidRequestError, match="base 'pony' is not one of"):
        build_request(anime, prompt="x", base="pony")


def test_two_bases_kept_in_memory_swap_without_loading(families, tiny_root, anime, gold):
    engine = Engine(families["tiny"], tiny_root=tiny_root, max_bases=2)
    requests = [build_request(anime, prompt="x", seed=2, references=[gold], base=b) for b in ("default", "anime")]
    first = [pixels(engine.generate(r).image) for r in requests]
    again = [pixels(engine.generate(r).image) for r in reversed(requests)][::-1]
    assert engine.counters["base_loads"] == 2 and sorted(engine.loaded_bases) == ["anime", "default"]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
