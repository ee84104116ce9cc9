"""FLUX through the architecture seam (`tiny-flux`, XLabs IP-Adapter): exact at strength 0, equal to stock
FluxPipeline with the adapter loaded and its per-layer scales set, a sweep in the denoiser calls of one image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import Engine, InvalidRequestError, build_request
from pipelines.codec import describe
from pipelines.images import load_reference
from pipelines.settings import settings_of, validated_settings
from tests.conftest import pixels
from tests.pipelines.test_sweep import CELL_TOLERANCE

FAMILY = "tiny-flux"
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def engine(families, tiny_root):
    return Engine(families[FAMILY], tiny_root=tiny_root, max_batch=8)


@pytest.fixture(scope="module")
def preset(presets):
    return presets["general"][FAMILY]


def request(preset, **kwargs):
    return build_request(preset, **{"prompt": PROMPT, "seed": 4, **kwargs})


def stock_pipeline(engine):
    pipe = engine.arch.pipeline_class().from_pretrained(
        engine.source.resolve(engine.family.base), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_call(pipe, req, **kwargs):
    s = req.settings
    return pipe(prompt=s.prompt, num_inference_steps=s.steps, guidance_scale=s.guidance, width=s.width,
                height=s.height, generator=torch.Generator("cpu").manual_seed(s.seed), **kwargs).images[0]  # fmt: skip


def test_text_only_and_strength_zero_equal_stock_flux(engine, preset, gold):
    text_only = engine.generate(request(preset))
    zero = engine.generate(request(preset, reference=[gold], strength=0.0))
    assert np.array_equal(pixels(zero.image), pixels(text_only.image))
    assert np.array_equal(pixels(text_only.image), pixels(stock_call(stock_pipeline(engine), request(preset))))
    assert text_only.diagnostics["denoiser_calls"] == preset.steps.default  # one row per image: distilled guidance


def test_xlabs_equals_stock_flux_with_its_per_layer_scales(engine, preset, gold):
    """Stock: FluxPipeline.load_ip_adapter (the XLabs file) and set_ip_adapter_scale with the preset's layer ramp
    times the strength, fed the same image embedding."""
    req = request(preset, reference=[gold], strength=0.8)
    ours = engine.generate(req)
    spec = engine.family.adapters["xlabs"]
    pipe = stock_pipeline(engine)
    pipe.load_ip_adapter(engine.source.resolve(spec.repo), weight_name=spec.weight_name,
                         image_encoder_pretrained_model_name_or_path=None, local_files_only=True)  # fmt: skip
    first, last = spec.layer_ramp
    layers = len(pipe.transformer.transformer_blocks)
    pipe.set_ip_adapter_scale([[0.8 * (first + (last - first) * i / (layers - 1)) for i in range(layers)]])
    embeds, _, _ = engine.encoder.embed(engine.adapter("xlabs").specs, [(load_reference(gold),), ()], "center", "t")
    image = [embeds[0].for_pipeline(False)]  # (the negative is read only by a true-CFG pass: none here)
    stock = stock_call(pipe, req, ip_adapter_image_embeds=image, negative_ip_adapter_image_embeds=image)
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1
    assert np.abs(pixels(ours.image) - pixels(engine.generate(request(preset)).image)).mean() > 1.0
    assert ours.metadata["image_prompts"][0]["layer_ramp"] == [first, last]
    assert ours.metadata["model_family"] == FAMILY and ours.metadata["adapter"] == spec.id


def test_a_sweep_takes_the_denoiser_calls_of_one_image(engine, preset, gold):
    strengths = [0.0, 0.5, 1.0]
    sweep = engine.generate_sweep(request(preset, reference=[gold]).swept(strengths))
    assert sweep.diagnostics["denoiser_calls"] == preset.steps.default and sweep.diagnostics["batches"] == 1
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = engine.generate(request(preset, reference=[gold], strength=strength)).image
        assert np.abs(pixels(single) - pixels(cell)).max() <= CELL_TOLERANCE


def test_what_flux_does_not_offer_is_refused_clearly(preset, gold):
    with pytest.raises(InvalidRequestError, match=r"region: regions are not available on FLUX yet; use 'whole'"):
        request(preset, reference=[gold], region="left")
    with pytest.raises(InvalidRequestError, match=r"slot 1 mode 'canny' is not one of \['general'\]"):
        request(preset, slots=[{"mode": "canny"}], slot_images=[gold])
    with pytest.raises(InvalidRequestError, match="has no fast mode"):
        request(preset, speed="fast")


def test_settings_round_trip_on_flux(preset, gold):
    req = request(preset, reference=[gold], strength=0.9, steps=3, guidance=4.0, start_at=0.25)
    restored = validated_settings(preset, settings_of(req))
    keywords = {k: v for k, v in restored.items() if not k.startswith("extra_")}
    assert describe(build_request(preset, **keywords, reference=[gold])) == describe(req)


def test_a_scored_comparison_on_flux(engine, preset, gold):
    """Likeness with the adapter's own CLIP ViT-L, adherence with the text half of the same CLIP checkpoint."""
    sweep = engine.generate_sweep(request(preset, reference=[gold], steps=2).swept([0.0, 1.0]), score=True)
    assert [s["strength"] for s in sweep.scores] == [0.0, 1.0]
    assert all(-1 <= s["likeness"] <= 1 and -1 <= s["adherence"] <= 1 for s in sweep.scores)
    assert sweep.suggested is not None and sweep.diagnostics["denoiser_calls"] == 2


