"""FLUX Redux as an image prompt: the reference as extra text tokens (SigLIP features through the Redux embedder), each
sample's tokens scaled by its own strength, the prompt's tokens never scaled.

diffusers' `FluxPriorReduxPipeline` scales the text and the image tokens together (`prompt_embeds_scale`), which
users report "nullifies the prompt". Here only the image tokens carry the strength: strength 0 leaves them out
(exactly the text-only image), and in a batch where some samples are at 0 an attention mask hides those samples'
image tokens (FLUX attends over text and image tokens jointly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .images import ReferenceImage
from .lru import LRU
from .presets import AdapterSpec
from .sources import ModelSource


class ReduxEncoder:
    """The Redux checkpoint's SigLIP tower, processor and embedder, loaded on first use; tokens cached per visitor."""

    def __init__(self, source: ModelSource, device: str, dtype: torch.dtype, counters: Any, cache_size: int) -> None:
        self.source, self.device, self.dtype, self.counters = source, device, dtype, counters
        self._models: dict[str, tuple[Any, Any, Any]] = {}
        self.cache = LRU(cache_size)

    def models(self, spec: AdapterSpec) -> tuple[Any, Any, Any]:
        if spec.repo not in self._models:
            from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
            from transformers import SiglipImageProcessor, SiglipVisionModel

            load = self.source.from_pretrained
            tower = load(SiglipVisionModel.from_pretrained, spec.repo, subfolder="image_encoder", dtype=self.dtype)
            processor = load(SiglipImageProcessor.from_pretrained, spec.repo, subfolder="feature_extractor")
            embedder = load(ReduxImageEncoder.from_pretrained, spec.repo, subfolder="image_embedder", dtype=self.dtype)
            self._models[spec.repo] = (tower.to(self.device).eval(), processor, embedder.to(self.device).eval())
            self.counters["adapter_loads"] += 1
        return self._models[spec.repo]

    def tokens(self, spec: AdapterSpec, references: Sequence[ReferenceImage], scope: str) -> torch.Tensor:
        """(1, n x tokens, T5 width): each reference's Redux tokens, in order (as FluxPriorReduxPipeline makes
        them for one image), side by side."""
        key = (scope, spec.repo, str(self.dtype), tuple(r.sha256 for r in references))
        cached = self.cache.get(key)
        if cached is not None:
            self.counters["embed_cache_hits"] += 1
            return cached
        tower, processor, embedder = self.models(spec)
        pixels = processor.preprocess(images=[r.image for r in references], do_resize=True, return_tensors="pt",
                                      do_convert_rgb=True)  # fmt: skip
        with torch.inference_mode():
            hidden = tower(**pixels.to(device=self.device, dtype=self.dtype)).last_hidden_state
            tokens = embedder(hidden).image_embeds  # (n, tokens, width)
        self.counters["encoder_calls"] += 1
        out = tokens.reshape(1, -1, tokens.shape[-1])
        self.cache.put(key, out)
        return out


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
