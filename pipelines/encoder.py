"""The image-prompt encoder: CLIP features and face identities of the references, one shared LRU, previews.

CLIP vision towers are loaded once and shared by every adapter that names them; insightface's pack is loaded on
first use. Features are cached by image content, encoder, crop and dtype, and face analysis by image content, both
kept apart per visitor `scope`: a repeated reference costs no encoder call and no detection, and nobody can learn
from timings or counters whether someone else used the same photo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .errors import InvalidRequestError
from .face import FaceAnalyzer, face_views, flip_channels, identity
from .images import ReferenceImage, square_for_encoder
from .lru import LRU
from .presets import AdapterSpec, ImageEncoderSpec

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from .sources import ModelSource


@dataclass
class ImageEmbeds:
    """One adapter component's image prompt: (1, n_images, ...) tensors; `clip_*` only for FaceID Plus."""

    cond: torch.Tensor
    uncond: torch.Tensor  # zeros / the features of a blank image, or those of the negative references
    clip_cond: torch.Tensor | None = None  # (1, 1, tokens, dim) CLIP features of the aligned face crops
    clip_uncond: torch.Tensor | None = None

    def for_pipeline(self, guided: bool) -> torch.Tensor:
        return torch.cat([self.uncond, self.cond]) if guided else self.cond

    def clip_batch(self, batch: int, guided: bool) -> torch.Tensor:
        """(2B or B, 1, tokens, dim) as [uncond x B, cond x B], the order of the UNet batch."""
        cond = self.clip_cond.repeat(batch, 1, 1, 1)
        return torch.cat([self.clip_uncond.repeat(batch, 1, 1, 1), cond]) if guided else cond


