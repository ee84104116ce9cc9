"""FLUX.1: a transformer denoiser (19 double-stream and 38 single-stream blocks), CLIP + T5 text encoders,
guidance distilled into the model (one row per image; true CFG would be a second call), 16-channel latents packed
into 2 x 2 patches.

The seam's second architecture: the `flux` and `tiny-flux` families (General tab, XLabs IP-Adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..conditioning import ImageAttention, PromptTokens
from . import Architecture

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, FLUX.1-dev's default


class Flux(Architecture):
    name = "flux"
    accepts = frozenset({ImageAttention, PromptTokens})
    controlnet_union = False

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

    def join_tokens(
        self, text: dict[str, torch.Tensor], kwargs: dict[str, Any], tokens: PromptTokens, batch: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Redux: per-sample prompt embeddings (the text's, then each part's tokens x strength), one row per sample;
        where some sample hides a part (strength 0), an attention mask over [text, image tokens, latents]."""
        parts = [(t, s) for t, s in tokens.parts if any(s)]
        if not parts:
            return text, kwargs
        text, keep = with_tokens(text, parts, batch)
        kwargs = {**kwargs, "num_images_per_prompt": 1}
        for key in ("ip_adapter_image_embeds", "negative_ip_adapter_image_embeds"):  # one row per sample now
            if key in kwargs:
                kwargs[key] = [e.repeat(batch, *([1] * (e.dim() - 1))) for e in kwargs[key]]
        if keep is not None:  # the image's keys follow the text's: one per packed latent
            image = torch.ones(batch, kwargs["latents"].shape[1], dtype=torch.bool)
            mask = torch.cat([keep, image], dim=1)[:, None, None, :].to(kwargs["latents"].device)
            kwargs["joint_attention_kwargs"] = {"attention_mask": mask}
        return text, kwargs


def with_tokens(
    text: dict[str, torch.Tensor], parts: Sequence[tuple[torch.Tensor, Sequence[float]]], batch: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-sample prompt embeddings: the text's tokens, then each Redux prompt's tokens times that sample's strength;
    and, when some sample has a Redux prompt at 0, a (batch, 1, 1, keys) attention mask over [text, Redux tokens,
    image latents] that hides those tokens from that sample (None when every token is seen)."""
    embeds = text["prompt_embeds"].repeat(batch, 1, 1)
    hidden: list[torch.Tensor] = []
    for tokens, strengths in parts:
        scale = torch.tensor(strengths, device=tokens.device, dtype=tokens.dtype).view(batch, 1, 1)
        embeds = torch.cat([embeds, tokens.repeat(batch, 1, 1) * scale], dim=1)
        hidden.append(torch.tensor([s == 0 for s in strengths]).view(batch, 1).expand(batch, tokens.shape[1]))
    out = {**text, "prompt_embeds": embeds, "pooled_prompt_embeds": text["pooled_prompt_embeds"].repeat(batch, 1)}
    if not any(bool(h.any()) for h in hidden):
        return out, None
    keep = torch.cat([torch.ones(batch, text["prompt_embeds"].shape[1], dtype=torch.bool), *[~h for h in hidden]], 1)
    return out, keep
