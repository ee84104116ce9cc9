"""Style mode (InstantStyle): the image prompt reaches exactly the style layers (and layout layers on request)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import build_request
from pipelines.errors import BlockMapError
from tests.conftest import pixels

STYLE_LAYER = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"
LAYOUT_LAYER = "down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor"


def layers_that_used_the_image_prompt(engine, request) -> set[str]:
    """Run `request` and return the processors whose IP-Adapter projections actually ran."""
    adapter = engine.adapter(request.primary.variant)
    used: set[str] = set()
    hooks = [
        proc.to_k_ip[0].register_forward_hook(lambda *a, name=name: used.add(name))
        for name, proc in adapter.processors.items()
        if hasattr(proc, "to_k_ip")
    ]
    try:
        result = engine.generate(request)
    finally:
        for h in hooks:
            h.remove()
    return used, pixels(result.image)


@pytest.fixture
def style(presets):
    return presets["style"]["tiny"]


def test_style_only_reaches_exactly_the_style_layers(engines, style, presets, gold):
    engine = engines["tiny"]
    used, styled = layers_that_used_the_image_prompt(
        engine, build_request(style, prompt="a cat", seed=4, references=[gold])
    )
    assert used == {STYLE_LAYER}
    used_layout, with_layout = layers_that_used_the_image_prompt(
        engine, build_request(style, prompt="a cat", seed=4, references=[gold], layout=True)
    )
    assert used_layout == {STYLE_LAYER, LAYOUT_LAYER}

    general = presets["general"]["tiny"]
    none = pixels(engine.generate(build_request(general, prompt="a cat", seed=4)).image)
    every_layer = pixels(
        engine.generate(build_request(general, prompt="a cat", seed=4, references=[gold], strength=1.0)).image
    )
    assert np.abs(styled - none).max() > 0
    assert np.abs(styled - every_layer).mean() > 1.0
    assert np.abs(styled - with_layout).max() > 0


def test_style_strength_zero_is_text_only(engines, style, presets, gold):
    engine = engines["tiny"]
    zero = engine.generate(build_request(style, prompt="a cat", seed=4, references=[gold], strength=0.0))
    none = engine.generate(build_request(presets["general"]["tiny"], prompt="a cat", seed=4))
    assert np.array_equal(pixels(zero.image), pixels(none.image))


def test_style_sweep_multiplies_strength_into_the_block_map(engines, style, gold):
    engine = engines["tiny"]
    request = build_request(style, prompt="a cat", seed=4, references=[gold], layout=True)
    sweep = engine.generate_sweep(request.swept([0.5, 1.0]))
    for strength, cell in zip(sweep.strengths, sweep.images, strict=True):
        single = engine.generate(build_request(style, prompt="a cat", seed=4, references=[gold], layout=True,
                                               strength=strength))  # fmt: skip
        assert np.abs(pixels(single.image) - pixels(cell)).max() <= 2
    assert sweep.metadata["block_map"] == {"up": {"block_0": [0.0, 1.0, 0.0]}, "down": {"block_2": [0.0, 1.0]}}


def test_sd15_shaped_style_map(engines, presets, gold):
    request = build_request(presets["style"]["tiny-sd15"], prompt="a cat", seed=4, references=[gold])
    used, _ = layers_that_used_the_image_prompt(engines["tiny-sd15"], request)
    assert used == {"up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor"}


def test_start_up_rejects_a_block_the_unet_lacks(engines, monkeypatch):
    import app

    style = app.PRESETS["style"]["tiny"]
    broken = {**style.block_maps, "layout": {"down": {"block_0": [0.0, 1.0]}}}
    monkeypatch.setitem(app.PRESETS["style"], "tiny", type(style)(**{**style.__dict__, "block_maps": broken}))
    with pytest.raises(BlockMapError, match=r"presets/style.toml: \[tiny\].block_maps.layout: block map names down"):
        app.check_block_maps(engines["tiny"])
