"""FLUX.2 [klein] through the architecture seam (`tiny-flux2-klein`, references in context): strength 1 equals stock
Flux2KleinPipeline(image=[...]), strength 0 equals stock without that reference exactly, a sweep costs the denoiser
calls of one image with cells equal to single renders, and the tiny twin reads its references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import Engine, InvalidRequestError, build_request
from pipelines.codec import describe
from pipelines.settings import settings_of, validated_settings
from tests.conftest import pixels
from tests.pipelines.test_flux import stock_pipeline
from tests.pipelines.test_sweep import CELL_TOLERANCE

FAMILY = "tiny-flux2-klein"
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def engine(families, tiny_root):
    return Engine(families[FAMILY], tiny_root=tiny_root, max_batch=8)


@pytest.fixture(scope="module")
def preset(presets):
    return presets["general"][FAMILY]


@pytest.fixture(scope="module")
def stock(engine):
    return stock_pipeline(engine)


@pytest.fixture(scope="module")
def refs(gold, blue):
    """Three references of different sizes (one not a multiple of 16, one wide)."""
    ramp = np.tile(np.linspace(0, 255, 80).astype(np.uint8)[None, :, None], (72, 1, 3))
    return [gold, blue, Image.fromarray(ramp)]


def request(preset, **kwargs):
    return build_request(preset, **{"prompt": PROMPT, "seed": 4, **kwargs})


def slots_of(images, strengths):
    """Added reference prompts, one image each."""
    return {"slots": [{"mode": "general", "strength": s} for s in strengths], "slot_images": list(images)}


def stock_call(pipe, req, images, strength=None):
    s = req.settings
    kwargs = {} if strength is None else {"strength": strength}
    return pipe(image=images, prompt=s.prompt, num_inference_steps=s.steps, width=s.width, height=s.height,
                generator=torch.Generator("cpu").manual_seed(s.seed), **kwargs).images[0]  # fmt: skip


def test_text_only_equals_stock_klein(engine, preset, stock):
    ours = engine.generate(request(preset))
    assert np.array_equal(pixels(ours.image), pixels(stock_call(stock, request(preset), None)))
    assert ours.diagnostics["denoiser_calls"] == preset.steps.default  # step-distilled: one call per step


@pytest.mark.parametrize("count", [1, 3])
def test_strength_one_equals_stock_klein_with_those_references(engine, preset, stock, refs, count):
    req = request(preset, reference=refs[:1], strength=1.0, **slots_of(refs[1:count], [1.0] * (count - 1)))
    ours = engine.generate(req)
    theirs = stock_call(stock, req, refs[:count])
    assert np.abs(pixels(ours.image) - pixels(theirs)).max() <= 1
    assert ours.diagnostics["denoiser_calls"] == req.settings.steps  # at 1: the stock pass, no second branch
    # The equality fails when the stock call changes: another set of references (the tiny twin reads them).
    fewer = stock_call(stock, req, refs[: count - 1] or None)
    assert np.abs(pixels(ours.image) - pixels(fewer)).mean() > 2.0


def test_stock_klein_has_no_strength(stock, preset, refs):
    """What the issue starts from: the stock call has no strength keyword at all."""
    with pytest.raises(TypeError, match="strength"):
        stock_call(stock, request(preset), refs[:1], strength=0.5)


def test_strength_zero_is_exactly_the_image_without_that_reference(engine, preset, stock, refs):
    text_only = pixels(engine.generate(request(preset)).image)
    zero = engine.generate(request(preset, reference=refs[:1], strength=0.0))
    assert np.array_equal(pixels(zero.image), text_only)
    assert zero.diagnostics["denoiser_calls"] == preset.steps.default  # no branch runs for it
    # A slot at 0 beside the tab's own: exactly stock with the tab's reference alone (positions renumbered too).
    req = request(preset, reference=refs[:1], strength=1.0, **slots_of(refs[1:3], [0.0, 1.0]))
    ours = engine.generate(req)
    assert np.array_equal(pixels(ours.image), pixels(stock_call(stock, req, [refs[0], refs[2]])))


def test_the_tiny_twin_reads_its_references(engine, preset, refs):
    """A reference moves the image by several levels against none, and another reference moves it again."""
    none = pixels(engine.generate(request(preset)).image)
    one = pixels(engine.generate(request(preset, reference=refs[:1])).image)
    other = pixels(engine.generate(request(preset, reference=refs[1:2])).image)
    assert np.abs(one - none).mean() > 3.0
    assert np.abs(other - one).mean() > 3.0


def test_strength_between_and_above_is_image_guidance(engine, preset, refs):
    """At s, v = v(none) + s (v(ref) - v(none)): two calls per step, and the image moves monotonically away from
    the text-only one as the strength grows."""
    none = pixels(engine.generate(request(preset)).image)
    full = pixels(engine.generate(request(preset, reference=refs[:1], strength=1.0)).image)
    distances = []
    for s in (0.5, 1.5, 2.0):
        result = engine.generate(request(preset, reference=refs[:1], strength=s))
        assert result.diagnostics["denoiser_calls"] == 2 * preset.steps.default
        distances.append(np.abs(pixels(result.image) - none).mean())
    assert distances[0] < np.abs(full - none).mean() < distances[1] < distances[2]


def test_a_sweep_takes_the_denoiser_calls_of_one_image(engine, preset, refs):
    strengths = [0.0, 0.5, 1.0, 1.5, 2.0]
    sweep = engine.generate_sweep(request(preset, reference=refs[:1]).swept(strengths))
    assert sweep.diagnostics["denoiser_calls"] == 2 * preset.steps.default and sweep.diagnostics["batches"] == 1
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = engine.generate(request(preset, reference=refs[:1], strength=strength)).image
        assert np.abs(pixels(single) - pixels(cell)).max() <= CELL_TOLERANCE


def test_a_two_reference_grid_is_one_pass(engine, preset, refs):
    """Two reference prompts swept against each other: per step one call with both, one without each (cells whose
    other prompt is not at 1), and, for a row at 0, the image without both: each cell as its single render makes it."""
    req = request(preset, reference=refs[:1], **slots_of(refs[1:2], [1.0]))
    for rows, calls in (([0.5, 1.0, 2.0], 3), ([0.0, 1.0, 2.0], 4)):
        grid = engine.generate_sweep(req.swept(rows, [0.5, 1.0]))
        assert len(grid.images) == 6 and grid.diagnostics["denoiser_calls"] == calls * preset.steps.default
        assert grid.diagnostics["batches"] == 1
        for (a, b), cell in zip([(a, b) for a in rows for b in (0.5, 1.0)], grid.images, strict=True):
            one = request(preset, reference=refs[:1], strength=a, **slots_of(refs[1:2], [b]))
            assert np.abs(pixels(engine.generate(one).image) - pixels(cell)).max() <= CELL_TOLERANCE


def test_a_window_leaves_the_reference_out_of_the_other_steps(engine, preset, stock, refs):
    """stop_at 0.5: the reference acts on the first half of the steps; the image lies between none and always."""
    none = pixels(engine.generate(request(preset)).image)
    always = pixels(engine.generate(request(preset, reference=refs[:1])).image)
    half = pixels(engine.generate(request(preset, reference=refs[:1], stop_at=0.5)).image)
    assert not np.array_equal(half, always) and not np.array_equal(half, none)


def test_reference_latents_are_encoded_once_per_visitor(engine, preset, refs):
    engine.generate(request(preset, reference=refs[:1]), scope="visitor-a")
    before = engine.counters["encoder_calls"]
    engine.generate_sweep(request(preset, reference=refs[:1]).swept([0.5, 1.0]), scope="visitor-a")
    assert engine.counters["encoder_calls"] == before
    engine.generate(request(preset, reference=refs[:1]), scope="visitor-b")
    assert engine.counters["encoder_calls"] == before + 1


def test_metadata_previews_and_settings_round_trip(engine, preset, refs):
    req = request(preset, reference=refs[2:3], strength=1.25, steps=3)
    result = engine.generate(req)
    assert result.metadata["model_family"] == FAMILY
    assert result.metadata["adapter"] == engine.family.adapters["reference"].id
    assert [p.size for p in result.previews] == [(80, 64)]  # cropped to a multiple of 16, as the model reads it
    restored = validated_settings(preset, settings_of(req))
    keywords = {k: v for k, v in restored.items() if not k.startswith("extra_")}
    assert describe(build_request(preset, **keywords, reference=refs[2:3])) == describe(req)


def test_a_negative_prompt_is_said_to_be_left_out(engine, preset):
    plain = engine.generate(request(preset))
    told = engine.generate(request(preset, negative_prompt="blurry"))
    assert np.array_equal(pixels(plain.image), pixels(told.image))
    assert any("reads no negative prompt" in w for w in told.warnings)
    assert not any("negative prompt" in w for w in plain.warnings)


def test_what_klein_does_not_take_is_refused_clearly(engine, preset, refs, gold):
    with pytest.raises(InvalidRequestError, match="at most 4 reference images"):
        engine.generate(request(preset, reference=[gold] * 3, **slots_of(refs[1:3], [1.0, 1.0])))
    with pytest.raises(InvalidRequestError, match="take no negative images"):
        engine.generate(request(preset, reference=[gold], negative_reference=[refs[1]]))
    with pytest.raises(InvalidRequestError, match="cannot read that reference: Image too small"):
        engine.generate(request(preset, reference=[Image.new("RGB", (48, 48))]))
    with pytest.raises(InvalidRequestError, match="region"):
        request(preset, reference=[gold], region="left")


def test_a_scored_comparison_on_klein(engine, preset, gold):
    sweep = engine.generate_sweep(request(preset, reference=[gold], steps=2).swept([0.0, 1.0]), score=True)
    assert [s["strength"] for s in sweep.scores] == [0.0, 1.0]
    assert all(-1 <= s["likeness"] <= 1 and -1 <= s["adherence"] <= 1 for s in sweep.scores)
    assert sweep.suggested is not None


# ---------------------------------------------------------------------------------------- 9B-KV (tiny twin)

KV = "tiny-flux2-klein-kv"


@pytest.fixture(scope="module")
def kv_engine(families, tiny_root):
    return Engine(families[KV], tiny_root=tiny_root, max_batch=8)


@pytest.fixture(scope="module")
def kv_preset(presets):
    return presets["general"][KV]


def extracts(engine):
    """Counts the transformer's calls that compute the references' keys and values (`kv_cache_mode="extract"`)."""
    seen = {"n": 0}

    def hook(module, args, kwargs):
        seen["n"] += kwargs.get("kv_cache_mode") == "extract"

    engine.load()
    engine.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("count", [1, 3])
def test_kv_at_strength_one_equals_stock_klein_kv(kv_engine, kv_preset, refs, count):
    kv_engine.load()
    assert type(kv_engine.pipe).__name__ == "Flux2KleinKVPipeline"
    stock = stock_pipeline(kv_engine)
    req = request(kv_preset, reference=refs[:1], **slots_of(refs[1:count], [1.0] * (count - 1)))
    ours = pixels(kv_engine.generate(req).image)
    assert np.abs(ours - pixels(stock_call(stock, req, refs[:count]))).max() <= 1
    assert np.abs(ours - pixels(stock_call(stock, req, refs[: count - 1] or None))).mean() > 2.0
    zero = kv_engine.generate(request(kv_preset, reference=refs[:1], strength=0.0))
    assert np.array_equal(pixels(zero.image), pixels(stock_call(stock, req, None)))


def test_a_kv_sweep_computes_the_references_keys_once(kv_engine, kv_preset, refs):
    """One extraction per reference branch for the whole sweep (every cell and step reuses it); cells = singles."""
    seen = extracts(kv_engine)
    strengths = [0.0, 0.5, 1.0, 2.0]
    sweep = kv_engine.generate_sweep(request(kv_preset, reference=refs[:2]).swept(strengths))
    assert seen["n"] == 1 and sweep.diagnostics["denoiser_calls"] == 2 * kv_preset.steps.default
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = kv_engine.generate(request(kv_preset, reference=refs[:2], strength=strength)).image
        assert np.abs(pixels(single) - pixels(cell)).max() <= CELL_TOLERANCE
    assert seen["n"] == 1 + 3  # each single render with the references extracts once (0 has none)
