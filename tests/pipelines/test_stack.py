"""Stacked image prompts: several adapters on one base, each with its own strength, steps window and region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from pipelines import build_request
from pipelines.errors import InvalidRequestError
from pipelines.images import load_reference
from tests.conftest import assert_solo_results_under_concurrency, pixels
from tests.pipelines.test_engine import direct_call, direct_pipeline
from tests.pipelines.test_face import ALICE, BOB

PROMPT = "a vase on a table"


def request(presets, family, mode="general", **kwargs):
    return build_request(presets[mode][family], **{"prompt": PROMPT, "seed": 7, **kwargs})


def image(engines, presets, family, mode="general", **kwargs):
    return pixels(engines[family].generate(request(presets, family, mode, **kwargs)).image)


@pytest.mark.parametrize("extra_mode", ["general", "style", "face"])
def test_an_extra_prompt_at_strength_zero_changes_nothing(engines, presets, family, gold, blue, extra_mode):
    """extra_mode "none" and extra_strength 0 give today's single-prompt pixels (the tiny FaceID has no LoRA)."""
    alone = image(engines, presets, family, reference=[gold], strength=0.8)
    assert np.array_equal(image(engines, presets, family, reference=[gold], strength=0.8, extra_mode="none"), alone)
    extra = ALICE if extra_mode == "face" else blue
    zero = image(engines, presets, family, reference=[gold], strength=0.8, extra_mode=extra_mode,
                 extra_reference=[extra], extra_strength=0.0)  # fmt: skip
    assert np.array_equal(zero, alone)
    acting = image(engines, presets, family, reference=[gold], strength=0.8, extra_mode=extra_mode,
                   extra_reference=[extra], extra_strength=1.0)  # fmt: skip
    assert np.abs(acting - alone).mean() > 0.5  # the extra prompt does act: the test can fail


def stock_pair(engine, variants):
    """Stock diffusers on the same base folder with two CLIP adapters loaded at once (its multi-adapter form)."""
    specs = [engine.family.adapters[v] for v in variants]
    pipe = direct_pipeline(engine)
    pipe.load_ip_adapter(
        [engine.source.resolve(s.repo) for s in specs],
        subfolder=[s.subfolder for s in specs],
        weight_name=[s.weight_name for s in specs],
        image_encoder_folder=specs[0].image_encoder.subfolder,
        local_files_only=True,
    )
    return pipe


def test_two_kinds_equal_stock_diffusers_with_both_adapters(engines, presets, family, gold, blue):
    """General (Plus) + Style: stock `set_ip_adapter_scale([a, style map x b])` with both images."""
    engine = engines[family]
    ours = image(engines, presets, family, reference=[gold], strength=0.7, variant="plus", extra_mode="style",
                 extra_reference=[blue], extra_strength=0.9)  # fmt: skip
    style_map = presets["style"][family].block_maps["style"]
    scaled = {part: {b: [w * 0.9 for w in ws] for b, ws in blocks.items()} for part, blocks in style_map.items()}
    pipe = stock_pair(engine, ["plus", "plain"])
    pipe.set_ip_adapter_scale([0.7, scaled])
    stock = direct_call(pipe, request(presets, family), ip_adapter_image=[gold, blue])
    assert np.abs(ours - pixels(stock)).max() <= 1
    alone = image(engines, presets, family, reference=[gold], strength=0.7, variant="plus")
    assert np.abs(ours - alone).mean() > 0.5