def stock_redux(engine, pipe, req, gold, strength):
    """Stock FluxPriorReduxPipeline (with FLUX's text encoders, as its docs run it), then only its image tokens
    scaled (the text's 512 T5 tokens left as they are), then stock FluxPipeline."""
    from diffusers import FluxPriorReduxPipeline

    spec = engine.family.adapters["redux"]
    prior = FluxPriorReduxPipeline.from_pretrained(
        engine.source.resolve(spec.repo), text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2, local_files_only=True,
    )  # fmt: skip
    out = prior(gold, prompt=req.settings.prompt)
    embeds = out.prompt_embeds.clone()
    embeds[:, 512:] *= strength
    text = pipe.encode_prompt(prompt=req.settings.prompt, prompt_2=None, max_sequence_length=512)
    assert torch.equal(out.pooled_prompt_embeds, text[1])  # Redux leaves the pooled text as it is
    s = req.settings
    return pipe(prompt_embeds=embeds, pooled_prompt_embeds=out.pooled_prompt_embeds, num_inference_steps=s.steps,
                guidance_scale=s.guidance, width=s.width, height=s.height,
                generator=torch.Generator("cpu").manual_seed(s.seed)).images[0]  # fmt: skip


def test_redux_equals_stock_prior_redux_with_only_its_image_tokens_scaled(engine, preset, gold):
    req = request(preset, reference=[gold], variant="redux", strength=0.6)
    ours = engine.generate(req)
    stock = stock_redux(engine, stock_pipeline(engine), req, gold, 0.6)
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1
    text_only = pixels(engine.generate(request(preset)).image)
    assert np.abs(pixels(ours.image) - text_only).mean() > 0.5
    zero = engine.generate(request(preset, reference=[gold], variant="redux", strength=0.0))
    assert np.array_equal(pixels(zero.image), text_only)  # strength 0: no image token at all
    assert ours.metadata["adapter"] == engine.family.adapters["redux"].id and len(ours.previews) == 1


def test_a_redux_sweep_is_one_pass_and_its_zero_cell_is_text_only(engine, preset, gold):
    """Cells at 0 hide the Redux tokens from themselves with an attention mask, in the same pass."""
    strengths = [0.0, 0.5, 1.0]
    sweep = engine.generate_sweep(request(preset, reference=[gold], variant="redux").swept(strengths))
    assert sweep.diagnostics["denoiser_calls"] == preset.steps.default
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = engine.generate(request(preset, reference=[gold], variant="redux", strength=strength)).image
        assert np.abs(pixels(single) - pixels(cell)).max() <= CELL_TOLERANCE


def test_xlabs_and_redux_together(engine, preset, gold, blue):
    """The tab's XLabs prompt plus a Redux slot: a Redux slot at 0 is exactly XLabs alone."""
    slots = [{"mode": "general", "variant": "redux", "strength": 0.0}]
    alone = engine.generate(request(preset, reference=[gold], strength=0.8)).image
    zero = engine.generate(request(preset, reference=[gold], strength=0.8, slots=slots, slot_images=[blue])).image
    assert np.array_equal(pixels(zero), pixels(alone))
    both = engine.generate(request(preset, reference=[gold], strength=0.8, slots=[{**slots[0], "strength": 1.0}],
                                   slot_images=[blue]))  # fmt: skip
    assert both.metadata["adapter"] == "tiny-flux-ip-adapter/ip_adapter.safetensors + tiny-flux-redux"
    with pytest.raises(InvalidRequestError, match="Redux acts on every step"):
        engine.generate(request(preset, reference=[gold], variant="redux", stop_at=0.5))


