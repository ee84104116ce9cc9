"""Stop-at, crop modes and block maps: controls that shape how the image prompt acts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import build_request
from pipelines.errors import BlockMapError, InvalidRequestError
from tests.conftest import pixels


def render(engine, preset, **kwargs):
    return pixels(engine.generate(build_request(preset, **{"prompt": "a cat", "seed": 9, **kwargs})).image)


def test_stop_at(engines, presets, gold):
    engine, preset = engines["tiny"], presets["general"]["tiny"]
    none = render(engine, preset)
    full = render(engine, preset, references=[gold], strength=1.0, steps=6)
    with pytest.raises(InvalidRequestError, match=r"start_at \(0\) must be below stop_at \(0\)"):
        render(engine, preset, references=[gold], strength=1.0, stop_at=0.0)  # it would act on no step
    assert np.array_equal(render(engine, preset, references=[gold], strength=1.0, start_at=0.99), none)  # no step
    half = render(engine, preset, references=[gold], strength=1.0, steps=6, stop_at=0.5)
    none6 = render(engine, preset, steps=6)
    assert np.abs(half - full).max() > 0 and np.abs(half - none6).max() > 0  # acts on some steps, not all
    # Early steps decide most of the picture (why "stop at" keeps the reference's influence at half the steps).
    assert np.abs(half - none6).mean() > np.abs(half - full).mean()
    assert np.array_equal(render(engine, preset, references=[gold], strength=1.0, steps=6, stop_at=1.0), full)


def test_crop_modes_change_what_the_encoder_sees(engines, presets):
    engine, preset = engines["tiny"], presets["general"]["tiny"]
    wide = Image.new("RGB", (90, 30), (250, 0, 0))
    wide.paste((0, 0, 250), (0, 0, 20, 30))  # a blue band at the left edge
    views = {}
    for crop in ("center", "pad", "squash"):
        request = build_request(preset, prompt="x", references=[wide], crop=crop)
        (view,) = engine.encoder_preview(request, "plain")
        assert view.size == (32, 32)
        views[crop] = np.asarray(view).astype(int)
    assert views["center"][:, 0, 2].mean() < 60  # the centre crop cuts the blue band away
    assert views["squash"][:, 0, 2].mean() > 150  # squashing keeps it
    assert abs(views["pad"][0, 16] - 128).max() <= 2  # padding is neutral grey
    outputs = {c: render(engine, preset, references=[wide], strength=1.0, crop=c) for c in views}
    assert np.abs(outputs["center"] - outputs["pad"]).mean() > 0.2


def test_square_reference_is_the_same_in_every_crop_mode(engines, presets, blue):
    engine, preset = engines["tiny"], presets["general"]["tiny"]
    outs = [render(engine, preset, references=[blue], crop=c) for c in ("center", "pad", "squash")]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_block_map_weights(engines):
    engine = engines["tiny"]
    weights = engine.block_weights({"up": {"block_0": [0.0, 1.0, 0.0]}})
    on = {name for name, w in weights.items() if w}
    assert on == {"up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"}
    layout = engine.block_weights({"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}})
    assert "down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor" in {n for n, w in layout.items() if w}


@pytest.mark.parametrize(
    ("block_map", "message"),
    [
        ({"up": {"block_5": [1.0]}}, "names up.block_5, which this UNet does not have"),
        ({"down": {"block_0": 1.0}}, "names down.block_0"),  # SDXL's first level has no attention
        ({"up": {"block_0": [1.0, 0.0]}}, "has 2 weights; this UNet has 3 layers there"),
        ({"left": {"block_0": 1.0}}, "part 'left'"),
    ],
)
def test_bad_block_maps_are_rejected(engines, block_map, message):
    with pytest.raises(BlockMapError, match=message):
        engines["tiny"].block_weights(block_map)


def test_a_render_returns_what_the_encoder_saw(engines, presets):
    """Every mode's result carries the adapter's view: here the padded square the CLIP encoder received."""
    engine = engines["tiny"]
    tall = Image.new("RGB", (30, 90), (20, 160, 220))
    request = build_request(presets["general"]["tiny"], prompt="x", references=[tall], crop="pad", steps=1)
    (seen,) = engine.generate(request).previews
    (preview,) = engine.encoder_preview(request, request.primary.variant)
    assert seen.size == preview.size and seen.size[0] == seen.size[1]
    assert np.array_equal(np.asarray(seen), np.asarray(preview))
    assert np.asarray(seen)[0, 0].tolist() == [128, 128, 128]  # the grey padding, not the picture
