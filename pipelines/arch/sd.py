"""Stable Diffusion (SD1.5 and SDXL): a UNet denoiser, CLIP text encoders, one `[uncond, cond]` batch under
classifier-free guidance, 4-channel latents at 1/8 of the image size."""

from __future__ import annotations

from typing import Any

import torch

from ..conditioning import ControlResiduals, ImageAttention, StartImage
from . import Architecture

# The diffusers pipeline for (SDXL?, with ControlNets, with a start image); the base pipeline runs neither.
STRUCTURE_PIPELINES = {
    (False, True, False): "StableDiffusionControlNetPipeline",
    (False, False, True): "StableDiffusionImg2ImgPipeline",
    (False, True, True): "StableDiffusionControlNetImg2ImgPipeline",
    (True, True, False): "StableDiffusionXLControlNetUnionPipeline",
    (True, False, True): "StableDiffusionXLImg2ImgPipeline",
    (True, True, True): "StableDiffusionXLControlNetUnionImg2ImgPipeline",
}
TEXT_KEYWORDS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


class StableDiffusion(Architecture):
    accepts = frozenset({ImageAttention, ControlResiduals, StartImage})

    def __init__(self, xl: bool) -> None:
        self.xl = xl
        self.name = "sdxl" if xl else "sd15"
        self.controlnet_union = xl  # SDXL runs one union ControlNet for every map type (its `control_mode`)

    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.xl else StableDiffusionPipeline

    def structure_pipeline(self, controls: bool, img2img: bool) -> str:
        return STRUCTURE_PIPELINES[(self.xl, controls, img2img)]

    def controlnet_call_kwargs(self, controls: ControlResiduals, img2img: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.xl:
            kwargs["control_image"] = controls.maps  # the pipeline makes them one list per net
            kwargs["control_mode"] = controls.union_modes
        else:
            kwargs["control_image" if img2img else "image"] = controls.maps
        kwargs["controlnet_conditioning_scale"] = [1.0] * len(controls.maps)
        kwargs["control_guidance_start"] = [start for start, _ in controls.windows]
        kwargs["control_guidance_end"] = [stop for _, stop in controls.windows]
        return kwargs

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.unet

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]

    def encode_text(self, pipe: Any, prompt: str, negative_prompt: str, guided: bool) -> dict[str, torch.Tensor]:
        """The same `encode_prompt` call the pipeline makes."""
        with torch.inference_mode():
            out = pipe.encode_prompt(
                prompt=prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=negative_prompt or None,
            )
        return {name: value for name, value in zip(TEXT_KEYWORDS, out, strict=False) if value is not None}

    def ip_adapter_load_kwargs(self) -> dict[str, Any]:
        return {"image_encoder_folder": None}

    def cfg_batch(self, guidance: float) -> bool:
        return guidance > 1

    def initial_latents(self, pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        scale = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, height // scale, width // scale)
        generator = torch.Generator("cpu").manual_seed(seed)
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
