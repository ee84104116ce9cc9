"""The engine: one base pipeline per model family, adapters swapped in from memory, one lock.

The base pipeline is loaded once. Each IP-Adapter variant is loaded once through diffusers' `load_ip_adapter`
(the same call for real and tiny checkpoints); its attention processors and image projection are then kept in
memory, so switching variant is a swap of module references: no base reload, no disk read. Per-request
strengths never touch the model (see `attention.py`), and every use of the pipeline happens under `self._lock`.
"""

from __future__ import annotations

import copy
import gc
import itertools
import json
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
from diffusers.utils import _get_model_file
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .attention import sample_scales, wrap_ip_processors
from .batching import BatchPlanner
from .errors import BlockMapError, GenerationError, InvalidRequestError, ModelNotAvailableError
from .face import FaceAnalyzer, FaceSpec, face_views, identity
from .images import ReferenceImage, square_for_encoder
from .metadata import SCHEMA_VERSION, package_versions
from .presets import AdapterSpec, FamilySpec, ImageEncoderSpec
from .request import MAX_PROMPT_CHARS, GenerationRequest

if TYPE_CHECKING:  # the model classes are imported where a model loads: the app serves its page before that
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
WARNING_PREFIX_CHARS = 1000  # the length warning tokenises at most this much of a prompt (75 tokens need far less)
log = logging.getLogger(__name__)
APP_NAME = "image-prompt-studio"


def default_device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that have it (no fp16 overflow in the SDXL VAE), else fp16; fp32 on CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class _BrokenOutput(Exception):
    """A denoising pass produced NaN or all-black images."""


@dataclass
class _Component:
    """One IP-Adapter checkpoint of a variant and the image encoder that feeds it (None for FaceID)."""

    spec: AdapterSpec
    encoder: CLIPVisionModelWithProjection | None
    image_processor: CLIPImageProcessor | None
    uncond_hidden: torch.Tensor | None  # (1, tokens, dim) features of an all-zero input, for hidden-state inputs
    lora: str | None = None  # PEFT adapter name of the LoRA inside the checkpoint, when applied
    lora_state: dict[str, torch.Tensor] | None = None  # that LoRA, kept to load it into another base from memory


@dataclass
class _Adapter:
    """A loaded variant (one adapter, or several such as "plus+plus-face"), kept in memory."""

    components: list[_Component]
    processors: dict[str, Any]  # unet.attn_processors with ScaledIPAdapterAttnProcessor on cross-attention
    image_proj: torch.nn.Module  # unet.encoder_hid_proj (MultiIPAdapterImageProjection)

    @property
    def id(self) -> str:
        return " + ".join(c.spec.id for c in self.components)

    @property
    def uses_faces(self) -> bool:
        return any(c.spec.uses_faces for c in self.components)

    @property
    def loras(self) -> list[_Component]:
        return [c for c in self.components if c.lora]


@dataclass
class _Base:
    """One loaded base pipeline and what is on its UNet now; adapters are shared by every base (from memory)."""

    name: str
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    processors: dict[str, Any]  # the UNet's own attention processors (no image prompt)
    layers: dict[str, torch.nn.Module]  # its attention layers by processor name, to set processors directly
    active: str | None = None  # the variant whose processors are on the UNet now
    loras: set[str] = field(default_factory=set)  # PEFT adapters loaded into this UNet
    lora_state: tuple = ()  # (name, weight) of the LoRAs on now; () = none active


@dataclass
class _Embeds:
    """One component's image prompt: (1, n_images, ...) tensors; `clip_*` only for FaceID Plus."""

    cond: torch.Tensor
    uncond: torch.Tensor
    clip_cond: torch.Tensor | None = None  # (1, 1, tokens, dim) CLIP features of the aligned face crops
    clip_uncond: torch.Tensor | None = None

    def for_pipeline(self, guided: bool) -> torch.Tensor:
        return torch.cat([self.uncond, self.cond]) if guided else self.cond

    def clip_batch(self, batch: int, guided: bool) -> torch.Tensor:
        """(2B or B, 1, tokens, dim) as [uncond x B, cond x B], the order of the UNet batch."""
        cond = self.clip_cond.repeat(batch, 1, 1, 1)
        return torch.cat([self.clip_uncond.repeat(batch, 1, 1, 1), cond]) if guided else cond


@dataclass
class SweepResult:
    """A strength comparison: one image per strength, all from the same seed and noise."""

    images: list[Image.Image]
    strengths: list[float]
    cell_metadata: list[dict[str, Any]]  # what reproduces each cell as a single render
    metadata: dict[str, Any]  # the whole sweep (for the grid PNG)
    diagnostics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # shown to the person (e.g. several faces found)
    previews: list[Image.Image] = field(default_factory=list)  # what the adapter sees: face boxes and crops, or
    # each CLIP encoder's input after crop mode, resize and centre crop


