"""The engine: one base pipeline per model family, adapters swapped in from memory, one lock.

The base pipeline is loaded once. Each IP-Adapter variant is loaded once through diffusers' `load_ip_adapter`
(the same call for real and tiny checkpoints); its attention processors and image projection are then kept in
memory, so switching variant is a swap of module references: no base reload, no disk read. Per-request
strengths never touch the model (see `attention.py`), and every use of the pipeline happens under `self._lock`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .attention import ScaledIPAdapterAttnProcessor, sample_scales
from .errors import ModelNotAvailableError
from .metadata import SCHEMA_VERSION, package_versions
from .presets import AdapterSpec, FamilySpec, ImageEncoderSpec
from .request import GenerationRequest
from .tiny import ensure_tiny_models

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
APP_NAME = "image-prompt-studio"


def default_device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp16 on GPU (the published SD checkpoints are fp16-safe with an upcast VAE), fp32 on CPU."""
    return torch.float16 if device.startswith("cuda") else torch.float32


@dataclass
class _Adapter:
    """A loaded variant: everything that differs from the base, kept in memory."""

    spec: AdapterSpec
    processors: dict[str, Any]  # unet.attn_processors with ScaledIPAdapterAttnProcessor on cross-attention
    image_proj: torch.nn.Module  # unet.encoder_hid_proj (MultiIPAdapterImageProjection)
    encoder: CLIPVisionModelWithProjection
    image_processor: CLIPImageProcessor
    uncond_hidden: torch.Tensor | None  # (1, tokens, dim) features of a black image, for "hidden" embeds