def test_regions_equal_diffusers_ip_adapter_masks(engines, presets, family, gold, blue):
    """Left/right regions act in attention exactly as diffusers' `ip_adapter_masks` do, sized per layer."""
    engine = engines[family]
    ours = image(engines, presets, family, reference=[gold], strength=1.0, region="left", extra_mode="general",
                 extra_reference=[blue], extra_strength=1.0, extra_region="right")  # fmt: skip
    req = request(presets, family)
    left = Image.new("L", (req.settings.width, req.settings.height), 0)
    left.paste(255, (0, 0, req.settings.width // 2, req.settings.height))
    right = Image.eval(left, lambda v: 255 - v)
    masks = IPAdapterMaskProcessor().preprocess([left, right], height=req.settings.height, width=req.settings.width)
    pipe = stock_pair(engine, ["plain", "plain"])
    pipe.set_ip_adapter_scale([1.0, 1.0])
    stock = direct_call(pipe, req, ip_adapter_image=[gold, blue],
                        cross_attention_kwargs={"ip_adapter_masks": [masks[:1], masks[1:]]})  # fmt: skip
    assert np.abs(ours - pixels(stock)).max() <= 1
    whole = image(engines, presets, family, reference=[gold], strength=1.0, extra_mode="general",
                  extra_reference=[blue], extra_strength=1.0)  # fmt: skip
    assert np.abs(ours - whole).mean() > 0.5  # the regions matter


def test_two_faces_in_two_regions(engines, presets):
    """Two people: a face prompt on the left and one on the right, each with its own identity (FaceID Plus v2 twice:
    each use of the shared projection keeps its own face crop)."""
    engine, family = engines["tiny"], "tiny"
    both = dict(reference=[ALICE], variant="faceid-plusv2", region="left", extra_mode="face", extra_reference=[BOB],
                extra_variant="faceid-plusv2", extra_region="right", strength=1.0, extra_strength=1.0)  # fmt: skip
    two = engine.generate(request(presets, family, "face", **both))
    assert two.metadata["image_prompts"][0]["region"] == "left"
    assert two.metadata["image_prompts"][1]["region"] == "right"
    swapped = {**both, "reference": [BOB], "extra_reference": [ALICE]}
    other = pixels(engine.generate(request(presets, family, "face", **swapped)).image)
    assert np.abs(pixels(two.image) - other).mean() > 0.5  # who is where follows the regions
    combo = engine.adapter(("faceid-plusv2", "faceid-plusv2"))
    first, second = combo.image_proj.image_projection_layers
    assert first is not second and first.proj is second.proj  # two uses, one set of weights
    assert all(layer.clip_embeds is None for layer in (first, second))  # nothing of the request stays


def test_windows_split_one_prompt_exactly(engines, presets, family, gold):
    """A prompt on steps [0, 0.5) plus the same prompt on [0.5, 1) is exactly that prompt on every step."""
    whole = image(engines, presets, family, reference=[gold], strength=0.9, steps=6)
    split = image(engines, presets, family, reference=[gold], strength=0.9, steps=6, stop_at=0.5,
                  extra_mode="general", extra_reference=[gold], extra_strength=0.9, extra_start_at=0.5)  # fmt: skip
    assert np.array_equal(split, whole)
    late = image(engines, presets, family, reference=[gold], strength=0.9, steps=6, start_at=0.5)
    early = image(engines, presets, family, reference=[gold], strength=0.9, steps=6, stop_at=0.5)
    none = image(engines, presets, family, steps=6)
    assert np.abs(late - whole).max() > 0 and np.abs(late - none).max() > 0 and np.abs(late - early).max() > 0
    assert np.array_equal(image(engines, presets, family, reference=[gold], strength=0.9, steps=6, start_at=0.99),
                          none)  # fmt: skip  # ceil(0.99 x 6) = 6: no step left


def test_start_must_come_before_stop(presets):
    with pytest.raises(InvalidRequestError, match=r"start_at \(0.6\) must be below stop_at \(0.5\)"):
        request(presets, "tiny", start_at=0.6, stop_at=0.5)
    with pytest.raises(InvalidRequestError, match=r"extra_start_at \(1\) must be below extra_stop_at \(1\)"):
        request(presets, "tiny", extra_mode="style", extra_start_at=1.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"extra_mode": "anime"}, r"extra_mode 'anime' is not one of \['none', 'general', 'face', 'style'\]"),
        ({"region": "middle"}, r"region 'middle' is not one of \['whole', 'left', 'right', 'top', 'bottom'\]"),
        ({"extra_mode": "face", "extra_variant": "plus"}, r"extra_variant 'plus' is not one of \['faceid'"),
        ({"extra_strengths": "0, 1"}, "extra_strengths sweeps the first added image prompt: add one"),
        ({"extra_mode": "style", "extra_strength": 9}, r"extra_strength = 9.0 is outside \[0.0, 1.5\]"),
        ({"extra_mode": "style", "strengths": "0,.2,.4,.6,.8,1", "extra_strengths": "0,.2,.4,.6,.8"},
         "6 x 5 = 30 cells; at most 25"),
    ],
)  # fmt: skip
def test_bad_stacks_say_what_to_change(presets, values, message):
    with pytest.raises(InvalidRequestError, match=message):
        request(presets, "tiny", **values)