def test_true_cfg_is_a_preset_value_and_equals_stock(families, tiny_root, presets, gold):
    """An adapter with `true_cfg = 4.0` (XLabs v1's recipe): a second, negative pass per step (denoiser calls =
    2 x steps, for any number of cells), equal to stock FluxPipeline with `true_cfg_scale` and an empty negative
    prompt (its negative image prompt: a black picture)."""
    from dataclasses import replace

    family = families[FAMILY]
    xlabs = replace(family.adapters["xlabs"], true_cfg=4.0)
    engine = Engine(replace(family, adapters={**family.adapters, "xlabs": xlabs}), tiny_root=tiny_root, max_batch=4)
    preset = presets["general"][FAMILY]
    req = request(preset, reference=[gold], strength=0.7, steps=3)
    ours = engine.generate(req)
    assert ours.diagnostics["denoiser_calls"] == 6 and ours.metadata["true_cfg_scale"] == 4.0
    assert engine.generate_sweep(req.swept([0.0, 0.5, 1.0])).diagnostics["denoiser_calls"] == 6
    pipe = stock_pipeline(engine)
    pipe.load_ip_adapter(engine.source.resolve(xlabs.repo), weight_name=xlabs.weight_name,
                         image_encoder_pretrained_model_name_or_path=engine.source.resolve(xlabs.image_encoder.repo),
                         local_files_only=True)  # fmt: skip
    first, last = xlabs.layer_ramp
    layers = len(pipe.transformer.transformer_blocks)
    pipe.set_ip_adapter_scale([[0.7 * (first + (last - first) * i / (layers - 1)) for i in range(layers)]])
    stock = stock_call(pipe, req, ip_adapter_image=gold, true_cfg_scale=4.0, negative_prompt="")
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1
    with pytest.raises(InvalidRequestError, match="not with true CFG"):
        engine.generate(request(preset, reference=[gold], slots=[{"mode": "general", "variant": "redux"}],
                                slot_images=[gold]))  # fmt: skip


def test_one_family_per_engine(engine, engines, presets, preset, gold):
    """SD and FLUX never share an engine by mistake: a request validated by another family's presets is refused."""
    with pytest.raises(
        InvalidRequestError, match="This engine runs the tiny-flux family; the request was made for tiny"
    ):
        engine.generate(build_request(presets["general"]["tiny"], prompt="x", reference=[gold]))
    with pytest.raises(
        InvalidRequestError, match="This engine runs the tiny family; the request was made for tiny-flux"
    ):
        engines["tiny"].generate(request(preset))


def test_a_two_dimensional_sweep_xlabs_by_redux_is_one_pass(engine, preset, gold, blue):
    slots = [{"mode": "general", "variant": "redux", "strength": 0.5}]
    req = request(preset, reference=[gold], slots=slots, slot_images=[blue])
    grid = engine.generate_sweep(req.swept([0.0, 1.0], [0.0, 1.0]))
    assert grid.shape == (2, 2) and grid.diagnostics["denoiser_calls"] == preset.steps.default
    text_only = pixels(engine.generate(request(preset)).image)
    assert np.abs(pixels(grid.images[0]) - text_only).max() <= CELL_TOLERANCE  # both at 0, in the same pass
    single = engine.generate(request(preset, reference=[gold], strength=1.0, slots=[{**slots[0], "strength": 1.0}],
                                     slot_images=[blue]))  # fmt: skip
    assert np.abs(pixels(grid.images[3]) - pixels(single.image)).max() <= CELL_TOLERANCE


def test_the_prompt_length_warning_counts_t5s_tokens(engine, preset):
    """FLUX reads a prompt through T5 (512 tokens); CLIP's 77 only feed the pooled vector: a prompt of about 100
    tokens is read in full and gets no warning, one past T5's length does, with T5's limit."""
    from pipelines.arch.flux import MAX_SEQUENCE_LENGTH

    engine.load()
    tokenizer = engine.pipe.tokenizer_2
    read = request(preset, prompt="a vase of flowers " * 25)
    assert 77 < len(tokenizer(read.settings.full_prompt).input_ids) < MAX_SEQUENCE_LENGTH
    assert engine.prompt_warnings(read) == []
    cut = request(preset, prompt="a vase of flowers " * 110)
    (warning,) = engine.prompt_warnings(cut)
    assert f"the text encoder reads {MAX_SEQUENCE_LENGTH - 1}, so the end was ignored" in warning
