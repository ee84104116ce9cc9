"""The engine's exact behaviour on the tiny families (SDXL-shaped and SD1.5-shaped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from pipelines import Engine, ModelNotAvailableError, build_request
from pipelines.presets import FamilySpec
from tests.conftest import pixels


def render(engines, presets, family, **kwargs):
    request = build_request(presets["general"][family], **{"prompt": "a vase on a table", "seed": 7, **kwargs})
    return engines[family].generate(request)


def direct_pipeline(engine: Engine):
    """A plain diffusers pipeline from the same folder, with no adapter ever loaded."""
    cls = StableDiffusionXLPipeline if engine.family.pipeline == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(engine.source.resolve(engine.family.base), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def direct_call(pipe, request, **kwargs):
    return pipe(
        prompt=request.settings.prompt,
        negative_prompt=request.settings.negative_prompt,
        num_inference_steps=request.settings.steps,
        guidance_scale=request.settings.guidance,
        width=request.settings.width,
        height=request.settings.height,
        generator=torch.Generator("cpu").manual_seed(request.settings.seed),
        **kwargs,
    ).images[0]


def test_strength_zero_equals_no_image_prompt(engines, presets, family, gold):
    without = render(engines, presets, family)
    zero = render(engines, presets, family, references=[gold], strength=0.0)
    assert np.array_equal(pixels(without.image), pixels(zero.image))
    # ... and "no image prompt" is exactly stock diffusers without any adapter.
    request = build_request(presets["general"][family], prompt="a vase on a table", seed=7)
    stock = direct_call(direct_pipeline(engines[family]), request)
    assert np.array_equal(pixels(without.image), pixels(stock))


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_nonzero_strength_changes_pixels(engines, presets, family, gold, variant):
    without = pixels(render(engines, presets, family).image)
    with_ref = pixels(render(engines, presets, family, references=[gold], strength=0.8, variant=variant).image)
    assert np.abs(without - with_ref).mean() > 1.0


def test_same_inputs_same_pixels(engines, presets, family, gold):
    first = render(engines, presets, family, references=[gold], strength=0.6)
    render(engines, presets, family, references=[gold], strength=1.2, variant="plus", seed=3)  # something between
    second = render(engines, presets, family, references=[gold], strength=0.6)
    assert np.array_equal(pixels(first.image), pixels(second.image))


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_matches_stock_diffusers_ip_adapter(engines, presets, family, gold, variant):
    """Our embeddings, cached adapters and per-sample scale give stock `ip_adapter_image` results."""
    engine = engines[family]
    ours = render(engines, presets, family, references=[gold], strength=0.7, variant=variant)
    spec = engine.family.adapters[variant]
    pipe = direct_pipeline(engine)
    pipe.load_ip_adapter(
        engine.source.resolve(spec.repo),
        subfolder=spec.subfolder,
        weight_name=spec.weight_name,
        image_encoder_folder=spec.image_encoder.subfolder,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(0.7)
    request = build_request(presets["general"][family], prompt="a vase on a table", seed=7, references=[gold])
    stock = direct_call(pipe, request, ip_adapter_image=gold)
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1


def test_several_references_combine(engines, presets, family, gold, blue):
    one = pixels(render(engines, presets, family, references=[gold], strength=1.0).image)
    two = pixels(render(engines, presets, family, references=[gold, blue], strength=1.0).image)
    swapped = pixels(render(engines, presets, family, references=[blue, gold], strength=1.0).image)
    assert np.abs(one - two).mean() > 0.5
    assert np.abs(two - swapped).max() <= 1  # one image prompt: the order of references does not matter


def test_variant_switch_keeps_base_and_reads_no_disk(families, tiny_root, presets, gold, monkeypatch):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    engine.use_variant("plain")
    engine.use_variant("plus")
    loads = dict(engine.counters)

    def no_disk(*args, **kwargs):
        raise AssertionError("a variant switch read from disk")

    import diffusers.loaders.ip_adapter as ip_loader

    monkeypatch.setattr(ip_loader, "_get_model_file", no_disk)
    monkeypatch.setattr(ip_loader, "safe_open", no_disk)
    for variant in ["plain", "plus", "plain", None, "plus"]:
        engine.use_variant(variant)
    request = build_request(presets["general"]["tiny"], prompt="x", references=[gold], variant="plain")
    engine.generate(request)
    assert engine.counters["base_loads"] == loads["base_loads"] == 1
    assert engine.counters["adapter_loads"] == loads["adapter_loads"] == 2


def test_diagnostics_count_real_work(engines, presets):
    fresh = Image.new("RGB", (40, 30), (1, 2, 3))  # a reference no other test uses
    first = render(engines, presets, "tiny", references=[fresh], steps=3)
    assert first.diagnostics["unet_calls"] == 3  # guidance batches uncond and cond into one call per step
    assert (first.diagnostics["encoder_calls"], first.diagnostics["cache_hits"]) == (1, 0)
    assert first.diagnostics["batch_size"] == 1
    again = render(engines, presets, "tiny", references=[fresh], steps=3, strength=0.9)
    assert (again.diagnostics["encoder_calls"], again.diagnostics["cache_hits"]) == (0, 1)


def test_progress_follows_steps(engines, presets, gold):
    seen = []
    request = build_request(presets["general"]["tiny"], prompt="x", references=[gold], steps=5)
    engines["tiny"].generate(request, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_missing_checkpoint_names_repo_and_offline_option(tiny_root):
    family = FamilySpec(name="sdxl", pipeline="sdxl", source="hub", base="nobody/no-such-model", adapters={})
    with pytest.raises(ModelNotAvailableError) as err:
        Engine(family, device="cpu").load()
    assert "nobody/no-such-model" in str(err.value)
    assert "--models tiny" in str(err.value)


def test_prompt_warnings_never_wait_for_a_render(engines, presets):
    """The length check runs outside the engine lock, on a bounded prefix of the prompt."""
    import threading

    engine = engines["tiny"]
    request = build_request(presets["general"]["tiny"], prompt="word " * 399)
    done = threading.Event()
    with engine.lock:  # a render in progress
        worker = threading.Thread(target=lambda: (engine.prompt_warnings(request), done.set()))
        worker.start()
        assert done.wait(timeout=10)
    (warning,) = engine.prompt_warnings(request)
    assert warning.startswith("The prompt is over ") and "the text encoder reads 75" in warning


def test_cached_work_is_kept_apart_per_visitor(engines, presets, gold):
    """One visitor's cache hits (and their speed) say nothing about another visitor's photos."""
    engine = engines["tiny"]
    request = build_request(presets["general"]["tiny"], prompt="x", references=[gold], steps=1, seed=5)
    first = engine.generate(request, scope="visitor-a")
    other = engine.generate(request, scope="visitor-b")
    again = engine.generate(request, scope="visitor-a")
    assert (first.diagnostics["encoder_calls"], other.diagnostics["encoder_calls"]) == (1, 1)
    assert other.diagnostics["cache_hits"] == 0
    assert again.diagnostics["cache_hits"] == 1 and again.diagnostics["encoder_calls"] == 0
    assert np.array_equal(pixels(first.image), pixels(other.image))


def test_pixels_do_not_depend_on_the_thread_that_runs_them(engines, presets, family, gold):
    """torch keeps its CPU thread count per OS thread: a server worker thread set to another count would sum in
    another order. The engine pins the count whenever it computes (1 vs 2 threads moved a pixel by one level)."""
    import threading

    engine = engines[family]
    request = build_request(presets["general"][family], prompt="a vase", reference=[gold], seed=7)
    solo = pixels(engine.generate(request).image)
    seen: list[int] = []
    hook = engine.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    out: dict[str, np.ndarray] = {}

    def worker() -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # a thread whose count differs (what a library or a pool may leave behind)
        try:
            out["image"] = pixels(engine.generate(request).image)
        finally:
            torch.set_num_threads(before)

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    finally:
        hook.remove()
    assert seen and set(seen) == {engine.lock.threads}
    assert np.array_equal(out["image"], solo)


def test_only_the_architecture_modules_name_the_unet():
    """The seam: the runner, adapter bank, slot kinds and model source reach the denoiser through `pipelines/arch/`
    (the offline builders build UNets and may name them)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipelines"
    pattern = r"\.unet\b|StableDiffusion(XL)?Pipeline\b"
    naming = {p.relative_to(root).parts[0] for p in root.rglob("*.py") if re.search(pattern, p.read_text())}
    assert naming <= {"arch", "offline"}, naming


def test_diagnostics_name_the_denoiser_calls(engines, presets, family, gold):
    result = render(engines, presets, family, references=[gold])
    d = result.diagnostics
    assert d["denoiser_calls"] == d["unet_calls"] == presets["general"][family].steps.default