class _LRU:
    """A small bounded least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class GenerationResult:
    """One image, the metadata that reproduces it, and how the run went."""

    image: Image.Image
    metadata: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    previews: list[Image.Image] = field(default_factory=list)


class Engine:
    """Owns the base pipeline of one model family and every adapter variant loaded on it."""

    def __init__(
        self,
        family: FamilySpec,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        tiny_root: Path | None = None,
        max_batch: int | None = None,
        embed_cache_size: int = 64,
        offload: bool = False,
        compile: bool = False,
        max_bases: int = 1,
    ) -> None:
        self.family = family
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.tiny_root = tiny_root
        self.offload = offload  # model CPU offload: each model moves to the GPU only while it runs
        self.compile = compile  # torch.compile the UNet
        # Samples per denoising pass in a comparison (each doubles under guidance): a number, or None to choose the
        # chunks by measuring this device at the request's size (pipelines/batching.py).
        self.max_batch = max_batch
        self.planner = BatchPlanner()
        self._embed_cache = _LRU(embed_cache_size)  # image-prompt embeddings by image content
        self._block_weights: dict[str, dict[str, float]] = {}
        if max_bases < 1:
            raise ValueError(f"max_bases must be at least 1, got {max_bases}")
        self.max_bases = max_bases  # base pipelines kept in memory; a request for another one swaps under the lock
        self._bases: OrderedDict[str, _Base] = OrderedDict()  # least recently used first
        self._current: _Base | None = None
        self.counters: Counter[str] = Counter()  # base_loads, adapter_loads, encoder_calls, unet_calls
        self._lock = threading.Lock()
        self._adapters: dict[str, _Adapter] = {}
        self._encoders: dict[ImageEncoderSpec, tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]] = {}
        self._faces: FaceAnalyzer | None = None
        # A private copy of the tokenizer for prompt-length warnings, used outside the engine lock (a fast
        # tokenizer must not be called from two threads at once), guarded by its own small lock.
        self._warning_tokenizer: Any = None
        self._warning_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------- loading

    def _resolve(self, repo: str) -> str:
        """A Hub id as is; for the tiny family its generated folder; for a local mirror `tiny_root/<repo>`."""
        if self.family.source == "tiny":
            from .tiny import ensure_tiny_models  # builds models from configs: loads the model classes

            return str(ensure_tiny_models(self.tiny_root) / repo)
        if self.family.source == "local":
            return str(Path(self.tiny_root) / repo)
        return repo

    @property
    def _local_only(self) -> bool:
        return self.family.source != "hub"

    def _from_pretrained(self, loader: Callable[..., Any], repo: str, **kwargs: Any) -> Any:
        """`loader.from_pretrained`, turning "not cached and Hub unreachable" into one clear error."""
        try:
            return loader(self._resolve(repo), local_files_only=self._local_only, **kwargs)
        except OSError as e:
            cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelNotAvailableError(repo, self.family.name, cause) from e

    @property
    def loaded(self) -> bool:
        return bool(self._bases)

    @property
    def pipe(self) -> StableDiffusionPipeline | StableDiffusionXLPipeline | None:
        """The base pipeline in use now (None before the first load)."""
        return self._current.pipe if self._current is not None else None

    @property
    def loaded_bases(self) -> list[str]:
        """The bases held in memory, least recently used first."""
        return list(self._bases)

    def load(self) -> None:
        """Load the base pipeline (once); adapters load on first use."""
        with self._lock:
            self._ensure_base()

    @property
    def base_name(self) -> str:
        """The base in use now: "default" or a key of the family's `alt_bases`."""
        return self._current.name if self._current is not None else "default"

    def use_base(self, name: str) -> None:
        """Make `name` the base in use (loading it if needed); requests name their own base, this is for warm-up."""
        self._check_base(name)
        with self._lock:
            self._ensure_base(name)

    def _check_base(self, name: str) -> None:
        if name not in self.family.bases:
            raise InvalidRequestError("base", f"base {name!r} is not one of {list(self.family.bases)}")

    def _ensure_base(self, name: str | None = None) -> None:
        """Put base `name` (default: the one in use, else "default") in use, loading it when it is not in memory.

        At most `max_bases` are kept: the least recently used one is released *before* another loads, so peak
        memory stays at `max_bases` bases. Adapters and their LoRAs move to a newly loaded base from memory.
        """
        name = name or (self._current.name if self._current is not None else "default")
        if name in self._bases:
            self._bases.move_to_end(name)
            self._current = self._bases[name]
            return
        while len(self._bases) >= self.max_bases:
            _, old = self._bases.popitem(last=False)
            if old is self._current:
                self._current = None
            del old
            self._free_memory()
        self._current = self._bases[name] = self._load_base(name)

    def _load_base(self, name: str) -> _Base:
        from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if self.family.pipeline == "sdxl" else StableDiffusionPipeline
        repo = self.family.bases[name]
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.dtype == torch.float16 and self.family.vae_fp16:
            kwargs["vae"] = self._from_pretrained(AutoencoderKL.from_pretrained, self.family.vae_fp16, **kwargs)
        half = self.dtype in (torch.float16, torch.bfloat16)
        if half and self.family.weights_variant:
            try:
                pipe = self._from_pretrained(cls.from_pretrained, repo, variant=self.family.weights_variant, **kwargs)
            except (ModelNotAvailableError, ValueError):  # a base without those files: the full-precision ones
                pipe = self._from_pretrained(cls.from_pretrained, repo, **kwargs)
        else:
            pipe = self._from_pretrained(cls.from_pretrained, repo, **kwargs)
        if self.offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.compile:
            pipe.unet.compile()  # in place: processors stay swappable (a variant switch recompiles once)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.register_forward_pre_hook(self._count_unet_call)
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None:
                encoder.register_forward_pre_hook(self._count_text_encoder_call)
        processors = dict(pipe.unet.attn_processors)
        # The UNet's own attention layers by processor name, so a variant switch sets each one directly instead of
        # walking the module tree twice (diffusers' set_attn_processor): about 10x faster.
        layers = {
            f"{layer}.processor": module
            for layer, module in pipe.unet.named_modules()
            if f"{layer}.processor" in processors
        }
        if self._warning_tokenizer is None:
            self._warning_tokenizer = copy.deepcopy(pipe.tokenizer)
        self.counters["base_loads"] += 1
        return _Base(name, pipe, processors, layers)

    def _count_unet_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["unet_calls"] += 1

    def _count_text_encoder_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["text_encoder_calls"] += 1

    def _encode_text(self, request: GenerationRequest, guided: bool) -> dict[str, torch.Tensor]:
        """The prompt's text embeddings for one sample, once per request: every chunk of a sweep reuses them.

        The same `encode_prompt` call the pipeline makes; the pipeline repeats them for each image of a batch.
        """
        pipe = self.pipe
        with torch.inference_mode():
            out = pipe.encode_prompt(
                prompt=request.full_prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=request.negative_prompt or None,
            )
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return {name: value for name, value in zip(names, out, strict=False) if value is not None}

    def _encoder(self, spec: ImageEncoderSpec) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
        """A CLIP vision tower, loaded once and shared by every adapter that names it."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        if spec not in self._encoders:
            encoder = self._from_pretrained(
                CLIPVisionModelWithProjection.from_pretrained, spec.repo, subfolder=spec.subfolder, dtype=self.dtype
            )
            encoder.to(self.device).eval()
            size = encoder.config.image_size
            # The preprocessing diffusers' `load_ip_adapter` sets up: shortest side to `size`, centre crop.
            self._encoders[spec] = (encoder, CLIPImageProcessor(size=size, crop_size=size))
        return self._encoders[spec]

    def face_analyzer(self) -> FaceAnalyzer:
        """The family's insightface pack, created on first use and shared by every request."""
        if self._faces is None:
            spec = self.family.faces
            if spec is None:
                raise InvalidRequestError("variant", f"model family {self.family.name!r} has no face analysis")
            if self.family.source != "hub" and spec.root:
                spec = FaceSpec(spec.pack, self._resolve(spec.root))
            self._faces = FaceAnalyzer(
                spec, self.family.name, use_cuda=self.device.startswith("cuda"), drawn_only=self.family.source != "hub"
            )
        return self._faces

    def _checkpoint(self, spec: AdapterSpec) -> dict[str, dict[str, torch.Tensor]]:
        """A FaceID checkpoint read as diffusers' `load_ip_adapter` reads it (so its LoRA can be handled apart)."""
        try:
            path = _get_model_file(
                self._resolve(spec.repo), weights_name=spec.weight_name, subfolder=spec.subfolder or None,
                local_files_only=self._local_only,
            )  # fmt: skip
        except OSError as e:
            raise ModelNotAvailableError(spec.id, self.family.name, str(e)[:200]) from e
        from diffusers.models.model_loading_utils import load_state_dict

        return load_state_dict(path)

    def _adapter(self, name: str) -> _Adapter:
        """The variant `name` ("plus", or "plus+plus-face" for two at once), loaded the first time only."""
        if name in self._adapters:
            return self._adapters[name]
        parts = name.split("+")
        unknown = [p for p in parts if p not in self.family.adapters]
        if unknown:
            raise KeyError(f"family {self.family.name!r} has no adapter {unknown[0]!r}")
        specs = [self.family.adapters[p] for p in parts]
        components = []
        for spec in specs:
            encoder = image_processor = uncond = None
            if spec.image_encoder is not None:
                encoder, image_processor = self._encoder(spec.image_encoder)
            if spec.embeds in ("hidden", "faceid-plus"):
                pixels = torch.zeros(1, 3, encoder.config.image_size, encoder.config.image_size)
                with torch.inference_mode():
                    uncond = encoder(pixels.to(self.device, self.dtype), output_hidden_states=True).hidden_states[-2]
            components.append(_Component(spec, encoder, image_processor, uncond))
        # FaceID checkpoints carry a LoRA: diffusers would apply it under a name that collides between two FaceID
        # checkpoints ("faceid_0") and leave it on for every mode, so it is split off here and handled apart.
        sources: list[Any] = []
        checkpoints: dict[int, dict] = {}
        for i, spec in enumerate(specs):
            if spec.uses_faces:
                full = self._checkpoint(spec)
                checkpoints[i] = full
                ip_layers = {k: v for k, v in full["ip_adapter"].items() if "_lora." not in k}
                sources.append({"image_proj": full["image_proj"], "ip_adapter": ip_layers})
            else:
                sources.append(self._resolve(spec.repo))
        pipe = self.pipe
        self._activate(None)
        if components[0].encoder is not None:
            pipe.register_modules(image_encoder=components[0].encoder)  # so load_ip_adapter does not look for one
        try:
            pipe.load_ip_adapter(
                sources,
                subfolder=[s.subfolder for s in specs],
                weight_name=[s.weight_name for s in specs],
                image_encoder_folder=None,
                local_files_only=self._local_only,
            )
        except OSError as e:
            missing = " or ".join(s.id for s in specs)
            raise ModelNotAvailableError(missing, self.family.name, str(e)[:200]) from e
        for i, full in checkpoints.items():
            if specs[i].lora_weight > 0:
                self._load_lora(components[i], full)
        adapter = _Adapter(components, wrap_ip_processors(pipe.unet.attn_processors), pipe.unet.encoder_hid_proj)
        self._adapters[name] = adapter
        self.counters["adapter_loads"] += 1
        self._current.active = "loading"  # the unet now holds diffusers' processors: force the swap below
        self._activate(name)
        return adapter

    def _load_lora(self, component: _Component, checkpoint: dict) -> None:
        """Keep the LoRA inside a FaceID checkpoint as a PEFT adapter of its own (none when it has none)."""
        converted = self.pipe.unet._load_ip_adapter_loras([checkpoint])
        if not converted:
            log.warning("%s has no LoRA weights; lora_weight is ignored", component.spec.id)
            return
        component.lora = "faceid_" + component.spec.name.replace("-", "_")
        component.lora_state = converted[0]
        self._ensure_lora(component)

    def _ensure_lora(self, component: _Component) -> None:
        """Load the component's LoRA into the current base (again after a base swap), from memory."""
        if component.lora not in self._current.loras:
            # load_lora_weights may consume the dict it gets: hand it a shallow copy
            self.pipe.load_lora_weights(dict(component.lora_state), adapter_name=component.lora)
            self._current.loras.add(component.lora)

    def _activate(self, name: str | None) -> None:
        """Put variant `name` (None: no image prompt) on the UNet by swapping module references."""
        base = self._current
        if name == base.active:
            return
        unet = base.pipe.unet
        if name is None:
            processors, image_proj, hid_type = base.processors, None, None
        else:
            adapter = self._adapters[name]
            processors, image_proj, hid_type = adapter.processors, adapter.image_proj, "ip_image_proj"
        unet.encoder_hid_proj = image_proj
        unet.config.encoder_hid_dim_type = hid_type
        for layer_name, layer in base.layers.items():
            layer.set_processor(processors[layer_name])  # a Plus resampler's own attention layers keep theirs
        loras = self._adapters[name].loras if name is not None else []
        wanted = tuple((c.lora, c.spec.lora_weight) for c in loras)
        if wanted != base.lora_state:  # PEFT walks every module: only when the LoRA setting really changes
            if loras:  # the FaceID LoRA is on in its own mode only
                for component in loras:
                    self._ensure_lora(component)
                self.pipe.enable_lora()
                self.pipe.set_adapters([n for n, _ in wanted], adapter_weights=[w for _, w in wanted])
            else:
                self.pipe.disable_lora()
            base.lora_state = wanted
        base.active = name

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

    def _embed(
        self, adapter: _Adapter, request: GenerationRequest, scope: str
    ) -> tuple[list[_Embeds], list[str], list]:
        """Each component's image prompt, plus warnings and previews for the person.

        The first component sees the references, a second one (Plus-Face) the face close-ups. CLIP features are
        cached by image content, encoder, crop and dtype, and face analysis by image content: a repeated
        reference costs no encoder call and no detection. Both caches are kept apart per `scope` (one visitor),
        so nobody can learn from timings or counters whether someone else used the same photo.
        """
        embeds, warnings, previews = [], [], []
        for component, images in zip(adapter.components, self._groups(request), strict=False):
            if not images:
                raise InvalidRequestError(
                    "face_reference", "This adapter needs a face close-up: add one, or choose the adapter without face."
                )
            if component.spec.uses_faces:
                results, notes = self.face_analyzer().analyze(images, scope=scope)
                warnings += notes
                previews += face_views(images, results)
                ident = torch.from_numpy(identity(results)).to(self.device, self.dtype).view(1, 1, 1, -1)
                item = _Embeds(cond=ident, uncond=torch.zeros_like(ident))  # (1, 1, 1, 512): one averaged identity
                if component.spec.embeds == "faceid-plus":
                    order = component.spec.face_crop_channels  # preset data, with the evidence in models.toml
                    crops = [
                        ReferenceImage(
                            Image.fromarray(np.asarray(r.aligned)[:, :, ::-1].copy()) if order == "bgr" else r.aligned,
                            f"aligned-{order}:{img.sha256}",
                        )
                        for r, img in zip(results, images, strict=True)
                    ]
                    hidden = self._clip_features(component, crops, "center", "hidden", scope)  # (1, n, tokens, dim)
                    item.clip_cond = hidden.mean(dim=1, keepdim=True)  # one identity: the crops' mean features
                    item.clip_uncond = component.uncond_hidden[None]
                embeds.append(item)
            else:
                cond = self._clip_features(component, images, request.crop, component.spec.embeds, scope)
                if component.spec.embeds == "pooled":
                    uncond = torch.zeros_like(cond)
                else:
                    uncond = component.uncond_hidden[None].expand_as(cond)
                embeds.append(_Embeds(cond=cond, uncond=uncond))
        return embeds, warnings, previews

    def _clip_features(
        self, component: _Component, images: Sequence[Any], crop: str, kind: str, scope: str
    ) -> torch.Tensor:
        """(1, n, D) pooled embeddings or (1, n, tokens, dim) penultimate hidden states, through the LRU cache."""
        spec = component.spec
        key = (scope, spec.image_encoder, kind, crop, str(self.dtype), tuple(r.sha256 for r in images))
        cond = self._embed_cache.get(key)
        if cond is not None:
            self.counters["embed_cache_hits"] += 1
            return cond
        self.counters["embed_cache_misses"] += 1
        pixels = self._encoder_pixels(component, images, crop)  # (n, 3, S, S)
        self.counters["encoder_calls"] += 1
        with torch.inference_mode():
            if kind == "pooled":
                cond = component.encoder(pixels).image_embeds  # (n, D)
            else:
                cond = component.encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (n, tokens, dim)
        cond = cond[None]  # one sample holding n images: the adapter attends to all their tokens together
        self._embed_cache.put(key, cond)
        return cond

    def clear_embed_cache(self) -> None:
        """Forget every cached image-prompt embedding (benchmarks measure cold encodes with it)."""
        with self._lock:
            self._embed_cache = _LRU(self._embed_cache.size)

    def _encoder_pixels(self, component: _Component, images: Sequence[Any], crop: str) -> torch.Tensor:
        """The encoder's input after the crop mode, resize and centre crop: (n, 3, S, S)."""
        squares = [square_for_encoder(r.image, crop) for r in images]
        pixels = component.image_processor(images=squares, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.dtype)

    def encoder_preview(self, request: GenerationRequest, variant: str, scope: str = "") -> list[Image.Image]:
        """What the adapter sees: the encoder's input per reference, or each face box and aligned crop."""
        with self._lock:
            self._ensure_base()
            adapter = self._adapter(variant)
            views: list[Image.Image] = []
            for component, images in zip(adapter.components, self._groups(request), strict=False):
                if images and component.spec.uses_faces:
                    results, _ = self.face_analyzer().analyze(images, scope=scope)
                    views += face_views(images, results)
            return views + self._clip_views(adapter, request)

    @staticmethod
    def _groups(request: GenerationRequest) -> list[tuple[ReferenceImage, ...]]:
        """The images each component of a variant sees: the references, then (Plus-Face) the face close-ups."""
        return [request.references, request.face_references]

    def _clip_views(self, adapter: _Adapter, request: GenerationRequest) -> list[Image.Image]:
        """The CLIP components' inputs after crop mode, resize and centre crop, as pictures (preprocessing only)."""
        views = []
        for component, images in zip(adapter.components, self._groups(request), strict=False):
            if not images or component.spec.uses_faces:
                continue
            pixels = self._encoder_pixels(component, images, request.crop).float().cpu()  # (n, 3, S, S)
            proc = component.image_processor
            mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
            arr = ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            views += [Image.fromarray(a) for a in arr]
        return views

    def initial_latents(self, request: GenerationRequest, batch: int = 1) -> torch.Tensor:
        """Seeded noise drawn on the CPU (identical on every device), repeated for each sample of a batch."""
        scale = self.pipe.vae_scale_factor
        shape = (1, self.pipe.unet.config.in_channels, request.height // scale, request.width // scale)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return noise.repeat(batch, 1, 1, 1).to(self.device, self.dtype)

    def block_weights(self, block_map: dict | None) -> dict[str, float] | None:
        """An InstantStyle block map as a weight per attention processor; unknown blocks are an error.

        diffusers' `set_ip_adapter_scale` silently ignores a block the UNet does not have; here it raises.
        """
        if block_map is None:
            return None
        key = json.dumps(block_map, sort_keys=True)
        if key not in self._block_weights:
            unet = self.pipe.unet
            with_attention = {
                "down": [i for i, b in enumerate(unet.down_blocks) if hasattr(b, "attentions")],
                "up": [i for i, b in enumerate(unet.up_blocks) if hasattr(b, "attentions")],
            }
            per_block = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
            for part, blocks in block_map.items():
                if part == "mid":
                    continue
                if part not in with_attention or not isinstance(blocks, dict):
                    raise BlockMapError(f"block map part {part!r} must be 'down', 'mid' or 'up' with a table of blocks")
                for block, weights in blocks.items():
                    index = int(block.removeprefix("block_")) if block.removeprefix("block_").isdigit() else -1
                    if index not in with_attention[part]:
                        valid = [f"block_{i}" for i in with_attention[part]]
                        raise BlockMapError(
                            f"block map names {part}.{block}, which this UNet does not have (it has {valid})"
                        )
                    if isinstance(weights, list) and len(weights) not in (1, per_block[part]):
                        raise BlockMapError(
                            f"block map {part}.{block} has {len(weights)} weights; "
                            f"this UNet has {per_block[part]} layers there"
                        )
            expanded = _maybe_expand_lora_scales(unet, [block_map], default_scale=0.0)[0]
            weights = {}
            for name in unet.attn_processors:
                if name.endswith("attn2.processor"):
                    weights[name] = next((float(w) for prefix, w in expanded.items() if name.startswith(prefix)), 0.0)
            self._block_weights[key] = weights
        return self._block_weights[key]

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None, *, scope: str = ""
    ) -> GenerationResult:
        """Render one image for `request`; `scope` keeps one visitor's cached embeddings apart from others'."""
        sweep = self.generate_sweep(request, [request.strength], on_step, scope=scope)
        return GenerationResult(
            sweep.images[0], sweep.cell_metadata[0], sweep.diagnostics, sweep.warnings, sweep.previews
        )

    def generate_sweep(
        self,
        request: GenerationRequest,
        strengths: Sequence[float],
        on_step: StepCallback | None = None,
        *,
        scope: str = "",
    ) -> SweepResult:
        """The same seed and noise at several strengths, in batched denoising passes (at most `max_batch` each).

        The reference is encoded once; the UNet runs `steps` times per batch, not per strength. The request's
        base is put in use first (from memory when held, else loaded in place of the least recently used one).
        """
        strengths = [float(s) for s in strengths]
        if not strengths:
            raise ValueError("no strengths given")
        self._check_base(request.base)  # a request built without `build_request` is checked here too
        prompt_warnings = self.prompt_warnings(request)  # outside the engine lock: it never waits for a render
        with self._lock:
            self._ensure_base(request.base)
            start = time.perf_counter()
            before = Counter(self.counters)
            faces_before = self._faces.counters["detections"] if self._faces else 0
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            guided = request.guidance > 1
            adapter = None
            embeds = None
            warnings: list[str] = list(prompt_warnings)
            if not request.prompt:
                warnings.append("The prompt is empty: the image comes from the image prompt (and the mode) alone.")
            if not request.references:
                warnings.append("No reference image was given: the strength had no effect (a text-only image).")
            previews: list[Image.Image] = []
            text = self._encode_text(request, guided)  # (1, tokens, dim) each: shared by every chunk
            sizes, calibrated = self._chunk_sizes(request, text, len(strengths))
            if request.references:
                adapter = self._adapter(request.variant)
                self._activate(request.variant)
                embeds, notes, previews = self._embed(adapter, request, scope)
                previews = previews or self._clip_views(adapter, request)  # what the adapter sees, in every mode
                warnings += notes
                weights = self.block_weights(request.block_map)
            else:
                self._activate(None)
            bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            chunks = [strengths[a:b] for a, b in itertools.pairwise(bounds)]
            total_steps = request.steps * len(chunks)
            images: list[Image.Image] = []
            for n, chunk in enumerate(chunks):
                offset = n * request.steps

                def denoise(chunk: list[float] = chunk, offset: int = offset) -> list[Image.Image]:
                    scales = None
                    if adapter is not None:
                        scales = sample_scales(chunk, guided, self.device, self.dtype, weights)
                    return self._denoise(
                        request, text, len(chunk), adapter, embeds, scales, offset, total_steps, on_step
                    )

                images += self._guarded(denoise, warnings)
            seconds = time.perf_counter() - start
            used = self.counters - before
            diagnostics = {
                "seconds": round(seconds, 4),
                "steps_per_second": round(total_steps / seconds, 2) if seconds > 0 else None,
                "unet_calls": used["unet_calls"],
                "encoder_calls": used["encoder_calls"],
                "text_encoder_calls": used["text_encoder_calls"],
                "cache_hits": used["embed_cache_hits"],
                "batch_size": max(len(c) for c in chunks),
                "batches": len(chunks),
                "batch_plan": "+".join(str(len(c)) for c in chunks),
                "batch_choice": "fixed" if self.max_batch else ("measured now" if calibrated else "measured"),
                "images": len(strengths),
                "device": self.device,
                "base": request.base,
            }
            if adapter is not None and adapter.uses_faces:
                diagnostics["face_detections"] = self._faces.counters["detections"] - faces_before
            if self.device.startswith("cuda"):
                diagnostics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            base = self._metadata(request, adapter)
            cells = [{**base, "strength": s} for s in strengths]
            sweep_meta = {**base, "strength": None, "strengths": strengths}
            return SweepResult(images, strengths, cells, sweep_meta, diagnostics, warnings, previews)

    def _chunk_sizes(self, request: GenerationRequest, text: dict[str, torch.Tensor], n: int) -> tuple[list[int], bool]:
        """How many images each pass of a sweep of `n` holds, and whether this call measured the device for it.

        A fixed `max_batch` splits evenly; otherwise the planner chooses from one timed denoising step per batch
        size at this width, height, dtype and guidance (measured once, text only: the adapter's share is small).
        Measuring passes are not counted as the request's UNet calls.
        """
        if self.max_batch:
            return [min(self.max_batch, n - i) for i in range(0, n, self.max_batch)], False
        guided = request.guidance > 1
        key = (request.width, request.height, str(self.dtype), guided, request.base)
        measured = []

        def measure(batch: int) -> float:
            unet_calls = self.counters["unet_calls"]
            self._activate(None)
            run = dict(text, width=request.width, height=request.height, num_inference_steps=1,
                       guidance_scale=request.guidance, output_type="latent")  # fmt: skip
            try:
                if not measured:
                    self.pipe(**run, num_images_per_prompt=1)  # warm-up: first-use allocations are not the batch's
                start = time.perf_counter()
                self.pipe(**run, num_images_per_prompt=batch)
                seconds = time.perf_counter() - start
            except torch.OutOfMemoryError:
                self._free_memory()
                seconds = math.inf  # does not fit: never chosen
            finally:
                self.counters["unet_calls"] = unet_calls
            measured.append(batch)
            return seconds

        return self.planner.chunks(key, n, measure), bool(measured)

    def _guarded(self, denoise: Callable[[], list[Image.Image]], warnings: list[str]) -> list[Image.Image]:
        """Run a denoising pass; NaN/black output retries once with the VAE in fp32; out of memory is cleaned up."""
        try:
            try:
                return denoise()
            except _BrokenOutput:
                if self.pipe.vae.dtype == torch.float32:
                    raise
                log.warning("NaN or black image: decoding with the VAE in fp32 from now on")
                self._upcast_vae()
                warnings.append("The image overflowed in half precision; it was redone with the VAE in fp32.")
                return denoise()
        except _BrokenOutput as e:
            raise GenerationError(
                "The image came out black or invalid (a numerical overflow). Try another seed, fewer steps or a "
                "lower guidance."
            ) from e
        except torch.OutOfMemoryError as e:
            self._free_memory()
            raise GenerationError(
                "Out of GPU memory. Try a smaller size, fewer strengths in a comparison, or start the app with "
                "--offload. The app is still running."
            ) from e

    def _upcast_vae(self) -> None:
        """Keep the VAE in fp32 from now on; latents are cast on their way in (the pipelines do not always)."""
        vae = self.pipe.vae
        vae.to(torch.float32)
        decode = vae.decode

        def decode_fp32(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return decode(z.to(torch.float32), *args, **kwargs)

        vae.decode = decode_fp32

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """Tell the person when the text encoder will not read their whole prompt.

        Runs outside the engine lock on a private tokenizer copy, and tokenises at most `WARNING_PREFIX_CHARS`
        characters of each prompt (prompts are at most `MAX_PROMPT_CHARS` long).
        """
        if self._warning_tokenizer is None:  # the first request: the tokenizer comes with the base
            with self._lock:
                self._ensure_base()
        tokenizer = self._warning_tokenizer
        limit = tokenizer.model_max_length - 2  # start and end tokens
        out = []
        for label, text in (("prompt", request.full_prompt), ("negative prompt", request.negative_prompt)):
            prefix = text[:WARNING_PREFIX_CHARS]
            with self._warning_lock:
                ids = tokenizer(prefix, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > limit:
                cut = tokenizer.decode(ids[limit:]).strip()
                count = f"{len(ids)}" if len(prefix) == len(text) else f"over {len(ids)}"
                out.append(
                    f"The {label} is {count} tokens; the text encoder reads {limit}, so the end was ignored: "
                    f"'{cut[:80]}{'…' if len(cut) > 80 else ''}'"
                )
            elif len(prefix) < len(text):
                out.append(
                    f"The {label} is {len(text):,} characters long (at most {MAX_PROMPT_CHARS:,}); the text encoder "
                    f"reads {limit} tokens, so the end was probably ignored."
                )
        return out

    def _denoise(
        self,
        request: GenerationRequest,
        text: dict[str, torch.Tensor],
        batch: int,
        adapter: _Adapter | None,
        embeds: list[_Embeds] | None,
        scales: Any,
        offset: int,
        total_steps: int,
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        """One batched denoising pass: `batch` samples sharing prompt, noise and image prompt."""
        guided = request.guidance > 1
        kwargs: dict[str, Any] = {}
        face_plus = []  # FaceID Plus projections read CLIP features from module attributes (diffusers' API)
        if adapter is not None:
            kwargs["ip_adapter_image_embeds"] = [e.for_pipeline(guided) for e in embeds]
            for i, e in enumerate(embeds):
                if e.clip_cond is not None:
                    layer = adapter.image_proj.image_projection_layers[i]
                    layer.clip_embeds = e.clip_batch(batch, guided)
                    layer.shortcut = True  # FaceID Plus v2
                    layer.shortcut_scale = 1.0 if request.structure is None else request.structure
                    face_plus.append(layer)
        ip_steps = math.ceil(request.stop_at * request.steps)  # the image prompt acts on steps [0, ip_steps)
        try:
            with scales if scales is not None else nullcontext() as active:
                if active is not None and ip_steps == 0:
                    active.active = False

                def step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
                    if active is not None and i + 1 >= ip_steps:
                        active.active = False
                    if on_step is not None:
                        on_step(offset + i + 1, total_steps)
                    return callback_kwargs

                out = self.pipe(
                    **text,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    width=request.width,
                    height=request.height,
                    num_images_per_prompt=batch,
                    latents=self.initial_latents(request, batch),
                    output_type="np",
                    callback_on_step_end=step_end,
                    **kwargs,
                )
            hidden = getattr(out, "nsfw_content_detected", None) or [False] * batch  # SD1.5's safety checker
            broken = [
                not np.isfinite(img).all() or (img.max() <= 1 / 255 and not h)
                for img, h in zip(out.images, hidden, strict=True)
            ]
            if any(broken):
                raise _BrokenOutput()
            return self.pipe.numpy_to_pil(out.images)
        finally:
            for layer in face_plus:  # nothing of this request stays on the model
                layer.clip_embeds = None
                layer.shortcut_scale = 1.0

    def _metadata(self, request: GenerationRequest, adapter: _Adapter | None) -> dict[str, Any]:
        """Everything needed to reproduce the image."""
        return {
            "schema": SCHEMA_VERSION,
            "app": APP_NAME,
            **request.describe(),
            "model_family": self.family.name,
            "base_model": self.family.bases[request.base],
            "adapter": adapter.id if adapter else None,
            "image_encoder": (
                " + ".join(
                    f"{c.spec.image_encoder.repo}/{c.spec.image_encoder.subfolder}"
                    for c in adapter.components
                    if c.spec.image_encoder is not None
                )
                or None
                if adapter
                else None
            ),
            "face_model": self.family.faces.pack if adapter and adapter.uses_faces else None,
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.split(":")[0],
            "packages": package_versions(),
        }
