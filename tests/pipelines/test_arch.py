"""The architecture seam: each architecture's text encoding and noise, fed to its pipeline, give stock diffusers'
pixels exactly; the generated tiny FLUX is in the real formats (pipeline folder, XLabs IP-Adapter keys)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.arch import architecture
from pipelines.offline.tiny import CLIP_VIT_L_REPO, FLUX_BASE, FLUX_IP_ADAPTER_REPO
from tests.conftest import pixels

SIZE = 64


@pytest.fixture(scope="module")
def flux(tiny_root):
    arch = architecture("flux")
    pipe = arch.pipeline_class().from_pretrained(str(tiny_root / FLUX_BASE), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return arch, pipe


def stock(pipe, **kwargs):
    return pipe(prompt="a lighthouse at dusk", num_inference_steps=3, guidance_scale=3.5, width=SIZE, height=SIZE,
                generator=torch.Generator("cpu").manual_seed(4), **kwargs).images[0]  # fmt: skip


def ours(arch, pipe, **kwargs):
    text = arch.encode_text(pipe, "a lighthouse at dusk", "", guided=arch.cfg_batch(3.5))
    latents = arch.initial_latents(pipe, 4, SIZE, SIZE)
    return pipe(**text, latents=latents, num_inference_steps=3, guidance_scale=3.5, width=SIZE, height=SIZE,
                **kwargs).images[0]  # fmt: skip


def test_flux_text_and_noise_equal_stock_flux_pipeline(flux):
    arch, pipe = flux
    assert arch.denoiser(pipe) is pipe.transformer and len(arch.text_encoders(pipe)) == 2
    assert not arch.cfg_batch(3.5)  # distilled guidance: one row per image
    assert np.array_equal(pixels(ours(arch, pipe)), pixels(stock(pipe)))


def test_flux_xlabs_ip_adapter_loads_in_its_published_key_format(flux, tiny_root, gold):
    """`FluxPipeline.load_ip_adapter` reads the XLabs file (ip_adapter_proj_model.*, double_blocks.*.processor.*)
    onto every double-stream block; scale 0 is exactly text only, 1 changes the image."""
    arch, pipe = flux
    text_only = pixels(stock(pipe))
    pipe.load_ip_adapter(str(tiny_root / FLUX_IP_ADAPTER_REPO), weight_name="ip_adapter.safetensors",
                         image_encoder_pretrained_model_name_or_path=str(tiny_root / CLIP_VIT_L_REPO),
                         local_files_only=True)  # fmt: skip
    try:
        processors = arch.denoiser(pipe).attn_processors
        assert sum(type(p).__name__ == "FluxIPAdapterAttnProcessor" for p in processors.values()) == 2
        pipe.set_ip_adapter_scale(0.0)
        assert np.array_equal(pixels(stock(pipe, ip_adapter_image=gold)), text_only)
        pipe.set_ip_adapter_scale(1.0)
        assert np.abs(pixels(stock(pipe, ip_adapter_image=gold)) - text_only).mean() > 1.0
    finally:
        pipe.unload_ip_adapter()


def test_sd_noise_is_the_engines(engines, family):
    """The SD architecture draws what the engine always drew: (1, 4, h / 8, w / 8) from a CPU generator."""
    engine = engines[family]
    engine.load()
    noise = engine.arch.initial_latents(engine.pipe, 7, 64, 48)
    expected = torch.randn((1, 4, 6, 8), generator=torch.Generator("cpu").manual_seed(7))
    assert torch.equal(noise, expected)


def test_the_request_codec_knows_which_architectures_take_regions():
    """One fact per architecture (presets.ARCHITECTURES, no torch import): the codec refuses regions where its
    attention takes no region mask."""
    from pipelines.presets import ARCHITECTURES, PIPELINE_KINDS

    assert set(ARCHITECTURES) == set(PIPELINE_KINDS) and all(architecture(k).name == k for k in PIPELINE_KINDS)
    assert not ARCHITECTURES["flux"].regions and ARCHITECTURES["sdxl"].regions and ARCHITECTURES["sd15"].regions


def test_an_architecture_refuses_by_name_the_values_it_does_not_take():
    """Each architecture says which conditioning values its passes take; any other is refused with its name."""
    from PIL import Image

    from pipelines import InvalidRequestError
    from pipelines.conditioning import ControlResiduals, PromptTokens, StartImage

    start = StartImage(Image.new("RGB", (8, 8)), 0.5)
    controls = ControlResiduals(None, [[1.0]], [Image.new("RGB", (8, 8))], [None], [(0.0, 1.0)])
    for value in (start, controls):
        with pytest.raises(InvalidRequestError, match=type(value).__name__):
            architecture("flux").check([value])
        architecture("sd15").check([value])  # SD takes both
    with pytest.raises(InvalidRequestError, match="PromptTokens"):
        architecture("sdxl").check([PromptTokens([])])
    architecture("flux").check([PromptTokens([])])