def _like(negative: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Negative features shaped as the positive ones: as they are when the image counts match, else their mean
    repeated (attention over identical copies of one set of tokens equals attention over that set)."""
    if negative.shape == cond.shape:
        return negative
    return negative.mean(dim=1, keepdim=True).expand_as(cond)


class ImagePromptEncoder:
    """Turns references into what an adapter's image projection takes, through one LRU shared by all adapters."""

    def __init__(
        self,
        source: ModelSource,
        device: str,
        dtype: torch.dtype,
        counters: Counter[str],
        cache_size: int = 64,
    ) -> None:
        self.source = source
        self.device = device
        self.dtype = dtype
        self.counters = counters  # encoder_calls, embed_cache_hits, embed_cache_misses (the engine's counter)
        self.cache = LRU(cache_size)
        self._towers: dict[ImageEncoderSpec, tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]] = {}
        self._blank: dict[ImageEncoderSpec, torch.Tensor] = {}
        self._faces: FaceAnalyzer | None = None

    # ----------------------------------------------------------------------------------------------- models

    def tower(self, spec: ImageEncoderSpec) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
        """A CLIP vision tower and its preprocessing, loaded once and shared by every adapter that names it."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        if spec not in self._towers:
            encoder = self.source.from_pretrained(
                CLIPVisionModelWithProjection.from_pretrained, spec.repo, subfolder=spec.subfolder, dtype=self.dtype
            )
            encoder.to(self.device).eval()
            size = encoder.config.image_size
            # The preprocessing diffusers' `load_ip_adapter` sets up: shortest side to `size`, centre crop.
            self._towers[spec] = (encoder, CLIPImageProcessor(size=size, crop_size=size))
        return self._towers[spec]

    def blank_hidden(self, spec: ImageEncoderSpec) -> torch.Tensor:
        """(1, tokens, dim) penultimate features of an all-zero input: the unconditional hidden-state prompt."""
        if spec not in self._blank:
            encoder, _ = self.tower(spec)
            pixels = torch.zeros(1, 3, encoder.config.image_size, encoder.config.image_size)
            with torch.inference_mode():
                self._blank[spec] = encoder(
                    pixels.to(self.device, self.dtype), output_hidden_states=True
                ).hidden_states[-2]
        return self._blank[spec]

    def face_analyzer(self) -> FaceAnalyzer:
        """The family's insightface pack, created on first use and shared by every request."""
        if self._faces is None:
            family = self.source.family
            spec = self.source.face_spec()
            if spec is None:
                raise InvalidRequestError("variant", f"model family {family.name!r} has no face analysis")
            self._faces = FaceAnalyzer(
                spec, family.name, use_cuda=self.device.startswith("cuda"), drawn_only=family.source != "hub"
            )
        return self._faces

    @property
    def face_detections(self) -> int:
        return self._faces.counters["detections"] if self._faces else 0

    def clear(self) -> None:
        """Forget every cached embedding (benchmarks measure cold encodes with it)."""
        self.cache = LRU(self.cache.size)

    # ----------------------------------------------------------------------------------------------- encoding

    def embed(
        self,
        specs: Sequence[AdapterSpec],
        groups: Sequence[Sequence[ReferenceImage]],
        crop: str,
        scope: str,
        negative: Sequence[ReferenceImage] = (),
        label: str = "reference",
    ) -> tuple[list[ImageEmbeds], list[str], list[Image.Image]]:
        """Each component's image prompt (component i sees `groups[i]`), with warnings and previews for the person.

        `negative` (images whose look should not carry over) replaces the unconditional embedding of the component
        that sees `groups[0]` (the references); the others keep theirs. `label` names the images in messages
        ("slot 2 image 1").
        """
        embeds, warnings, previews = [], [], []
        for i, (spec, images) in enumerate(zip(specs, groups, strict=False)):
            if not images:
                raise InvalidRequestError(
                    "face_reference", "This adapter needs a face close-up: add one, or choose the adapter without face."
                )
            against = negative if i == 0 else ()
            if spec.uses_faces:
                item, notes, views = self._face_embeds(spec, images, scope, against, label)
                warnings += notes
                previews += views
            else:
                kind = spec.embeds
                cond = self.features(spec, images, crop, kind, scope)
                if against:
                    uncond = _like(self.features(spec, against, crop, kind, scope), cond)
                elif kind == "pooled":
                    uncond = torch.zeros_like(cond)
                else:
                    uncond = self.blank_hidden(spec.image_encoder)[None].expand_as(cond)
                item = ImageEmbeds(cond=cond, uncond=uncond)
            embeds.append(item)
        return embeds, warnings, previews

    def _face_embeds(
        self,
        spec: AdapterSpec,
        images: Sequence[ReferenceImage],
        scope: str,
        negative: Sequence[ReferenceImage],
        label: str = "reference",
    ) -> tuple[ImageEmbeds, list[str], list[Image.Image]]:
        """One averaged identity (1, 1, 1, 512), plus for FaceID Plus the mean CLIP features of the aligned crops."""
        analyzer = self.face_analyzer()
        results, notes = analyzer.analyze(images, label=label, scope=scope)
        views = face_views(images, results)
        ident = torch.from_numpy(identity(results)).to(self.device, self.dtype).view(1, 1, 1, -1)
        uncond = torch.zeros_like(ident)
        against = []
        if negative:
            against, more = analyzer.analyze(negative, label="negative image", scope=scope)
            notes = notes + more
            uncond = torch.from_numpy(identity(against)).to(self.device, self.dtype).view(1, 1, 1, -1)
        item = ImageEmbeds(cond=ident, uncond=uncond)
        if spec.embeds == "faceid-plus":
            item.clip_cond = self._crop_features(spec, results, images, scope)
            item.clip_uncond = (
                self._crop_features(spec, against, negative, scope)
                if negative
                else self.blank_hidden(spec.image_encoder)[None]
            )
        return item, notes, views

    def _crop_features(self, spec: AdapterSpec, results: Sequence, images: Sequence, scope: str) -> torch.Tensor:
        """(1, 1, tokens, dim): the mean CLIP features of the aligned face crops (one identity)."""
        order = spec.face_crop_channels  # preset data, with the evidence in models.toml
        crops = [
            ReferenceImage(
                flip_channels(r.aligned) if order == "bgr" else r.aligned,
                f"aligned-{order}:{img.sha256}",
            )
            for r, img in zip(results, images, strict=True)
        ]
        hidden = self.features(spec, crops, "center", "hidden", scope)  # (1, n, tokens, dim)
        return hidden.mean(dim=1, keepdim=True)

    def features(
        self, spec: AdapterSpec, images: Sequence[ReferenceImage], crop: str, kind: str, scope: str
    ) -> torch.Tensor:
        """(1, n, D) pooled embeddings or (1, n, tokens, dim) penultimate hidden states, through the LRU cache."""
        key = (scope, spec.image_encoder, kind, crop, str(self.dtype), tuple(r.sha256 for r in images))
        cond = self.cache.get(key)
        if cond is not None:
            self.counters["embed_cache_hits"] += 1
            return cond
        self.counters["embed_cache_misses"] += 1
        encoder, _ = self.tower(spec.image_encoder)
        pixels = self.pixels(spec, images, crop)  # (n, 3, S, S)
        self.counters["encoder_calls"] += 1
        with torch.inference_mode():
            if kind == "pooled":
                cond = encoder(pixels).image_embeds  # (n, D)
            else:
                cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (n, tokens, dim)
        cond = cond[None]  # one sample holding n images: the adapter attends to all their tokens together
        self.cache.put(key, cond)
        return cond

    def pixels(self, spec: AdapterSpec, images: Sequence[ReferenceImage], crop: str) -> torch.Tensor:
        """The encoder's input after the crop mode, resize and centre crop: (n, 3, S, S)."""
        _, processor = self.tower(spec.image_encoder)
        squares = [square_for_encoder(r.image, crop) for r in images]
        return processor(images=squares, return_tensors="pt").pixel_values.to(self.device, self.dtype)

    # ----------------------------------------------------------------------------------------------- previews

    def views(
        self, specs: Sequence[AdapterSpec], groups: Sequence[Sequence[ReferenceImage]], crop: str, scope: str
    ) -> list[Image.Image]:
        """What the adapter sees: each face box and aligned crop, then each CLIP input as a picture."""
        out: list[Image.Image] = []
        for spec, images in zip(specs, groups, strict=False):
            if images and spec.uses_faces:
                results, _ = self.face_analyzer().analyze(images, scope=scope)
                out += face_views(images, results)
        return out + self.clip_views(specs, groups, crop)

    def clip_views(
        self, specs: Sequence[AdapterSpec], groups: Sequence[Sequence[ReferenceImage]], crop: str
    ) -> list[Image.Image]:
        """The CLIP components' inputs after crop mode, resize and centre crop, as pictures (preprocessing only)."""
        views = []
        for spec, images in zip(specs, groups, strict=False):
            if not images or spec.uses_faces:
                continue
            pixels = self.pixels(spec, images, crop).float().cpu()  # (n, 3, S, S)
            _, proc = self.tower(spec.image_encoder)
            mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
            arr = ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            views += [Image.fromarray(a) for a in arr]
        return views