@dataclass
class GenerationResult:
    """One image, the metadata that reproduces it, and how the run went."""

    image: Image.Image
    metadata: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Owns the base pipeline of one model family and every adapter variant loaded on it."""

    def __init__(
        self,
        family: FamilySpec,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        tiny_root: Path | None = None,
    ) -> None:
        self.family = family
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.tiny_root = tiny_root
        self.pipe: StableDiffusionPipeline | StableDiffusionXLPipeline | None = None
        self.counters: Counter[str] = Counter()  # base_loads, adapter_loads, encoder_calls, unet_calls
        self._lock = threading.Lock()
        self._adapters: dict[str, _Adapter] = {}
        self._encoders: dict[ImageEncoderSpec, tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]] = {}
        self._base_processors: dict[str, Any] = {}
        self._active: str | None = None

    # ----------------------------------------------------------------------------------------------- loading

    def _resolve(self, repo: str) -> str:
        """A Hub id as is, or for the tiny family the generated folder of that name."""
        if self.family.source == "tiny":
            return str(ensure_tiny_models(self.tiny_root) / repo)
        return repo

    def _from_pretrained(self, loader: Callable[..., Any], repo: str, **kwargs: Any) -> Any:
        """`loader.from_pretrained`, turning "not cached and Hub unreachable" into one clear error."""
        try:
            return loader(self._resolve(repo), local_files_only=self.family.source == "tiny", **kwargs)
        except OSError as e:
            cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelNotAvailableError(repo, self.family.name, cause) from e

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> None:
        """Load the base pipeline (once); adapters load on first use."""
        with self._lock:
            self._ensure_base()

    def _ensure_base(self) -> None:
        if self.pipe is not None:
            return
        cls = StableDiffusionXLPipeline if self.family.pipeline == "sdxl" else StableDiffusionPipeline
        pipe = self._from_pretrained(cls.from_pretrained, self.family.base, torch_dtype=self.dtype)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.register_forward_pre_hook(self._count_unet_call)
        self._base_processors = dict(pipe.unet.attn_processors)
        self.counters["base_loads"] += 1
        self.pipe = pipe

    def _count_unet_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["unet_calls"] += 1

    def _encoder(self, spec: ImageEncoderSpec) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
        """A CLIP vision tower, loaded once and shared by every adapter that names it."""
        if spec not in self._encoders:
            encoder = self._from_pretrained(
                CLIPVisionModelWithProjection.from_pretrained, spec.repo, subfolder=spec.subfolder, dtype=self.dtype
            )
            encoder.to(self.device).eval()
            size = encoder.config.image_size
            # The preprocessing diffusers' `load_ip_adapter` sets up: shortest side to `size`, centre crop.
            self._encoders[spec] = (encoder, CLIPImageProcessor(size=size, crop_size=size))
        return self._encoders[spec]

    def _adapter(self, name: str) -> _Adapter:
        """The variant `name`, loaded through `load_ip_adapter` the first time only."""
        if name in self._adapters:
            return self._adapters[name]
        if name not in self.family.adapters:
            raise KeyError(f"family {self.family.name!r} has no adapter {name!r}")
        spec = self.family.adapters[name]
        encoder, image_processor = self._encoder(spec.image_encoder)
        pipe = self.pipe
        self._activate(None)
        pipe.register_modules(image_encoder=encoder)  # so load_ip_adapter does not look for one
        try:
            pipe.load_ip_adapter(
                self._resolve(spec.repo),
                subfolder=spec.subfolder,
                weight_name=spec.weight_name,
                image_encoder_folder=None,
                local_files_only=self.family.source == "tiny",
            )
        except OSError as e:
            raise ModelNotAvailableError(
                f"{spec.repo}/{spec.subfolder}/{spec.weight_name}", self.family.name, str(e)[:200]
            ) from e
        processors = {
            k: ScaledIPAdapterAttnProcessor.from_processor(p) if isinstance(p, IPAdapterAttnProcessor2_0) else p
            for k, p in pipe.unet.attn_processors.items()
        }
        uncond = None
        if spec.embeds == "hidden":
            pixels = torch.zeros(1, 3, encoder.config.image_size, encoder.config.image_size)
            with torch.inference_mode():
                uncond = encoder(pixels.to(self.device, self.dtype), output_hidden_states=True).hidden_states[-2]
        adapter = _Adapter(spec, processors, pipe.unet.encoder_hid_proj, encoder, image_processor, uncond)
        self._adapters[name] = adapter
        self.counters["adapter_loads"] += 1
        self._active = "loading"  # the unet now holds diffusers' processors: force the swap below
        self._activate(name)
        return adapter

    def _activate(self, name: str | None) -> None:
        """Put variant `name` (None: no image prompt) on the UNet by swapping module references."""
        if name == self._active:
            return
        unet = self.pipe.unet
        if name is None:
            processors, image_proj, hid_type = self._base_processors, None, None
        else:
            adapter = self._adapters[name]
            processors, image_proj, hid_type = adapter.processors, adapter.image_proj, "ip_image_proj"
        # The projection first: a Plus resampler holds attention layers that the processor dict covers too.
        unet.encoder_hid_proj = image_proj
        unet.config.encoder_hid_dim_type = hid_type
        unet.set_attn_processor(dict(processors))  # a copy: set_attn_processor pops from the dict it gets
        self._active = name

    def use_variant(self, name: str | None) -> None:
        """Load (if needed) and activate a variant; for warm-up and mode switches outside a request."""
        with self._lock:
            self._ensure_base()
            if name is None:
                self._activate(None)
            else:
                self._adapter(name)
                self._activate(name)

    # ------------------------------------------------------------------------------------------- generation

    def _embed(self, adapter: _Adapter, request: GenerationRequest, guided: bool) -> torch.Tensor:
        """Image-prompt embeddings for all references as one prompt: (2 or 1, n_refs, ...) [uncond, cond]."""
        pixels = adapter.image_processor(images=[r.image for r in request.references], return_tensors="pt")
        pixels = pixels.pixel_values.to(self.device, self.dtype)  # (n, 3, S, S)
        self.counters["encoder_calls"] += 1
        with torch.inference_mode():
            if adapter.spec.embeds == "pooled":
                cond = adapter.encoder(pixels).image_embeds  # (n, D)
                uncond = torch.zeros_like(cond)
            else:
                cond = adapter.encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (n, tokens, dim)
                uncond = adapter.uncond_hidden.expand_as(cond)
        # One sample holding n images: the adapter attends to all their tokens together.
        cond, uncond = cond[None], uncond[None]
        return torch.cat([uncond, cond]) if guided else cond

    def initial_latents(self, request: GenerationRequest, batch: int = 1) -> torch.Tensor:
        """Seeded noise drawn on the CPU (identical on every device), repeated for each sample of a batch."""
        scale = self.pipe.vae_scale_factor
        shape = (1, self.pipe.unet.config.in_channels, request.height // scale, request.width // scale)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return noise.repeat(batch, 1, 1, 1).to(self.device, self.dtype)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """Render one image for `request`."""
        with self._lock:
            self._ensure_base()
            start = time.perf_counter()
            before = Counter(self.counters)
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            guided = request.guidance > 1
            adapter = None
            kwargs: dict[str, Any] = {}
            if request.references:
                adapter = self._adapter(request.variant)
                self._activate(request.variant)
                kwargs["ip_adapter_image_embeds"] = [self._embed(adapter, request, guided)]
            else:
                self._activate(None)
            if on_step is not None:

                def step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
                    on_step(i + 1, request.steps)
                    return callback_kwargs

                kwargs["callback_on_step_end"] = step_end
            scales = sample_scales([request.strength], guided, self.device, self.dtype) if adapter else nullcontext()
            with scales:
                image = self.pipe(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    width=request.width,
                    height=request.height,
                    latents=self.initial_latents(request),
                    output_type="pil",
                    **kwargs,
                ).images[0]
            seconds = time.perf_counter() - start
            used = self.counters - before
            diagnostics = {
                "seconds": round(seconds, 4),
                "steps_per_second": round(request.steps / seconds, 2) if seconds > 0 else None,
                "unet_calls": used["unet_calls"],
                "encoder_calls": used["encoder_calls"],
                "batch_size": 1,
                "device": self.device,
            }
            if self.device.startswith("cuda"):
                diagnostics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            return GenerationResult(image, self._metadata(request, adapter), diagnostics)

    def _metadata(self, request: GenerationRequest, adapter: _Adapter | None) -> dict[str, Any]:
        """Everything needed to reproduce the image."""
        return {
            "schema": SCHEMA_VERSION,
            "app": APP_NAME,
            **request.describe(),
            "model_family": self.family.name,
            "base_model": self.family.base,
            "adapter": adapter.spec.id if adapter else None,
            "image_encoder": (
                f"{adapter.spec.image_encoder.repo}/{adapter.spec.image_encoder.subfolder}" if adapter else None
            ),
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.split(":")[0],
            "packages": package_versions(),
        }