def test_negative_image(engines, presets, family, gold, blue):
    """A negative image replaces the unconditional image embedding: nothing at strength 0, stock embeds otherwise."""
    engine = engines[family]
    zero = image(engines, presets, family, reference=[gold], strength=0.0)
    assert np.array_equal(image(engines, presets, family, reference=[gold], strength=0.0, negative_reference=[blue]),
                          zero)  # fmt: skip
    plain = image(engines, presets, family, reference=[gold], strength=0.8)
    against = image(engines, presets, family, reference=[gold], strength=0.8, negative_reference=[blue])
    assert np.abs(against - plain).mean() > 0.5
    # Stock diffusers takes negative image embeddings as the first half of `ip_adapter_image_embeds`.
    spec = engine.family.adapters["plain"]
    pipe = direct_pipeline(engine)
    pipe.load_ip_adapter(engine.source.resolve(spec.repo), subfolder=spec.subfolder, weight_name=spec.weight_name,
                         image_encoder_folder=spec.image_encoder.subfolder, local_files_only=True)  # fmt: skip
    pipe.set_ip_adapter_scale(0.8)

    def embeds(img):
        pixels_ = pipe.feature_extractor(images=[img], return_tensors="pt").pixel_values
        with torch.no_grad():
            return pipe.image_encoder(pixels_).image_embeds[None]  # (1, 1, D)

    stock = direct_call(
        pipe, request(presets, family), ip_adapter_image_embeds=[torch.cat([embeds(blue), embeds(gold)])]
    )
    assert np.abs(against - pixels(stock)).max() <= 1


def test_two_dimensional_grid_cells_equal_single_renders(engines, presets, gold, blue):
    engine, family = engines["tiny"], "tiny"
    stack = dict(reference=[gold], extra_mode="style", extra_reference=[blue])
    req = request(presets, family, strengths="0, 0.5, 1", extra_strengths="0, 0.6, 1.2", **stack)
    calls = engine.counters["unet_calls"]
    sweep = engine.generate_sweep(req)
    assert engine.counters["unet_calls"] - calls == 2 * req.settings.steps  # 9 cells in passes of 8 + 1, not 9 renders
    assert sweep.shape == (3, 3) and len(sweep.images) == 9
    assert sweep.strengths == [0, 0, 0, 0.5, 0.5, 0.5, 1, 1, 1]
    assert sweep.extra_strengths == [0, 0.6, 1.2] * 3
    assert sweep.metadata["strengths"] == [0, 0.5, 1] and sweep.metadata["extra_strengths"] == [0, 0.6, 1.2]
    for img, s, e, meta in zip(sweep.images, sweep.strengths, sweep.extra_strengths, sweep.cell_metadata,
                               strict=True):  # fmt: skip
        single = engine.generate(request(presets, family, strength=s, extra_strength=e, **stack))
        assert np.abs(pixels(img) - pixels(single.image)).max() <= 2
        assert meta["strength"] == s and meta["extra_strength"] == e
        assert [p["strength"] for p in meta["image_prompts"]] == [s, e]
    assert np.abs(pixels(sweep.images[2]) - pixels(sweep.images[0])).mean() > 0.5  # the columns differ


def test_metadata_describes_every_image_prompt(engines, presets, gold, blue):
    engine = engines["tiny"]
    result = engine.generate(request(presets, "tiny", reference=[gold], negative_reference=[gold], strength=0.6,
                                     region="top", extra_mode="style", extra_reference=[blue], extra_strength=0.4,
                                     extra_stop_at=0.5))  # fmt: skip
    first, second = result.metadata["image_prompts"]
    assert first["mode"] == "general" and second["mode"] == "style"
    assert first["adapter"] == engine.adapter("plain").id and second["adapter"] == engine.adapter("plain").id
    assert (first["strength"], first["start_at"], first["stop_at"], first["region"]) == (0.6, 0.0, 1.0, "top")
    assert (second["strength"], second["start_at"], second["stop_at"], second["region"]) == (0.4, 0.0, 0.5, "whole")
    gold_sha, blue_sha = load_reference(gold).sha256, load_reference(blue).sha256
    assert first["references_sha256"] == [gold_sha] and first["negative_references_sha256"] == [gold_sha]
    assert second["references_sha256"] == [blue_sha] and gold_sha != blue_sha
    assert result.metadata["adapter"] == " + ".join(p["adapter"] for p in (first, second))
    assert result.diagnostics["image_prompts"] == 2


def test_concurrent_clients_with_different_stacks_get_their_solo_results(engines, presets, gold, blue):
    engine, family = engines["tiny"], "tiny"
    stacks = [
        dict(reference=[gold], strength=0.8),
        dict(reference=[gold], strength=0.5, extra_mode="style", extra_reference=[blue], extra_strength=1.0),
        dict(reference=[blue], strength=0.9, region="left", extra_mode="face", extra_reference=[ALICE],
             extra_region="right"),
        dict(reference=[ALICE], strength=1.0, negative_reference=[BOB], mode="face"),
    ]  # fmt: skip

    def build(values):
        values = dict(values)
        return request(presets, family, values.pop("mode", "general"), **values)

    assert_solo_results_under_concurrency(engine, [build(s) for s in stacks])
