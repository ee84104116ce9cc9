"""IP-Adapter kinds (general, face, anime, style): image prompts that act in the denoiser's attention.

Every acting prompt is put on one combined adapter (`AdapterBank`), its references encoded once per request (CLIP
features, face identities: `ImagePromptEncoder`), and each pass gets one `ImageAttention` value with the pass's
per-sample strengths, steps windows, regions and layer weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..adapters import AdapterBank, LoadedAdapter
from ..attention import PromptScale, prompt_scales
from ..bases import LoadedBase
from ..conditioning import ImageAttention
from ..encoder import ImageEmbeds, ImagePromptEncoder
from ..images import load_reference
from ..plan import Pass, step_window
from ..request import GenerationRequest, ImagePrompt


def region_mask(region: str, width: int, height: int) -> torch.Tensor | None:
    """(1, height, width): 1 inside the region, 0 outside; None for the whole image."""
    if region == "whole":
        return None
    mask = torch.zeros(1, height, width)
    if region == "left":
        mask[:, :, : width // 2] = 1
    elif region == "right":
        mask[:, :, width // 2 :] = 1
    elif region == "top":
        mask[:, : height // 2, :] = 1
    elif region == "bottom":
        mask[:, height // 2 :, :] = 1
    else:
        raise ValueError(f"unknown region {region!r}")
    return mask


class AttentionShare:
    """A request's attention image prompts on one combined adapter, with their embeddings (none: no adapter)."""

    def __init__(self, indices: list[int], prompts: list[ImagePrompt], adapter: LoadedAdapter | None) -> None:
        self.indices, self.prompts, self.adapter = indices, prompts, adapter
        self.embeds: list[ImageEmbeds] = []
        self.prompt_of: list[int] = []  # adapter component -> index into `prompts`
        self.negative: list[torch.Tensor] = []  # true CFG: each component's black image
        self.weights: list[dict[str, float] | None] = []
        self.masks: list[torch.Tensor | None] = []
        self.previews: list[Image.Image] = []
        self.ids: dict[int, str] = {}  # declared index -> the adapter checkpoint that read it
        self.ramps: dict[int, list[float]] = {}  # declared index -> its layer ramp (first to last adapter layer)
        self.strength_scale = 1.0  # fast mode's scale on every strength
        self.device, self.dtype = "cpu", torch.float32
        self.faces_before: int | None = None  # face detections before the request (face kinds)
        self.encoder: ImagePromptEncoder | None = None

    def values(self, cells: Sequence[tuple[float, ...]], run: Pass, guided: bool) -> list[ImageAttention]:
        """The pass's one `ImageAttention` (none without an adapter)."""
        if self.adapter is None:
            return []
        state = []  # FaceID Plus projections read CLIP features from module attributes (diffusers' API)
        for j, e in enumerate(self.embeds):
            if e.clip_cond is not None:
                layer = self.adapter.image_proj.image_projection_layers[j]
                structure = self.prompts[self.prompt_of[j]].structure
                during = {"clip_embeds": e.clip_batch(len(cells), guided), "shortcut": True,  # FaceID Plus v2
                          "shortcut_scale": 1.0 if structure is None else structure}  # fmt: skip
                state.append((layer, during, {"clip_embeds": None, "shortcut_scale": 1.0}))
        per_prompt = []
        for n, prompt in enumerate(self.prompts):
            first, stop = step_window(prompt.start_at, prompt.stop_at, run.steps)  # of the steps this pass runs
            strengths = [cell[self.indices[n]] * self.strength_scale for cell in cells]
            per_prompt.append(PromptScale(strengths, self.weights[n], first, stop, self.masks[n]))
        scales = prompt_scales(per_prompt, guided, self.device, self.dtype, self.prompt_of)
        embeds = [e.for_pipeline(guided) for e in self.embeds]
        return [ImageAttention(embeds, self.negative, scales, state)]

    def metadata(self) -> dict[str, Any]:
        adapter = self.adapter
        encoders = [f"{c.spec.image_encoder.repo}/{c.spec.image_encoder.subfolder}"
                    for c in (adapter.components if adapter else []) if c.spec.image_encoder is not None]  # fmt: skip
        return {
            "adapters": [adapter.id] if adapter else [],
            "image_encoder": " + ".join(encoders) or None,
            "uses_faces": bool(adapter and adapter.uses_faces),
        }

    def diagnostics(self, used: Any) -> dict[str, Any]:
        if self.adapter is None or not self.adapter.uses_faces or self.encoder is None:
            return {}
        return {"face_detections": self.encoder.face_detections - (self.faces_before or 0)}


class AttentionKinds:
    """Prepares the IP-Adapter kinds of a request on a base (`prepare`) and shows what their encoders see."""

    def __init__(self, family: Any, encoder: ImagePromptEncoder, bank: AdapterBank, device: str, dtype: Any) -> None:
        self.family, self.encoder, self.bank, self.device, self.dtype = family, encoder, bank, device, dtype

    def prepare(
        self,
        request: GenerationRequest,
        base: LoadedBase,
        indices: list[int],
        scope: str,
        warnings: list[str],
        true_cfg: float,
    ) -> AttentionShare:
        """Activate the combined adapter of the prompts at `indices` (none: no adapter) and encode their references."""
        declared = request.image_prompts
        prompts = [declared[i] for i in indices]
        fast = request.settings.speed == "fast"
        faces_before = self.encoder.face_detections
        if not prompts:
            self.bank.activate(base, None, fast)
            return AttentionShare([], [], None)
        key = tuple(p.variant for p in prompts)
        share = AttentionShare(indices, prompts, self.bank.get(base, key))
        self.bank.activate(base, key, fast)
        share.faces_before, share.encoder = faces_before, self.encoder
        share.device, share.dtype = self.device, self.dtype
        share.strength_scale = self.family.fast.strength_scale if fast else 1.0
        for n, prompt in enumerate(prompts):
            single = self.bank.get(base, prompt.variant)
            label = "reference" if indices[n] == 0 else f"slot {indices[n]} image"
            got, notes, views = self.encoder.embed(
                single.specs, prompt.groups, prompt.crop, scope, prompt.negative_references, label
            )
            share.embeds += got
            share.prompt_of += [n] * len(got)
            warnings += notes
            share.previews += views or self.encoder.clip_views(single.specs, prompt.groups, prompt.crop)
            share.ids[indices[n]] = single.id
            ramp = self.family.adapters[prompt.variant.split("+")[0]].layer_ramp
            if ramp is not None and prompt.block_map is None:
                share.ramps[indices[n]] = list(ramp)
        if true_cfg > 1:  # stock FLUX's negative image prompt: a black picture of the output size
            black = load_reference(Image.new("RGB", (request.settings.width, request.settings.height)))
            for prompt in prompts:
                got, _, _ = self.encoder.embed(self.bank.get(base, prompt.variant).specs, [(black,), ()], "center",
                                               scope)  # fmt: skip
                share.negative += [e.for_pipeline(False) for e in got]
        share.weights = [self.bank.layer_weights(base, p.variant, p.block_map) for p in prompts]
        share.masks = [region_mask(p.region, request.settings.width, request.settings.height) for p in prompts]
        return share

    def views(self, base: LoadedBase, prompt: ImagePrompt, scope: str) -> list[Image.Image]:
        """What the adapter sees of one prompt's references: the encoder's inputs, or each face box and crop."""
        adapter = self.bank.get(base, prompt.variant)
        return self.encoder.views(adapter.specs, prompt.groups, prompt.crop, scope)
