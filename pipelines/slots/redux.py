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
from PIL import Image

from ..conditioning import PromptTokens
from ..errors import InvalidRequestError
from ..images import ReferenceImage
from ..lru import LRU
from ..presets import AdapterSpec
from ..sources import ModelSource


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


class ReduxShare:
    """A request's Redux prompts: each one's tokens (declared index, tokens), what SigLIP saw, its checkpoint."""

    def __init__(self) -> None:
        self.tokens: list[tuple[int, torch.Tensor]] = []
        self.previews: list[Any] = []
        self.ids: dict[int, str] = {}

    def values(self, cells: Sequence[tuple[float, ...]]) -> list[PromptTokens]:
        """The pass's `PromptTokens`: the prompts not at 0 in every cell (none when all are)."""
        parts = [(t, [cell[i] for cell in cells]) for i, t in self.tokens if any(cell[i] for cell in cells)]
        return [PromptTokens(parts)] if parts else []


class ReduxKind:
    """FLUX Redux slots: checked, encoded into tokens once per request, previewed at SigLIP's input size."""

    def __init__(self, family: Any, encoder: ReduxEncoder) -> None:
        self.family, self.encoder = family, encoder

    def prepare(self, prompts: Sequence[Any], indices: list[int], scope: str, true_cfg: float) -> ReduxShare:
        share = ReduxShare()
        if indices and true_cfg > 1:
            raise InvalidRequestError(
                "variant", "Redux's image tokens make the prompt longer than its negative: not with true CFG."
            )
        for i in indices:
            if (prompts[i].start_at, prompts[i].stop_at) != (0.0, 1.0):
                raise InvalidRequestError(
                    "start_at", "Redux acts on every step (its tokens are part of the prompt): leave start_at at 0 "
                    "and stop_at at 1."
                )  # fmt: skip
        for i in indices:
            spec = self.family.adapters[prompts[i].variant]
            share.tokens.append((i, self.encoder.tokens(spec, prompts[i].references, scope)))
            share.ids[i] = spec.id
        share.previews = self.views([prompts[i] for i in indices])
        return share

    def views(self, prompts: Sequence[Any]) -> list[Any]:
        """What Redux's SigLIP tower sees of each reference (its processor's resize)."""
        views = []
        for prompt in prompts:
            _, processor, _ = self.encoder.models(self.family.adapters[prompt.variant])
            size = processor.size
            views += [r.image.convert("RGB").resize((size["width"], size["height"]), Image.Resampling.BICUBIC)
                      for r in prompt.references]  # fmt: skip
        return views
