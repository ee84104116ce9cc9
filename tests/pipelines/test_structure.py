"""Structure slots (edges, depth, a ready control map, a start image): exact at strength 0, equal to stock diffusers,
swept in one pass, previewed, and every bad slot named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLControlNetUnionImg2ImgPipeline,
    StableDiffusionXLControlNetUnionPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from pipelines import InvalidRequestError, build_request
from pipelines.codec import describe
from pipelines.images import load_reference
from pipelines.metadata import save_png
from pipelines.presets import preset_for
from pipelines.settings import read_settings_file, settings_of, validated_settings
from pipelines.slots.structure import canny_map, fit
from tests.conftest import pixels
from tests.pipelines.test_engine import direct_pipeline
from tests.pipelines.test_sweep import CELL_TOLERANCE

KINDS = {"canny": {}, "depth": {}, "pose": {}, "control": {"control_type": "pose"}, "start": {}}
PROMPT = "a house by a lake"


@pytest.fixture(scope="module")
def photo():
    """A picture with shapes and edges (a grid of blocks over noise), not square."""
    rng = np.random.default_rng(5)
    a = (rng.random((96, 128, 3)) * 80).astype(np.uint8)
    a[16:48, 16:64] = (230, 200, 40)
    a[56:88, 72:120] = (30, 60, 220)
    return Image.fromarray(a)


def request(presets, family, mode="general", **kwargs):
    return build_request(presets[mode][family], **{"prompt": PROMPT, "seed": 9, **kwargs})


def render(engines, family, req):
    return engines[family].generate(req)


def slot(kind: str, **kwargs) -> dict:
    return {"mode": kind, **KINDS[kind], **kwargs}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_at_strength_zero_is_exactly_no_slot(engines, presets, family, gold, photo, kind):
    without = render(engines, family, request(presets, family, reference=[gold]))
    zero = render(
        engines, family, request(presets, family, reference=[gold], slots=[slot(kind, strength=0)], slot_images=[photo])
    )
    assert np.array_equal(pixels(zero.image), pixels(without.image))
    assert zero.diagnostics.get("controlnet_calls", 0) == 0  # nothing ran for it
    acting = render(
        engines,
        family,
        request(presets, family, reference=[gold], slots=[slot(kind, strength=0.6)], slot_images=[photo]),
    )
    assert np.abs(pixels(acting.image) - pixels(without.image)).mean() > 1.0


def stock_embeds(engine, gold):
    got, _, _ = engine.encoder.embed(engine.adapter("plain").specs, [(load_reference(gold),), ()], "center", "test")
    return [got[0].for_pipeline(True)]


def stock_with_adapter(engine, strength: float):
    pipe = direct_pipeline(engine)
    spec = engine.family.adapters["plain"]
    pipe.load_ip_adapter(
        engine.source.resolve(spec.repo),
        subfolder=spec.subfolder,
        weight_name=spec.weight_name,
        image_encoder_folder=None,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(strength)
    return pipe


def stock_controlnet(engine, control_type: str):
    spec = engine.family.controlnets[control_type]
    cls = ControlNetUnionModel if spec.union_mode is not None else ControlNetModel
    return cls.from_pretrained(engine.source.resolve(spec.repo), local_files_only=True), spec


def control_kwargs(spec, control_map, strength, start_at, stop_at, img2img=False):
    kwargs = {
        "controlnet_conditioning_scale": strength,
        "control_guidance_start": start_at,
        "control_guidance_end": stop_at,
    }
    if spec.union_mode is not None:
        return kwargs | {"control_image": [control_map], "control_mode": [spec.union_mode]}
    return kwargs | {"control_image" if img2img else "image": control_map}


def call(pipe, req, **kwargs):
    s = req.settings
    return pipe(
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        num_inference_steps=s.steps,
        guidance_scale=s.guidance,
        generator=torch.Generator("cpu").manual_seed(s.seed),
        **kwargs,
    ).images[0]


@pytest.mark.parametrize("kind", ["canny", "depth", "pose", "control"])
def test_controlnet_slots_equal_stock_diffusers(engines, presets, family, gold, photo, kind):
    """A ControlNet slot with a window, beside an image prompt: stock diffusers' ControlNet pipeline
    (ControlNet-Union for SDXL) with `ip_adapter_image_embeds`, fed the same control map."""
    engine = engines[family]
    req = request(
        presets,
        family,
        reference=[gold],
        strength=0.7,
        slots=[slot(kind, strength=0.9, start_at=0.25, stop_at=0.75)],
        slot_images=[photo],
    )
    ours = render(engines, family, req)
    control_map = engine.slots.structure.control_map(req.slots[0], req.settings.width, req.settings.height, "")
    net, spec = stock_controlnet(engine, req.slots[0].control_type)
    cls = StableDiffusionXLControlNetUnionPipeline if spec.union_mode is not None else StableDiffusionControlNetPipeline
    pipe = cls.from_pipe(stock_with_adapter(engine, 0.7), controlnet=net)
    stock = call(
        pipe,
        req,
        width=req.settings.width,
        height=req.settings.height,
        ip_adapter_image_embeds=stock_embeds(engine, gold),
        **control_kwargs(spec, control_map, 0.9, 0.25, 0.75),
    )
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1
    assert ours.diagnostics["controlnet_calls"] == req.settings.steps // 2  # its window: half the steps
    assert ours.metadata["image_prompts"][1]["adapter"] == spec.id
    assert ours.metadata["slots"][0]["control_type"] == req.slots[0].control_type


def test_start_image_equals_stock_img2img(engines, presets, family, gold, photo):
    """A start image at strength s = stock img2img at denoising strength 1 - s (with the image prompt too)."""
    engine = engines[family]
    req = request(
        presets,
        family,
        reference=[gold],
        strength=0.7,
        steps=8,
        slots=[slot("start", strength=0.5)],
        slot_images=[photo],
    )
    ours = render(engines, family, req)
    start = fit(photo, req.settings.width, req.settings.height, "center")
    cls = StableDiffusionXLImg2ImgPipeline if family == "tiny" else StableDiffusionImg2ImgPipeline
    pipe = cls.from_pipe(stock_with_adapter(engine, 0.7))
    stock = call(pipe, req, image=start, strength=0.5, ip_adapter_image_embeds=stock_embeds(engine, gold))
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1
    assert ours.diagnostics["unet_calls"] == 4  # the last half of 8 steps


def test_a_start_image_and_a_controlnet_together_equal_stock(engines, presets, family, gold, photo):
    engine = engines[family]
    req = request(
        presets,
        family,
        reference=[gold],
        strength=0.5,
        steps=6,
        slots=[slot("canny", strength=1.1), slot("start", strength=0.4)],
        slot_images=[photo, gold],
    )
    ours = render(engines, family, req)
    w, h = req.settings.width, req.settings.height
    control_map = engine.slots.structure.control_map(req.slots[0], w, h, "")
    net, spec = stock_controlnet(engine, "canny")
    cls = (
        StableDiffusionXLControlNetUnionImg2ImgPipeline
        if spec.union_mode is not None
        else StableDiffusionControlNetImg2ImgPipeline
    )
    pipe = cls.from_pipe(stock_with_adapter(engine, 0.5), controlnet=net)
    stock = call(
        pipe,
        req,
        image=fit(gold, w, h, "center"),
        strength=0.6,
        width=w,
        height=h,
        ip_adapter_image_embeds=stock_embeds(engine, gold),
        **control_kwargs(spec, control_map, 1.1, 0.0, 1.0, img2img=True),
    )
    assert np.abs(pixels(ours.image) - pixels(stock)).max() <= 1


def test_a_controlnet_strength_sweep_is_one_pass_of_single_renders(engines, presets, family, gold, photo):
    engine = engines[family]
    strengths = [0.0, 0.4, 0.8, 1.2]
    req = request(presets, family, reference=[gold], slots=[slot("depth", strength=0.8)], slot_images=[photo])
    sweep = engine.generate_sweep(req.swept([req.primary.strength], strengths))
    d = sweep.diagnostics
    steps = req.settings.steps
    assert (d["unet_calls"], d["batches"], d["controlnet_calls"]) == (steps, 1, steps)  # one pass, whatever the cells
    assert d["control_maps"] == ["depth"] and "passes_note" not in d
    for strength, cell, meta in zip(strengths, sweep.images, sweep.cell_metadata, strict=True):
        single = request(
            presets, family, reference=[gold], slots=[slot("depth", strength=strength)], slot_images=[photo]
        )
        assert np.abs(pixels(render(engines, family, single).image) - pixels(cell)).max() <= CELL_TOLERANCE
        assert meta["slots"][0]["strength"] == strength
    assert np.abs(pixels(sweep.images[-1]) - pixels(sweep.images[0])).mean() > 1.0


def test_a_start_strength_sweep_runs_a_pass_per_strength(engines, presets, gold, photo):
    engine, family = engines["tiny"], "tiny"
    strengths = [0.0, 0.25, 0.5]
    req = request(presets, family, steps=4, slots=[slot("start", strength=0.5)], slot_images=[photo])
    sweep = engine.generate_sweep(req.swept([req.primary.strength], strengths))
    d = sweep.diagnostics
    assert d["batches"] == 3 and d["unet_calls"] == 4 + 3 + 2 and "own pass" in d["passes_note"]
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = request(presets, family, steps=4, slots=[slot("start", strength=strength)], slot_images=[photo])
        assert np.abs(pixels(render(engines, family, single).image) - pixels(cell)).max() <= CELL_TOLERANCE


def test_preview_shows_the_edge_map_and_the_result_keeps_it(engines, presets, gold, photo):
    engine, family = engines["tiny"], "tiny"
    req = request(presets, family, reference=[gold], slots=[slot("canny"), slot("start")], slot_images=[photo, gold])
    w, h = req.settings.width, req.settings.height
    expected = canny_map(fit(photo, w, h, "center"), preset_for("canny", family).canny_thresholds)
    views = engine.encoder_preview(req, req.primary.variant)
    assert np.array_equal(pixels(views[-2]), pixels(expected)) and set(np.unique(pixels(expected))) == {0, 255}
    assert np.array_equal(pixels(views[-1]), pixels(fit(gold, w, h, "center")))  # the start image as it is used
    result = engine.generate(req)
    assert np.array_equal(pixels(result.previews[-2]), pixels(expected))


def test_depth_maps_are_cached_per_visitor(engines, presets, photo):
    engine, family = engines["tiny"], "tiny"
    req = request(presets, family, steps=1, slots=[slot("depth")], slot_images=[photo])
    before = engine.counters["depth_estimations"]
    engine.generate(req, scope="visitor-a")
    engine.generate(req, scope="visitor-a")
    assert engine.counters["depth_estimations"] == before + 1
    engine.generate(req, scope="visitor-b")  # another visitor's request never reads the first one's entries
    assert engine.counters["depth_estimations"] == before + 2


def test_settings_round_trip_with_structure_slots(engines, presets, gold, photo, tmp_path):
    """Through a settings file and through the PNG: the same request again (kinds, control type, window, strength)."""
    preset = presets["style"]["tiny"]
    slots = [slot("control", control_type="pose", strength=1.1, start_at=0.1, stop_at=0.9), slot("start", strength=0.3)]
    req = request(presets, "tiny", "style", reference=[gold], slots=slots, slot_images=[photo, gold])
    saved = settings_of(req)
    assert saved["slots"][0]["control_type"] == "pose" and "control_type" not in saved["slots"][1]
    path = tmp_path / "structure.json"
    path.write_text(json.dumps(saved))
    result = engines["tiny"].generate(req)
    png = tmp_path / "structure.png"
    save_png(result.image, result.metadata, png)
    for source in (path, png):
        mode, raw = read_settings_file(source)
        restored = validated_settings(preset, raw)
        assert mode == "style" and restored["slots"] == saved["slots"]
        keywords = {k: v for k, v in restored.items() if not k.startswith("extra_")}  # the shorthand repeats slot 1
        again = build_request(preset, **keywords, reference=[gold], slot_images=[photo, gold])
        assert describe(again) == describe(req)


@pytest.mark.parametrize(
    ("slots", "images", "message"),
    [
        ([{"mode": "control"}], 1, r"A control slot needs 'control_type': what its map shows, one of \['canny'"),
        ([{"mode": "control", "control_type": "xray"}], 1, r"slot 1 control_type 'xray' is not one of"),
        ([{"mode": "canny", "control_type": "depth"}], 1, r"a canny slot's map is made by the app; use a 'control'"),
        ([{"mode": "style", "control_type": "pose"}], 1, r"only a 'control' slot takes a control_type"),
        ([{"mode": "canny", "images": 2}], 2, r"A canny slot takes one image, got 2"),
        ([{"mode": "depth", "region": "left"}], 1, r"a depth slot acts on the whole image, not 'left'"),
        ([{"mode": "canny", "variant": "plain"}], 1, r"a canny slot has no adapter"),
        ([{"mode": "start", "start_at": 0.5}], 1, r"a start image acts at the start"),
        ([{"mode": "start", "strength": 1.0}], 1, r"slot 1 strength = 1.0 is outside \[0.0, 0.95\]"),
    ],
)
def test_bad_structure_slots_get_a_clear_message(presets, photo, slots, images, message):
    with pytest.raises(InvalidRequestError, match=message):
        request(presets, "tiny", slots=slots, slot_images=[photo] * images)


def test_a_family_offers_only_the_control_types_it_has(presets, photo):
    with pytest.raises(InvalidRequestError, match=r"control_type 'segment' is not one of \['canny', 'depth', 'pose'\]"):
        request(presets, "tiny-sd15", slots=[{"mode": "control", "control_type": "segment"}], slot_images=[photo])
    request(presets, "tiny", slots=[{"mode": "control", "control_type": "segment"}], slot_images=[photo])


def test_a_start_strength_that_leaves_no_step_is_refused(engines, presets, photo):
    req = request(presets, "tiny", steps=4, slots=[slot("start", strength=0.9)], slot_images=[photo])
    with pytest.raises(
        InvalidRequestError, match=r"A start strength of 0.9 keeps the start image as it is with 4 steps"
    ):
        engines["tiny"].generate(req)


def test_controlnets_stay_loaded_across_bases_and_speeds(families, tiny_root, presets, gold, photo):
    """The ControlNet loads once; a request on another base (anime) and one in fast mode reuse it, each with its own
    base's UNet and sampler, and the base's own pixels do not change."""
    from pipelines import Engine

    engine = Engine(families["tiny"], tiny_root=tiny_root)
    anime = presets["anime"]["tiny"]
    slots = [slot("canny", strength=1.0)]
    default = engine.generate(request(presets, "tiny", reference=[gold], slots=slots, slot_images=[photo]))
    other = engine.generate(build_request(anime, prompt=PROMPT, seed=9, reference=[gold], base="anime", slots=slots,
                                          slot_images=[photo]))  # fmt: skip
    fast = engine.generate(request(presets, "tiny", reference=[gold], slots=slots, slot_images=[photo], speed="fast"))
    again = engine.generate(request(presets, "tiny", reference=[gold], slots=slots, slot_images=[photo]))
    assert engine.counters["controlnet_loads"] == 1 and engine.counters["base_loads"] == 3  # default, anime, default
    assert other.metadata["base"] == "anime" and fast.diagnostics["unet_calls"] == engine.family.fast.steps
    assert fast.diagnostics["controlnet_calls"] == engine.family.fast.steps
    assert np.array_equal(pixels(default.image), pixels(again.image))


def test_a_structure_pipeline_leaves_the_base_in_its_dtype(families, tiny_root, presets, gold, photo):
    """diffusers' from_pipe casts the modules it shares to float32 (in place, on the base too); the structure
    pipelines are made without that cast, so a bf16 base stays bf16 and its later images do not change."""
    from pipelines import Engine

    engine = Engine(families["tiny"], tiny_root=tiny_root, dtype=torch.bfloat16)
    before = engine.generate(request(presets, "tiny", reference=[gold]))
    for kind in ("canny", "start"):
        engine.generate(request(presets, "tiny", reference=[gold], slots=[slot(kind)], slot_images=[photo]))
        assert {engine.pipe.unet.dtype, engine.pipe.vae.dtype, engine.pipe.text_encoder.dtype} == {torch.bfloat16}
    after = engine.generate(request(presets, "tiny", reference=[gold]))
    assert np.array_equal(pixels(before.image), pixels(after.image))


@pytest.mark.parametrize("kind", ["canny", "depth", "pose"])
def test_another_photo_moves_the_image_through_its_map(engines, presets, family, photo, kind):
    """The tiny ControlNets read their maps: another photo's map moves the image by several levels (at the default
    init a wrong map moved it by 0.002, and every map test would have passed with any map)."""
    other = Image.fromarray(np.asarray(photo)[::-1, ::-1].copy())  # the same picture upside down: another map
    renders = [
        render(engines, family, request(presets, family, slots=[slot(kind, strength=0.9)], slot_images=[picture]))
        for picture in (photo, other)
    ]
    assert np.abs(pixels(renders[0].image) - pixels(renders[1].image)).mean() > 1.0
