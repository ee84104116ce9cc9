"""Fast mode: a few-step LoRA toggled like the FaceID LoRA, its own steps, guidance and scheduler per request."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines import Engine, build_request
from pipelines.errors import InvalidRequestError
from pipelines.settings import parse_settings, validated_settings
from pipelines.sources import ModelSource
from tests.conftest import assert_solo_results_under_concurrency, pixels
from tests.pipelines.test_engine import direct_call, direct_pipeline

PROMPT = "a vase on a table"


def request(presets, family, **kwargs):
    return build_request(presets["general"][family], **{"prompt": PROMPT, "seed": 3, **kwargs})


def rows_per_call(engine, fn):
    """The UNet's batch rows at each call while `fn` runs."""
    seen = []
    hook = engine.pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_fast_uses_the_loras_steps_without_guidance(engines, presets, family, gold):
    engine = engines[family]
    fast = engine.family.fast
    req = request(presets, family, reference=[gold], speed="fast", steps=20, guidance=7)
    assert (req.settings.steps, req.settings.guidance) == (
        fast.steps,
        fast.guidance,
    )  # the LoRA's sampling, not the sliders'
    result = []
    rows = rows_per_call(engine, lambda: result.append(engine.generate(req)))
    assert rows == [1] * fast.steps  # one row per image: no classifier-free guidance doubling
    meta = result[0].metadata
    assert (meta["speed"], meta["fast_lora"], meta["scheduler"], meta["steps"]) == (
        "fast",
        fast.id,
        fast.scheduler,
        fast.steps,
    )
    assert rows_per_call(engine, lambda: engine.generate(request(presets, family, reference=[gold]))) == [2] * 4


def test_fast_strength_zero_is_fast_text_only_and_equals_stock_diffusers(engines, presets, family, gold):
    engine = engines[family]
    fast = engine.family.fast
    text_only = pixels(engine.generate(request(presets, family, speed="fast")).image)
    zero = pixels(engine.generate(request(presets, family, reference=[gold], strength=0.0, speed="fast")).image)
    assert np.array_equal(zero, text_only)
    # Stock diffusers as the LoRA's model card runs it: load_lora_weights, the scheduler from the base's config with
    # trailing timesteps, guidance 0, the LoRA's steps.
    import diffusers

    pipe = direct_pipeline(engine)
    pipe.load_lora_weights(engine.source.resolve(fast.repo), weight_name=fast.weight_name, adapter_name="fast")
    pipe.scheduler = getattr(diffusers, fast.scheduler).from_config(
        pipe.scheduler.config, timestep_spacing=fast.timestep_spacing
    )
    req = request(presets, family, speed="fast")
    stock = direct_call(pipe, req)
    assert np.abs(text_only - pixels(stock)).max() <= 1
    quality = pixels(engine.generate(request(presets, family, steps=fast.steps, guidance=1.0)).image)
    assert np.abs(text_only - quality).mean() > 0.3  # the LoRA and the scheduler do act


def test_fast_comparison_is_one_pass_with_cells_equal_to_singles(engines, presets, gold):
    engine, family = engines["tiny-sd15"], "tiny-sd15"
    req = request(presets, family, reference=[gold], strengths="0, 0.5, 1", speed="fast")
    sweep = engine.generate_sweep(req)
    assert sweep.diagnostics["unet_calls"] == engine.family.fast.steps
    for image, s in zip(sweep.images, sweep.strengths, strict=True):
        single = engine.generate(request(presets, family, reference=[gold], strength=s, speed="fast"))
        assert np.abs(pixels(image) - pixels(single.image)).max() <= 2
    assert np.abs(pixels(sweep.images[0]) - pixels(sweep.images[2])).mean() > 0.5


def test_switching_quality_and_fast_reads_nothing_from_disk(families, tiny_root, presets, gold, monkeypatch):
    engine = Engine(families["tiny"], tiny_root=tiny_root, max_batch=8)
    first = {
        speed: pixels(engine.generate(request(presets, "tiny", reference=[gold], speed=speed)).image)
        for speed in ("quality", "fast")
    }
    loads = (engine.counters["base_loads"], engine.counters["adapter_loads"], engine.counters["fast_lora_reads"])

    def no_disk(*args, **kwargs):
        raise AssertionError("read from disk")

    monkeypatch.setattr(ModelSource, "lora_file", no_disk)
    monkeypatch.setattr("diffusers.loaders.lora_base._fetch_state_dict", no_disk)
    for speed in ("quality", "fast", "quality", "fast"):
        again = pixels(engine.generate(request(presets, "tiny", reference=[gold], speed=speed)).image)
        assert np.array_equal(again, first[speed]), speed
    assert loads == (1, 1, 1)
    assert engine.counters["base_loads"] == 1 and engine.counters["fast_lora_reads"] == 1


def test_concurrent_quality_and_fast_requests_get_their_solo_results(engines, presets, gold):
    engine = engines["tiny"]
    reqs = [request(presets, "tiny", reference=[gold], speed=s, seed=i) for i, s in enumerate(["quality", "fast"] * 2)]
    assert_solo_results_under_concurrency(engine, reqs)


def test_a_fast_png_reloads_into_fast_mode(engines, presets, gold):
    result = engines["tiny"].generate(request(presets, "tiny", reference=[gold], speed="fast"))
    mode, values = parse_settings(result.metadata)
    assert mode == "general" and validated_settings(presets["general"]["tiny"], values)["speed"] == "fast"


def test_fast_mode_errors(presets):
    with pytest.raises(InvalidRequestError, match=r"speed 'turbo' is not one of \['quality', 'fast'\]"):
        request(presets, "tiny", speed="turbo")
    without = dataclasses.replace(presets["general"]["tiny"], fast=None)
    with pytest.raises(InvalidRequestError, match="model family 'tiny' has no fast mode"):
        build_request(without, prompt="x", speed="fast")


def test_the_lora_follows_a_base_swap_from_memory(families, tiny_root, presets, gold):
    engine = Engine(families["tiny"], tiny_root=tiny_root, max_batch=8)
    anime = presets["anime"]["tiny"]
    for base in ("default", "anime", "default"):
        engine.generate(build_request(anime, prompt="x", reference=[gold], seed=1, base=base, speed="fast"))
    assert engine.counters["base_loads"] == 3 and engine.counters["fast_lora_reads"] == 1
    with torch.no_grad():
        assert "fast" in engine.pipe.unet.peft_config  # on the base in use now


def test_attention_stats_record_without_changing_pixels(engines, presets, gold):
    from pipelines.attention import attention_stats

    engine = engines["tiny"]
    req = request(presets, "tiny", reference=[gold], strength=0.5)
    plain = pixels(engine.generate(req).image)
    with attention_stats() as records:
        measured = pixels(engine.generate(req).image)
    assert np.array_equal(plain, measured) and records
    assert all(image > 0 and text > 0 for _, image, text in records)
