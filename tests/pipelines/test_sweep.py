"""A strength comparison in one batched pass: cells equal single renders, the reference is encoded once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import Engine, InvalidRequestError, build_request
from pipelines.codec import parse_strengths
from tests.conftest import pixels

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
CELL_TOLERANCE = 2  # max |difference| in 0-255 pixel values between a batched cell and a single render
# (batched and unbatched matrix kernels round differently; measured: at most 1 on the tiny families)


def fresh_reference(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((72, 96, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_cells_equal_single_renders(engines, presets, family, variant):
    preset = presets["general"][family]
    ref = fresh_reference(1)
    request = build_request(preset, prompt="a cat", seed=3, references=[ref], variant=variant)
    engine = engines[family]
    sweep = engine.generate_sweep(request.swept(STRENGTHS))

    d = sweep.diagnostics
    assert (d["encoder_calls"], d["unet_calls"], d["batches"], d["batch_size"]) == (1, request.settings.steps, 1, 5)
    none = pixels(engine.generate(build_request(preset, prompt="a cat", seed=3)).image)
    assert np.array_equal(pixels(sweep.images[0]), none)  # strength 0 in a sweep: exactly no image prompt
    for strength, cell, meta in zip(sweep.strengths, sweep.images, sweep.cell_metadata, strict=True):
        single = build_request(preset, prompt="a cat", seed=3, references=[ref], strength=strength, variant=variant)
        assert np.abs(pixels(engine.generate(single).image) - pixels(cell)).max() <= CELL_TOLERANCE
        assert meta["strength"] == strength
    assert np.abs(pixels(sweep.images[-1]) - none).mean() > 1.0
    assert sweep.metadata["strengths"] == STRENGTHS and sweep.metadata["strength"] is None


def test_large_sweeps_split_into_batches(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root, max_batch=2)
    request = build_request(presets["general"]["tiny"], prompt="x", seed=5, references=[fresh_reference(2)])
    split = engine.generate_sweep(request.swept(STRENGTHS))
    assert (split.diagnostics["batches"], split.diagnostics["unet_calls"]) == (3, 3 * request.settings.steps)
    assert split.diagnostics["encoder_calls"] == 1
    whole = Engine(families["tiny"], tiny_root=tiny_root, max_batch=8).generate_sweep(request.swept(STRENGTHS))
    for a, b in zip(split.images, whole.images, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= CELL_TOLERANCE


def test_repeated_reference_makes_no_encoder_call(engines, presets):
    request = build_request(presets["general"]["tiny"], prompt="x", references=[fresh_reference(3)])
    first = engines["tiny"].generate_sweep(request.swept([0.5, 1.0]))
    again = engines["tiny"].generate_sweep(request.swept([0.2]))
    assert (first.diagnostics["encoder_calls"], first.diagnostics["cache_hits"]) == (1, 0)
    assert (again.diagnostics["encoder_calls"], again.diagnostics["cache_hits"]) == (0, 1)
    plus = build_request(presets["general"]["tiny"], prompt="x", references=[fresh_reference(3)], variant="plus")
    assert engines["tiny"].generate(plus).diagnostics["encoder_calls"] == 1  # other features: a new entry


def test_cache_is_bounded(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root, embed_cache_size=2)
    preset = presets["general"]["tiny"]
    for seed in (10, 11, 12):
        engine.generate(build_request(preset, prompt="x", steps=1, references=[fresh_reference(seed)]))
    assert len(engine.encoder.cache) == 2
    again = engine.generate(build_request(preset, prompt="x", steps=1, references=[fresh_reference(10)]))
    assert again.diagnostics["encoder_calls"] == 1  # the oldest entry was evicted


def test_progress_spans_all_batches(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root, max_batch=2)
    request = build_request(presets["general"]["tiny"], prompt="x", steps=2, references=[fresh_reference(4)])
    seen = []
    engine.generate_sweep(request.swept([0.1, 0.2, 0.3]), on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0, 0.5,1", (0.0, 0.5, 1.0)), ([0.2, "0.4"], (0.2, 0.4)), ("", (0.0, 0.25, 0.5, 0.75, 1.0)), (None, None)],
)
def test_parse_strengths(presets, value, expected):
    preset = presets["general"]["tiny"]
    assert parse_strengths(value, preset) == (expected or preset.compare)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0, abc", "strengths must be a number"), ("0, 9", "strength = 9.0 is outside"), ([0.1] * 17, "1 to 16")],
)
def test_bad_strengths(presets, value, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_strengths(value, presets["general"]["tiny"])


@pytest.mark.parametrize("family_name", ["tiny", "tiny-sd15"])
def test_a_chunked_sweep_encodes_the_prompt_once(families, tiny_root, presets, gold, family_name):
    """Text embeddings are computed once per request and reused by every chunk of a sweep."""
    engine = Engine(families[family_name], tiny_root=tiny_root, max_batch=2)
    request = build_request(presets["general"][family_name], prompt="a vase", references=[gold], steps=2, seed=3)
    single = engine.generate(request).diagnostics["text_encoder_calls"]
    sweep = engine.generate_sweep(request.swept([0.0, 0.25, 0.5, 0.75, 1.0, 1.25]))
    assert sweep.diagnostics["batches"] == 3
    assert sweep.diagnostics["text_encoder_calls"] == single > 0  # one encode (per text tower), not one per chunk
    cell = engine.generate(build_request(presets["general"][family_name], prompt="a vase", references=[gold],
                                         steps=2, seed=3, strength=1.25)).image  # fmt: skip
    assert np.abs(np.asarray(cell, np.int16) - np.asarray(sweep.images[-1], np.int16)).max() <= 2
