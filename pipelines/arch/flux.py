"""FLUX.1: a transformer denoiser (19 double-stream and 38 single-stream blocks), CLIP + T5 text encoders,
guidance distilled into the model (one row per image; true CFG would be a second call), 16-channel latents packed
into 2 x 2 patches.

The seam's second architecture: the `flux` and `tiny-flux` families (General tab, XLabs IP-Adapter).
"""

from __future__ import annotations

from typing import Any

import torch

from . import Architecture

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, FLUX.1-dev's default


class Flux(Architecture):
    name = "flux"

    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        from . import flux_attention  # noqa: F401 - registers FLUX's per-sample IP-Adapter processor with the pipeline

        return FluxPipeline

    def structure_pipeline(self, controls: bool, img2img: bool) -> str:
        raise NotImplementedError("structure slots are not offered on FLUX yet")

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.transformer

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def prompt_tokenizer(self, pipe: Any) -> tuple[Any, int]:
        """T5 reads the prompt in full up to `MAX_SEQUENCE_LENGTH` tokens (less its end token); CLIP's 77 only feed
        the pooled vector, so a prompt past them is not cut."""
        return pipe.tokenizer_2, MAX_SEQUENCE_LENGTH - 1

    def encode_text(self, pipe: Any, prompt: str, negative_prompt: str, guided: bool) -> dict[str, torch.Tensor]:
        """The same `encode_prompt` call FluxPipeline makes (CLIP pooled + T5 tokens); `guided` (true CFG, a second
        call per step) also encodes the negative prompt."""
        out = {}
        for name, text in (("", prompt), ("negative_", negative_prompt)) if guided else (("", prompt),):
            with torch.inference_mode():
                embeds, pooled, _ = pipe.encode_prompt(
                    prompt=text, prompt_2=None, device=pipe._execution_device, num_images_per_prompt=1,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                )  # fmt: skip
            out |= {f"{name}prompt_embeds": embeds, f"{name}pooled_prompt_embeds": pooled}
        return out

    regions = False  # diffusers' FLUX processor ignores masks; on packed tokens they are not proven here yet

    def ip_adapter_load_kwargs(self) -> dict[str, Any]:
        return {"image_encoder_pretrained_model_name_or_path": None}

    def ip_adapter_call_kwargs(self, embeds: list[torch.Tensor], negative: list[torch.Tensor]) -> dict[str, Any]:
        """FluxPipeline reads negative image embeds in its true-CFG pass only, but encodes a black image for them
        whenever none are given: without true CFG the image prompt's own are handed over (and never read)."""
        return {"negative_ip_adapter_image_embeds": negative or embeds}

    def cfg_batch(self, guidance: float) -> bool:
        return False  # distilled guidance: the guidance value is an input of the transformer

    def initial_latents(self, pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
        """FluxPipeline.prepare_latents' noise: (1, 16, 2 * (h // 16), 2 * (w // 16)), packed to (1, tokens, 64)."""
        from diffusers.utils.torch_utils import randn_tensor

        channels = pipe.transformer.config.in_channels // 4
        h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
        w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = randn_tensor((1, channels, h, w), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return pipe._pack_latents(noise, 1, channels, h, w)
