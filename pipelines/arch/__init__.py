"""The architecture seam: what differs between model architectures lives in one module per architecture.

The runner (`pipelines/engine.py`), the adapter bank, the slot kinds and the model source talk to an architecture
only through `Architecture`: its pipeline classes, its denoiser (a UNet, a transformer), its text encoders and text
encoding, its latents, and the denoising pass (`denoise`, fed the conditioning values the slot kinds hand it).
`sd.py` holds Stable Diffusion's (SD1.5 and SDXL); a family's `pipeline` key in presets/models.toml names the
architecture it runs on.

Checklist: a new architecture, in order (FLUX.1 went this way; `flux.py` is the shortest example, `flux2.py` the
one with its own denoising loop):
1. `presets/models.toml`: a family with `pipeline = "<name>"`, the modes it offers, and its tiny twin (`source =
   "tiny"`); the tiny twin's builder writes the real checkpoint formats (the offline builders).
2. `pipelines/arch/<name>.py`: a subclass of `Architecture` implementing, in this order, `pipeline_class` (the stock
   diffusers pipeline; `from_pretrained` loads both the real and the tiny family), `denoiser` and `text_encoders`
   (their calls are counted), `encode_text` (the same `encode_prompt` call the stock pipeline makes, once per
   request), `prompt_tokenizer` (what the prompt-length warning counts against), `cfg_batch` (the guidance layout),
   `initial_latents` (seeded noise exactly as the stock pipeline draws it), `ip_adapter_load_kwargs` /
   `ip_adapter_call_kwargs`, `structure_pipeline`; and its facts in `presets.ARCHITECTURES` (whether its attention
   takes a region mask, whether its structure pipelines are wired: one place, read by the codec and the presets).
   Then the pass: `accepts` (the conditioning values of `pipelines/conditioning.py` its passes take; the rest is
   refused by name), the keywords of each one it accepts beyond the shared ones (`controlnet_call_kwargs`,
   `join_tokens`), `guidance` when it has true CFG, and `denoise` only if the stock pipeline's `__call__` cannot run
   its pass (the default hands every value to it as keywords).
3. Register it in `architecture()` below. Import its diffusers model modules inside its methods or in a module of its
   own that loads with the model (`flux_attention.py`): start-up must not pay for them.
4. If image prompts act in its attention: a per-sample twin of the stock processor that calls
   `pipelines.attention.image_branch` (one function for every architecture), marked "Copied from diffusers ...",
   returned by a `twins()` that `pipelines.attention.twins` finds.
5. Tests before features: equal to the stock pipeline with the same weights and seed (strength 0 exactly, strength 1
   within 1/255, each equality failing when the stock call's strength is changed), a sweep in the denoiser calls of
   one image with cells equal to single renders, the full-size published config on the meta device (dry run), and
   the golden key sets (`tests/pipelines/test_golden.py`) extended by the new twin.
6. The app: tabs the family does not offer answer in one line; README (family, licence notice, memory row from
   parameter counts), the Space models list, `bench/` with and without the new engine's own features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from ..conditioning import (
    Conditioning,
    ControlResiduals,
    Guidance,
    ImageAttention,
    PassInput,
    PromptTokens,
    StartImage,
)
from ..errors import InvalidRequestError


class Architecture(ABC):
    """One model architecture, as the rest of the app needs it."""

    name: str  # the `pipeline` value of presets/models.toml
    accepts: frozenset[type] = frozenset({ImageAttention})  # the conditioning values its passes take

    @abstractmethod
    def pipeline_class(self) -> type:
        """The diffusers text-to-image pipeline of a base model."""

    @abstractmethod
    def structure_pipeline(self, controls: bool, img2img: bool) -> str:
        """The diffusers pipeline class name that runs ControlNets (`controls`) and/or a start image (`img2img`)."""

    @abstractmethod
    def denoiser(self, pipe: Any) -> torch.nn.Module:
        """The model called once per step per batch (the UNet, the transformer): its attention layers carry the
        image prompts, its calls are counted."""

    @abstractmethod
    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        """The text encoders a prompt goes through (their calls are counted)."""

    @abstractmethod
    def encode_text(self, pipe: Any, prompt: str, negative_prompt: str, guided: bool) -> dict[str, torch.Tensor]:
        """The prompt's embeddings for one sample, as keywords of the pipeline's call (the pipeline repeats them
        for each image of a batch)."""

    @abstractmethod
    def ip_adapter_load_kwargs(self) -> dict[str, Any]:
        """What `pipe.load_ip_adapter` needs besides the checkpoints so it loads no image encoder of its own (the
        app's encoder cache owns the encoders)."""

    def ip_adapter_call_kwargs(self, embeds: list[torch.Tensor], negative: list[torch.Tensor]) -> dict[str, Any]:
        """Keywords the pipeline's call needs beside `ip_adapter_image_embeds` (`negative`: the image prompt of a
        true-CFG pass, when there is one); none by default."""
        return {}

    def stock_call(self, text: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
        """`encode_text`'s embeddings and a guidance as keywords of the stock pipeline's own call (the batch timer
        calls it)."""
        return {**text, "guidance_scale": guidance}

    def notes(self, settings: Any) -> list[str]:
        """What the person should know of their settings on this architecture (a value it does not read)."""
        return []

    def prompt_tokenizer(self, pipe: Any) -> tuple[Any, int]:
        """The tokenizer of the text encoder that reads the most of a prompt, and how many of its tokens that encoder
        reads (the prompt-length warning counts against it); by default the first tokenizer, less its start and end
        tokens."""
        return pipe.tokenizer, pipe.tokenizer.model_max_length - 2

    @abstractmethod
    def cfg_batch(self, guidance: float) -> bool:
        """Whether a call at `guidance` denoises an `[uncond, cond]` batch (classifier-free guidance in one batch)
        rather than one row per image (no guidance, or guidance distilled into the model)."""

    @abstractmethod
    def initial_latents(self, pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
        """One sample's initial noise, drawn on the CPU from `seed` as the stock pipeline draws it from a CPU
        generator (identical on every device), in the form the pipeline's `latents` keyword takes."""

    # ------------------------------------------------------------------------------------------ one pass

    def guidance(self, adapters: Mapping[str, Any], variant: str, scale: float) -> Guidance:
        """The guidance layout of a call at `scale` when the tab's own adapter is `variant`: its `cfg_batch`, and the
        adapter's true CFG (presets; 1 = none, the only value for SD)."""
        spec = adapters.get(variant.split("+")[0])
        return Guidance(self.cfg_batch(scale), spec.true_cfg if spec is not None else 1.0)

    def check(self, conditioning: Sequence[Conditioning]) -> None:
        """Refuse, by name, a conditioning value this architecture's passes do not take."""
        for value in conditioning:
            if type(value) not in self.accepts:
                raise InvalidRequestError(
                    "slots", f"The {self.name} architecture does not take {type(value).__name__} (an image prompt "
                    f"of a kind it does not run)."
                )  # fmt: skip

    def controlnet_call_kwargs(self, controls: ControlResiduals, img2img: bool) -> dict[str, Any]:
        """The pipeline's ControlNet keywords (maps, windows; the scales come per sample)."""
        raise NotImplementedError(f"{self.name} runs no ControlNets")

    def join_tokens(
        self, text: dict[str, torch.Tensor], kwargs: dict[str, Any], tokens: PromptTokens, batch: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Per-sample prompt embeddings with image tokens joined to the text's (an architecture that accepts them)."""
        raise NotImplementedError(f"{self.name} joins no image tokens to its prompt")

    def denoise(self, job: PassInput) -> tuple[np.ndarray, list[bool]]:
        """One batched pass through the stock pipeline's own `__call__`: (images as floats in [0, 1], per image
        whether a safety checker hid it). Each conditioning value becomes the call's keywords; per-sample state is
        set for the call and reset after it, whatever happens."""
        self.check(job.conditioning)
        text, kwargs = dict(job.text), {"num_images_per_prompt": job.batch}
        of = {type(value): value for value in job.conditioning}
        attention, controls, start = of.get(ImageAttention), of.get(ControlResiduals), of.get(StartImage)
        if attention is not None:
            kwargs["ip_adapter_image_embeds"] = attention.embeds
            kwargs |= self.ip_adapter_call_kwargs(attention.embeds, attention.negative)
        if job.layout.true_cfg > 1:
            kwargs["true_cfg_scale"] = job.layout.true_cfg
        if controls is not None:
            kwargs |= self.controlnet_call_kwargs(controls, img2img=start is not None)
        if start is None:  # text to image: the seeded noise, at the requested size
            kwargs |= {"width": job.width, "height": job.height, "latents": job.latents}
        else:  # img2img draws the start latents and noise from the seed, one generator per sample (= single renders)
            kwargs |= {"image": start.image, "strength": 1.0 - start.strength}
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(job.seed) for _ in range(job.batch)]
        if PromptTokens in of:
            text, kwargs = self.join_tokens(text, kwargs, of[PromptTokens], job.batch)
        with ExitStack() as during:
            scales = during.enter_context(attention.scales) if attention is not None else None
            for module, values, after in attention.module_state if attention is not None else ():
                during.callback(_set, module, after)  # nothing of this request stays on the model
                _set(module, values)
            if controls is not None:
                during.callback(setattr, controls.per_sample, "scales", None)
                controls.per_sample.scales = [torch.tensor(s, dtype=torch.float32) for s in controls.strengths]
            if scales is not None:
                scales.set_step(0)

            def step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
                if scales is not None:
                    scales.set_step(i + 1)  # each prompt acts inside its own window of steps
                if job.on_step is not None:
                    job.on_step(i + 1)
                return callback_kwargs

            out = job.pipe(
                **text, num_inference_steps=job.steps, guidance_scale=job.guidance, output_type="np",
                callback_on_step_end=step_end, **kwargs,
            )  # fmt: skip
        hidden = getattr(out, "nsfw_content_detected", None) or [False] * job.batch  # SD1.5's safety checker
        return out.images, list(hidden)


def architecture(kind: str) -> Architecture:
    """The architecture a family's `pipeline` key names."""
    from .flux import Flux
    from .flux2 import Flux2
    from .sd import StableDiffusion

    known = {
        "sdxl": StableDiffusion(xl=True),
        "sd15": StableDiffusion(xl=False),
        "flux": Flux(),
        "flux2": Flux2(),
        "flux2-kv": Flux2(kv=True),
    }
    if kind not in known:
        raise ValueError(f"unknown architecture {kind!r}; one of {list(known)}")
    return known[kind]


def _set(module: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(module, name, value)
