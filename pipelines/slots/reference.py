"""In-context references (FLUX.2 [klein]): the model reads each reference image itself, as extra latent tokens.

Each reference is prepared as the stock pipeline prepares it (down to 1 megapixel when larger, cropped to a multiple
of 16) and encoded by the base's own autoencoder once per visitor; each pass gets one `ReferenceLatents` value with
every reference prompt's per-sample strengths and window. How the strengths act is the architecture's
(`pipelines/arch/flux2.py`): at 1 the stock pipeline, at 0 the image without that prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..conditioning import ReferenceLatents
from ..errors import InvalidRequestError
from ..images import ReferenceImage
from ..lru import LRU
from ..plan import Pass, step_window


class ReferenceEncoder:
    """Reference latents through the base's autoencoder, cached per visitor (scope), base and reference."""

    def __init__(self, arch: Any, counters: Any, cache_size: int) -> None:
        self.arch, self.counters = arch, counters
        self.cache = LRU(cache_size)

    def pixels(self, pipe: Any, reference: ReferenceImage) -> torch.Tensor:
        """What the model reads of a reference: the stock pipeline's resize and crop, as a (1, 3, h, w) tensor."""
        try:
            return self.arch.reference_image(pipe, reference.image.convert("RGB"))
        except ValueError as e:  # the pipeline's own check (e.g. "Image too small: 48x48. Both dimensions ...")
            raise InvalidRequestError("reference", f"This model cannot read that reference: {e}") from None

    def latents(self, base: Any, reference: ReferenceImage, scope: str) -> torch.Tensor:
        pipe = base.pipe
        key = (scope, base.name, str(pipe.vae.dtype), reference.sha256)
        cached = self.cache.get(key)
        if cached is not None:
            self.counters["embed_cache_hits"] += 1
            return cached
        out = self.arch.encode_reference(pipe, self.pixels(pipe, reference))
        self.counters["encoder_calls"] += 1
        self.cache.put(key, out)
        return out

    def clear(self) -> None:
        self.cache = LRU(self.cache.size)


class ReferenceShare:
    """A request's reference prompts: per prompt (declared index, its images' latents, start_at, stop_at)."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, list[torch.Tensor], float, float]] = []
        self.previews: list[Image.Image] = []
        self.ids: dict[int, str] = {}

    def values(self, cells: Sequence[tuple[float, ...]], run: Pass) -> list[ReferenceLatents]:
        """The pass's `ReferenceLatents`: the prompts not at 0 in every cell (none when all are)."""
        parts = [
            (latents, [cell[i] for cell in cells], step_window(start, stop, run.steps))
            for i, latents, start, stop in self.parts
            if any(cell[i] for cell in cells)
        ]
        return [ReferenceLatents(parts)] if parts else []


class ReferenceKind:
    """In-context reference slots: checked against the model's limit, encoded once per visitor, previewed as the
    model reads them."""

    def __init__(self, family: Any, encoder: ReferenceEncoder) -> None:
        self.family, self.encoder = family, encoder

    def prepare(self, prompts: Sequence[Any], indices: list[int], base: Any, scope: str) -> ReferenceShare:
        share = ReferenceShare()
        if not indices:
            return share
        spec = self.family.adapters[prompts[indices[0]].variant]
        images = sum(len(prompts[i].references) for i in indices)
        if spec.max_images and images > spec.max_images:
            raise InvalidRequestError(
                "reference", f"This model reads at most {spec.max_images} reference images in one image; the request "
                f"has {images}. Leave some out, or put them side by side in one picture."
            )  # fmt: skip
        for i in indices:
            if prompts[i].negative_references:
                raise InvalidRequestError(
                    "negative_reference", "In-context references take no negative images: leave them out, or lower "
                    "the strength below 1 to hold the reference back."
                )  # fmt: skip
        for i in indices:
            prompt = prompts[i]
            latents = [self.encoder.latents(base, r, scope) for r in prompt.references]
            share.parts.append((i, latents, prompt.start_at, prompt.stop_at))
            share.ids[i] = self.family.adapters[prompt.variant].id
        share.previews = self.views(base, [prompts[i] for i in indices])
        return share

    def views(self, base: Any, prompts: Sequence[Any]) -> list[Image.Image]:
        """What the model reads of each reference: the stock pipeline's resize and crop."""
        views = []
        for prompt in prompts:
            for reference in prompt.references:
                pixels = self.encoder.pixels(base.pipe, reference)
                views += base.pipe.image_processor.postprocess(pixels, output_type="pil")
        return views
