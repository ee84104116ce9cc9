"""The runner: one lock, the base pipelines, denoising, recovery, diagnostics and metadata.

The engine puts together the parts that own the state: `ModelSource` (where models come from), `ImagePromptEncoder`
(CLIP features, face identities, one shared cache, previews) and `AdapterBank` (variants and their combinations,
swapped onto a base by reference). A request carries one or more image prompts; each acts with its own strength per
sample, steps window, region and layer map, read by the attention processors from the call's context
(`attention.py`): nothing of a request is stored on the model, and every use of a pipeline happens under `lock`.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .adapters import AdapterBank, LoadedAdapter
from .arch import architecture
from .attention import PromptScale, prompt_scales
from .bases import LoadedBase
from .batching import BatchPlanner
from .codec import describe
from .encoder import ImageEmbeds, ImagePromptEncoder
from .errors import GenerationError, InvalidRequestError, ModelNotAvailableError
from .face import FaceAnalyzer
from .images import load_reference
from .metadata import SCHEMA_VERSION, package_versions
from .numerics import row_exact_linear
from .presets import FamilySpec
from .redux import ReduxEncoder, with_tokens
from .request import MAX_PROMPT_CHARS, GenerationRequest, ImagePrompt, Sweep
from .scoring import Scorer, suggest
from .sources import ModelSource
from .structure import StructureBank, StructureInputs

if TYPE_CHECKING:  # the model classes are imported where a model loads: the app serves its page before that
    from diffusers import DiffusionPipeline

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
IDLE_S = 2.0  # the engine counts as idle this long after its last use (then it measures new sizes' batch curves)
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
class SweepResult:
    """A strength comparison: one image per cell, all from the same seed and noise.

    A cell holds one strength per image prompt; `strengths` are the tab's own prompt's and `extra_strengths` the
    extra prompt's (empty without one). `shape` is (rows, columns) of the grid: rows = strengths.
    """

    images: list[Image.Image]
    strengths: list[float]
    cell_metadata: list[dict[str, Any]]  # what reproduces each cell as a single render
    metadata: dict[str, Any]  # the whole sweep (for the grid PNG)
    diagnostics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # shown to the person (e.g. several faces found)
    previews: list[Image.Image] = field(default_factory=list)  # what the adapter sees: face boxes and crops, or
    # each CLIP encoder's input after crop mode, resize and centre crop
    extra_strengths: list[float] = field(default_factory=list)
    shape: tuple[int, int] = (1, 1)
    scores: list[dict[str, Any]] = field(default_factory=list)  # per cell: its strength(s) and scores (if scored)
    suggested: dict[str, Any] | None = None  # the suggested cell (pipelines/scoring.py), if scored


@dataclass
class GenerationResult:
    """One image, the metadata that reproduces it, and how the run went."""

    image: Image.Image
    metadata: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    previews: list[Image.Image] = field(default_factory=list)


@dataclass
class _Stack:
    """The image prompts of one request that act (those with references), ready to denoise."""

    prompts: list[ImagePrompt]
    indices: list[int]  # each one's position in request.image_prompts (0: the tab's own, 1: the extra)
    adapter: LoadedAdapter | None
    embeds: list[ImageEmbeds]
    prompt_of: list[int]  # adapter component -> index into `prompts`
    weights: list[dict[str, float] | None]
    masks: list[torch.Tensor | None]
    tokens: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # Redux: (index, its image tokens)
    negative_embeds: list[torch.Tensor] = field(default_factory=list)  # true CFG: each component's black image


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


def step_window(prompt: ImagePrompt, steps: int) -> tuple[int, int]:
    """The steps [start, stop) on which `prompt` acts: step i acts when start_at <= i / steps < stop_at."""
    return math.ceil(prompt.start_at * steps), math.ceil(prompt.stop_at * steps)


class ComputeLock:
    """The engine's lock; whoever holds it computes with the same number of CPU threads.

    torch keeps the intra-op thread count per OS thread (OpenMP), and a server runs requests on whichever worker
    thread is free: a thread that was set to another count (or made while the global default differed) would sum
    in another order and move a pixel by one level. Pinning the count on every acquire makes a request's pixels
    independent of the thread that runs it and of what ran before.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self.released_at = 0.0  # time.monotonic() of the last release: idle work waits for a quiet moment

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return got

    def release(self) -> None:
        self.released_at = time.monotonic()
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> ComputeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Engine:
    """Owns the base pipelines of one model family and every adapter loaded on them."""

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
        threads: int | None = None,
        measure_when_idle: bool = True,
    ) -> None:
        row_exact_linear()  # a sample's pixels do not depend on the size of its batch (pipelines/numerics.py)
        self.family = family
        self.arch = architecture(family.pipeline)  # what differs between architectures (pipelines/arch/)
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.tiny_root = tiny_root
        self.offload = offload  # model CPU offload: each model moves to the GPU only while it runs
        self.compile = compile  # torch.compile the UNet
        # Samples per denoising pass in a comparison (each doubles under guidance): a number, or None to choose the
        # chunks by measuring this device at the request's size (pipelines/batching.py).
        self.max_batch = max_batch
        self.planner = BatchPlanner()
        # Measure new sizes' batch curves in the background when idle (off where the device may only be used inside
        # a request, as on ZeroGPU: there a sweep is one pass unless max_batch says otherwise).
        self.measure_when_idle = measure_when_idle
        self._idle_wanted: dict[tuple, tuple[GenerationRequest, int]] = {}  # sizes to measure when idle
        self._idle_thread: threading.Thread | None = None
        self._idle_lock = threading.Lock()
        if max_bases < 1:
            raise ValueError(f"max_bases must be at least 1, got {max_bases}")
        self.max_bases = max_bases  # base pipelines kept in memory; a request for another one swaps under the lock
        self.counters: Counter[str] = Counter()  # base_loads, adapter_loads, encoder_calls, unet_calls, ...
        self.source = ModelSource(family, tiny_root)
        self.encoder = ImagePromptEncoder(self.source, self.device, self.dtype, self.counters, embed_cache_size)
        self.bank = AdapterBank(self.source, self.encoder, self.counters)
        self.scorer = Scorer(self.source, self.encoder, self.counters)
        self.redux = ReduxEncoder(self.source, self.device, self.dtype, self.counters, embed_cache_size)
        self.structure = StructureBank(self.source, self.arch, self.device, self.dtype, self.counters, embed_cache_size)
        self._bases: OrderedDict[str, LoadedBase] = OrderedDict()  # least recently used first
        self._current: LoadedBase | None = None
        # Every use of a pipeline or the model state happens under it, with `threads` CPU threads (default: this
        # process's torch default, read where the engine is made).
        self.lock = ComputeLock(threads or torch.get_num_threads())
        # A private copy of the tokenizer for prompt-length warnings, used outside the engine lock (a fast
        # tokenizer must not be called from two threads at once), guarded by its own small lock.
        self._warning_tokenizer: Any = None
        self._prompt_limit = 0  # tokens its text encoder reads
        self._warning_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        return bool(self._bases)

    @property
    def pipe(self) -> DiffusionPipeline | None:
        """The base pipeline in use now (None before the first load)."""
        return self._current.pipe if self._current is not None else None

    @property
    def loaded_bases(self) -> list[str]:
        """The bases held in memory, least recently used first."""
        return list(self._bases)

    def load(self) -> None:
        """Load the base pipeline (once); adapters load on first use."""
        with self.lock:
            self._ensure_base()

    @property
    def base_name(self) -> str:
        """The base in use now: "default" or a key of the family's `alt_bases`."""
        return self._current.name if self._current is not None else "default"

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

    def _load_base(self, name: str) -> LoadedBase:
        pipe = self.source.pipeline(name, self.dtype)
        if self.offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        denoiser = self.arch.denoiser(pipe)
        if self.compile:
            denoiser.compile()  # in place: processors stay swappable (a variant switch recompiles once)
        pipe.set_progress_bar_config(disable=True)
        if hasattr(pipe.vae, "enable_slicing"):
            # One image at a time through the VAE: a comparison's cell is decoded exactly as its single render is
            # (a CPU convolution over 1 image rounds differently from one over several; pipelines/numerics.py), and
            # the decoder's peak memory is one image's.
            pipe.vae.enable_slicing()
        denoiser.register_forward_pre_hook(self._count_denoiser_call)
        for encoder in self.arch.text_encoders(pipe):
            encoder.register_forward_pre_hook(self._count_text_encoder_call)
        if self._warning_tokenizer is None:
            tokenizer, limit = self.arch.prompt_tokenizer(pipe)
            self._warning_tokenizer, self._prompt_limit = copy.deepcopy(tokenizer), limit
        self.counters["base_loads"] += 1
        return LoadedBase.of(name, pipe, denoiser)

    def _count_denoiser_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["unet_calls"] += 1  # the name the diagnostics have always had; `denoiser_calls` beside it

    def _count_text_encoder_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["text_encoder_calls"] += 1

    def _encode_text(self, request: GenerationRequest, guided: bool) -> dict[str, torch.Tensor]:
        """The prompt's text embeddings for one sample, once per request: every chunk of a sweep reuses them."""
        return self.arch.encode_text(self.pipe, request.settings.full_prompt, request.settings.negative_prompt, guided)

    def face_analyzer(self) -> FaceAnalyzer:
        """The family's insightface pack, created on first use and shared by every request."""
        return self.encoder.face_analyzer()

    def adapter(self, variant: str | Sequence[str]) -> LoadedAdapter:
        """A variant (or a combination: one variant per image prompt), loaded onto the base in use if needed."""
        with self.lock:
            self._ensure_base()
            return self.bank.get(self._current, variant)

    def use_variant(self, name: str | Sequence[str] | None) -> None:
        """Load (if needed) and activate a variant or combination; for warm-up and outside a request."""
        with self.lock:
            self._ensure_base()
            self.bank.activate(self._current, None if name is None else name)

    def clear_embed_cache(self) -> None:
        """Forget every cached image-prompt embedding (benchmarks measure cold encodes with it)."""
        with self.lock:
            self.encoder.clear()

    def block_weights(self, block_map: dict | None) -> dict[str, float] | None:
        """An InstantStyle block map as a weight per attention processor; unknown blocks are an error."""
        with self.lock:
            self._ensure_base()
            return self.bank.block_weights(self._current, block_map)

    def encoder_preview(self, request: GenerationRequest, variant: str, scope: str = "") -> list[Image.Image]:
        """What the adapters see of each image prompt's references (the tab's own with `variant`): the encoder's
        inputs, or each face box and aligned crop."""
        with self.lock:
            self._ensure_base()
            views: list[Image.Image] = []
            for n, prompt in enumerate(request.image_prompts):
                chosen = variant if n == 0 else prompt.variant
                if self._is_redux(replace(prompt, variant=chosen)):
                    views += self._redux_views([replace(prompt, variant=chosen)], [0])
                elif (prompt.references or n == 0) and not prompt.is_structure:
                    adapter = self.bank.get(self._current, chosen)
                    views += self.encoder.views(adapter.specs, prompt.groups, prompt.crop, scope)
            return views + self._structure_views(request, scope)

    def _structure_views(self, request: GenerationRequest, scope: str) -> list[Image.Image]:
        """Each structure slot's control map (edges, depth, the given map) and the start image, at the output size."""
        inputs = self.structure.inputs(request.image_prompts, request.settings.width, request.settings.height, scope)
        return self._structure_previews(inputs)

    # ------------------------------------------------------------------------------------------- generation

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None, *, scope: str = ""
    ) -> GenerationResult:
        """Render one image for `request`; `scope` keeps one visitor's cached embeddings apart from others'."""
        cell = tuple(p.strength for p in request.image_prompts)
        sweep = self._run(request, [cell], on_step, scope)
        return GenerationResult(
            sweep.images[0], sweep.cell_metadata[0], sweep.diagnostics, sweep.warnings, sweep.previews
        )

    def generate_sweep(
        self,
        request: GenerationRequest,
        strengths: Sequence[float] | None = None,
        on_step: StepCallback | None = None,
        *,
        scope: str = "",
        extra_strengths: Sequence[float] | None = None,
        score: bool = False,
    ) -> SweepResult:
        """The same seed and noise at several strengths, in batched denoising passes (at most `max_batch` each).

        `strengths` (default: the request's) sweep the tab's own image prompt; `extra_strengths` (default: the
        request's, else its one extra strength) the extra one: with both, every pair is a cell (rows = strengths).
        References are encoded once; the UNet runs `steps` times per batch, not per cell. `score` also scores every
        cell (likeness, adherence, identity: pipelines/scoring.py) in one batched pass and suggests a cell.
        """
        strengths = [float(s) for s in (strengths if strengths is not None else request.sweep.strengths)]
        if not strengths:
            raise ValueError("no strengths given")
        if not request.slots and extra_strengths:
            raise InvalidRequestError("extra_strengths", "extra_strengths needs an added image prompt")
        sweep_axes = Sweep(tuple(strengths), tuple(extra_strengths or request.sweep.extra_strengths))
        cells = sweep_axes.cells(request.image_prompts)
        columns = [c[1] for c in cells[: len(cells) // len(strengths)]] if request.slots else []
        sweep = self._run(request, cells, on_step, scope, score)
        sweep.extra_strengths = [c[1] for c in cells] if request.slots else []
        sweep.shape = (len(strengths), len(columns) if len(columns) > 1 else 1)
        if len(columns) > 1:
            sweep.metadata["extra_strengths"] = columns
            sweep.metadata["extra_strength"] = None
        sweep.metadata["strengths"] = strengths
        if score and sweep.scores:
            keys = ("strength", "extra_strength")[: len(request.image_prompts)]  # the swept axes
            sweep.scores = [
                {**dict(zip(keys, cell, strict=False)), **values}
                for cell, values in zip(cells, sweep.scores, strict=True)
            ]
            swept = [""] if len(strengths) > 1 or len(columns) <= 1 else []
            swept += ["extra_"] if len(columns) > 1 else []
            sweep.suggested = suggest(sweep.scores, swept)
            sweep.metadata["scores"] = sweep.scores
            sweep.metadata["suggested"] = sweep.suggested
        return sweep

    def score(self, image: Image.Image, request: GenerationRequest, scope: str = "") -> tuple[dict[str, Any], list]:
        """One image's scores against `request`'s references and prompt (the same object as a scored cell's)."""
        with self.lock:
            values, notes = self.scorer.score([image], request, scope)
            return values[0], notes

    def _stack(self, request: GenerationRequest, scope: str, warnings: list[str]) -> tuple[_Stack, list]:
        """The request's acting image prompts on one combined adapter, with their embeddings and previews."""
        declared = request.image_prompts
        acting = [i for i, p in enumerate(declared) if p.references and not p.is_structure]
        redux = [i for i in acting if self._is_redux(declared[i])]  # extra text tokens, not an attention adapter
        if redux and self.true_cfg(request) > 1:
            raise InvalidRequestError(
                "variant", "Redux's image tokens make the prompt longer than its negative: not with true CFG."
            )
        for i in redux:
            if (declared[i].start_at, declared[i].stop_at) != (0.0, 1.0):
                raise InvalidRequestError(
                    "start_at", "Redux acts on every step (its tokens are part of the prompt): leave start_at at 0 "
                    "and stop_at at 1."
                )  # fmt: skip
        tokens = [(i, self.redux.tokens(self.family.adapters[declared[i].variant], declared[i].references, scope))
                  for i in redux]  # fmt: skip
        indices = [i for i in acting if i not in redux]
        prompts = [declared[i] for i in indices]
        if request.primary.negative_references and 0 not in indices:
            warnings.append("Negative images act against the tab's own references: add a reference to use them.")
        for n, slot in enumerate(request.slots, 1):
            if not slot.references:
                warnings.append(f"Added image prompt {n} ({slot.mode}) has no image: it had no effect.")
        fast = request.settings.speed == "fast"
        if not prompts:
            self.bank.activate(self._current, None, fast)
            return _Stack([], [], None, [], [], [], [], tokens), self._redux_views(declared, redux)
        base = self._current
        adapter = self.bank.get(base, tuple(p.variant for p in prompts))
        self.bank.activate(base, tuple(p.variant for p in prompts), fast)
        embeds, prompt_of, previews = [], [], []
        for n, prompt in enumerate(prompts):
            single = self.bank.get(base, prompt.variant)
            label = "reference" if indices[n] == 0 else f"slot {indices[n]} image"
            got, notes, views = self.encoder.embed(
                single.specs, prompt.groups, prompt.crop, scope, prompt.negative_references, label
            )
            embeds += got
            prompt_of += [n] * len(got)
            warnings += notes
            previews += views or self.encoder.clip_views(single.specs, prompt.groups, prompt.crop)
        negative = []
        if self.true_cfg(request) > 1:  # stock FLUX's negative image prompt: a black picture of the output size
            black = load_reference(Image.new("RGB", (request.settings.width, request.settings.height)))
            for prompt in prompts:
                got, _, _ = self.encoder.embed(self.bank.get(base, prompt.variant).specs, [(black,), ()], "center",
                                               scope)  # fmt: skip
                negative += [e.for_pipeline(False) for e in got]
        weights = [self.bank.layer_weights(base, p.variant, p.block_map) for p in prompts]
        masks = [region_mask(p.region, request.settings.width, request.settings.height) for p in prompts]
        previews += self._redux_views(declared, redux)
        stack = _Stack(prompts, indices, adapter, embeds, prompt_of, weights, masks, tokens, negative)
        return stack, previews

    def _redux_views(self, declared: Sequence[ImagePrompt], indices: list[int]) -> list[Image.Image]:
        """What Redux's SigLIP tower sees of each reference (its processor's resize)."""
        views = []
        for i in indices:
            _, processor, _ = self.redux.models(self.family.adapters[declared[i].variant])
            size = processor.size
            views += [r.image.convert("RGB").resize((size["width"], size["height"]), Image.Resampling.BICUBIC)
                      for r in declared[i].references]  # fmt: skip
        return views

    def true_cfg(self, request: GenerationRequest) -> float:
        """True CFG's scale for this request: the tab's own adapter's (presets; 1 = none, the only value for SD)."""
        spec = self.family.adapters.get(request.primary.variant.split("+")[0])
        return spec.true_cfg if spec is not None else 1.0

    def _is_redux(self, prompt: ImagePrompt) -> bool:
        spec = self.family.adapters.get(prompt.variant)
        return spec is not None and spec.embeds == "redux"

    def _run(
        self,
        request: GenerationRequest,
        cells: list[tuple[float, ...]],
        on_step: StepCallback | None,
        scope: str,
        score: bool = False,
    ) -> SweepResult:
        """Render `cells` (one strength per declared image prompt each) in batched passes from the same noise."""
        if request.family and request.family != self.family.name:  # one family (one architecture) per engine
            raise InvalidRequestError(
                "mode", f"This engine runs the {self.family.name} family; the request was made for {request.family}."
            )
        self._check_base(request.settings.base)  # a request built without `build_request` is checked here too
        prompt_warnings = self.prompt_warnings(request)  # outside the engine lock: it never waits for a render
        with self.lock:
            self._ensure_base(request.settings.base)
            start = time.perf_counter()
            before = Counter(self.counters)
            faces_before = self.encoder.face_detections
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            guided = self.arch.cfg_batch(request.settings.guidance)
            warnings: list[str] = list(prompt_warnings)
            if not request.settings.prompt:
                warnings.append("The prompt is empty: the image comes from the image prompt (and the mode) alone.")
            if not any(p.references for p in request.image_prompts if not p.is_structure):
                structured = any(p.references for p in request.image_prompts)
                warnings.append(
                    "No reference image was given: the strength had no effect"
                    + ("." if structured else " (a text-only image).")
                )
            true_cfg = self.true_cfg(request)
            text = self._encode_text(request, guided or true_cfg > 1)  # (1, tokens, dim) each: shared by every chunk
            settings = request.settings
            inputs = self.structure.inputs(request.image_prompts, settings.width, settings.height, scope)
            passes, choice = self._passes(request, cells, inputs)
            stack, previews = self._stack(request, scope, warnings)
            previews += self._structure_previews(inputs)
            total_steps = sum(self._steps_run(request, begin) for _, begin in passes)
            images: list[Any] = [None] * len(cells)
            done = 0
            for members, begin in passes:
                chunk = [cells[i] for i in members]

                def denoise(chunk: list = chunk, offset: int = done, begin: float | None = begin) -> list[Image.Image]:
                    return self._denoise(request, text, chunk, stack, offset, total_steps, on_step, inputs, begin)

                for i, image in zip(members, self._guarded(denoise, warnings), strict=True):
                    images[i] = image
                done += self._steps_run(request, begin)
            scores: list[dict[str, Any]] = []
            score_seconds = None
            if score:  # after the sweep: every cell in one batched encoder pass
                scored_at = time.perf_counter()
                try:
                    scores, notes = self.scorer.score(images, request, scope)
                    warnings += notes
                except ModelNotAvailableError as e:  # the images stand without their scores
                    warnings.append(f"The cells were not scored: {e}")
                score_seconds = round(time.perf_counter() - scored_at, 4)
            seconds = time.perf_counter() - start
            used = self.counters - before
            diagnostics = {
                "seconds": round(seconds, 4),
                "steps_per_second": round(total_steps / seconds, 2) if seconds > 0 else None,
                "unet_calls": used["unet_calls"],
                "denoiser_calls": used["unet_calls"],  # the UNet's or the transformer's, whatever the architecture
                "encoder_calls": used["encoder_calls"],
                "text_encoder_calls": used["text_encoder_calls"],
                "cache_hits": used["embed_cache_hits"],
                "batch_size": max(len(members) for members, _ in passes),
                "batches": len(passes),
                "batch_plan": "+".join(str(len(members)) for members, _ in passes),
                "batch_choice": choice,
                "images": len(cells),
                "image_prompts": len(stack.prompts),
                "device": self.device,
                "base": request.settings.base,
                "speed": request.settings.speed,
            }
            if score_seconds is not None:
                diagnostics["score_seconds"] = score_seconds
            if inputs.controls:
                diagnostics["controlnet_calls"] = used["controlnet_calls"]
                diagnostics["control_maps"] = [p.control_type for _, p, _ in inputs.controls]
            if len({begin for _, begin in passes}) > 1:
                diagnostics["passes_note"] = (
                    "A start image's strength decides where denoising starts, so each start strength is its own pass."
                )
            if stack.adapter is not None and stack.adapter.uses_faces:
                diagnostics["face_detections"] = self.encoder.face_detections - faces_before
            if self.device.startswith("cuda"):
                diagnostics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            metas = [self._metadata(request, stack, cell) for cell in cells]
            sweep_meta = {**self._metadata(request, stack, cells[0]), "strength": None}
            result = SweepResult(images, [c[0] for c in cells], metas, sweep_meta, diagnostics, warnings, previews)
            result.scores = scores
            return result

    @staticmethod
    def _structure_previews(inputs: StructureInputs) -> list[Image.Image]:
        return inputs.maps + ([inputs.start[2]] if inputs.start is not None else [])

    def _steps_run(self, request: GenerationRequest, start: float | None) -> int:
        """The denoising steps a pass runs: all of them, or (start image) the last `1 - strength` of them, as
        diffusers' img2img pipelines count them."""
        steps = request.settings.steps
        if not start:
            return steps
        return min(int(steps * (1.0 - start)), steps)

    def _passes(
        self, request: GenerationRequest, cells: list[tuple[float, ...]], inputs: StructureInputs
    ) -> tuple[list[tuple[list[int], float | None]], str]:
        """The cells in denoising passes: (cell indices, start strength or None). Cells that share a start strength
        share passes (it decides the first step); each group is split into batches by `_chunk_sizes`."""
        groups: dict[float | None, list[int]] = {}
        for i, cell in enumerate(cells):
            groups.setdefault(cell[inputs.start[0]] if inputs.start is not None else None, []).append(i)
        passes, choices = [], []
        for start, members in groups.items():
            if start and self._steps_run(request, start) < 1:
                raise InvalidRequestError(
                    "slots",
                    f"A start strength of {start:g} keeps the start image as it is with {request.settings.steps} "
                    f"steps (no step is left to run): lower it or use more steps.",
                )
            sizes, choice = self._chunk_sizes(request, len(members))
            choices.append(choice)
            bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            passes += [(members[a:b], start) for a, b in itertools.pairwise(bounds)]
        return passes, choices[0] if choices else "fixed"

    def _plan_key(self, request: GenerationRequest) -> tuple:
        s = request.settings
        return (s.width, s.height, str(self.dtype), self.arch.cfg_batch(s.guidance), s.base)

    def _chunk_sizes(self, request: GenerationRequest, n: int) -> tuple[list[int], str]:
        """How many images each pass of a sweep of `n` holds, and how that was chosen (for the diagnostics).

        A fixed `max_batch` splits evenly; otherwise the planner plans from the curve measured for this size, dtype,
        guidance and base, never inside the request: a size not measured yet gets one pass, and is measured when
        the engine is next idle (`calibrate_when_idle`).
        """
        if self.max_batch:
            return [min(self.max_batch, n - i) for i in range(0, n, self.max_batch)], "fixed"
        key = self._plan_key(request)
        known = self.planner.calibrated(key, n)
        if not known and self.measure_when_idle:
            self.calibrate_when_idle(request, n)
        return self.planner.chunks(key, n), "measured" if known else "one pass (this size is measured when idle)"

    def calibrate(self, request: GenerationRequest, n: int) -> dict[int, float]:
        """Measure this device for sweeps of up to `n` images at `request`'s size (one denoising step per batch
        size, text only: the adapter's share is small); the app's warm-up calls it for the default comparison."""
        with self.lock:
            self._ensure_base(request.settings.base)
            text = self._encode_text(request, self.arch.cfg_batch(request.settings.guidance))
            warmed: list[int] = []
            return self.planner.curve(self._plan_key(request), n, lambda b: self._time_pass(request, text, b, warmed))

    def calibrate_when_idle(self, request: GenerationRequest, n: int) -> None:
        """Measure for `request`'s size once nobody has used the engine for `IDLE_S` (in a background thread; a
        visitor who arrives meanwhile waits for at most one timed step per batch size)."""
        with self._idle_lock:
            self._idle_wanted[self._plan_key(request)] = (request, n)
            if self._idle_thread is None or not self._idle_thread.is_alive():
                self._idle_thread = threading.Thread(target=self._calibrate_idle, name="calibrate", daemon=True)
                self._idle_thread.start()

    def _calibrate_idle(self) -> None:
        while True:
            with self._idle_lock:
                if not self._idle_wanted:
                    self._idle_thread = None
                    return
                key, (request, n) = next(iter(self._idle_wanted.items()))
            while self.lock.locked() or time.monotonic() - self.lock.released_at < IDLE_S:
                time.sleep(IDLE_S / 4)
            try:
                if request.settings.base in self._bases:  # never swaps a base in just to measure it
                    self.calibrate(request, n)
            except Exception:  # a measurement must never take the server down; the plan stays one pass
                log.exception("measuring the batch curve failed")
            with self._idle_lock:
                self._idle_wanted.pop(key, None)

    def _time_pass(self, request: GenerationRequest, text: dict, batch: int, warmed: list[int]) -> float:
        """Seconds of one denoising step of `batch` text-only images (math.inf when it does not fit); not counted
        as any request's UNet calls."""
        unet_calls = self.counters["unet_calls"]
        self.bank.activate(self._current, None, request.settings.speed == "fast")
        run = dict(text, width=request.settings.width, height=request.settings.height, num_inference_steps=1,
                   guidance_scale=request.settings.guidance, output_type="latent")  # fmt: skip
        try:
            if not warmed:
                self.pipe(**run, num_images_per_prompt=1)  # warm-up: first-use allocations are not the batch's
            start = time.perf_counter()
            self.pipe(**run, num_images_per_prompt=batch)
            seconds = time.perf_counter() - start
        except torch.OutOfMemoryError:
            self._free_memory()
            seconds = math.inf  # does not fit: never chosen
        finally:
            self.counters["unet_calls"] = unet_calls
        warmed.append(batch)
        return seconds

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
            with self.lock:
                self._ensure_base()
        tokenizer, limit = self._warning_tokenizer, self._prompt_limit  # the architecture's (pipelines/arch/)
        out = []
        settings = request.settings
        for label, text in (("prompt", settings.full_prompt), ("negative prompt", settings.negative_prompt)):
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
        cells: list[tuple[float, ...]],
        stack: _Stack,
        offset: int,
        total_steps: int,
        on_step: StepCallback | None,
        structure: StructureInputs | None = None,
        start: float | None = None,
    ) -> list[Image.Image]:
        """One batched denoising pass: one sample per cell, sharing prompt, noise, image prompts and structure.

        ControlNet slots whose strength is 0 in every cell of the pass are left out (exactly the image without
        them); a start strength of 0 (or None) runs without the start image.
        """
        guided = self.arch.cfg_batch(request.settings.guidance)
        batch = len(cells)
        batch_rows: dict[str, int] | None = None  # set when the prompt embeddings already hold one row per sample
        steps_run = self._steps_run(request, start)
        structure = structure or StructureInputs([], None)
        acting = StructureInputs(
            [c for c in structure.controls if any(cell[c[0]] for cell in cells)], structure.start if start else None
        )
        kwargs: dict[str, Any] = {}
        face_plus = []  # FaceID Plus projections read CLIP features from module attributes (diffusers' API)
        scales = None
        if stack.adapter is not None:
            kwargs["ip_adapter_image_embeds"] = [e.for_pipeline(guided) for e in stack.embeds]
            kwargs |= self.arch.ip_adapter_call_kwargs(kwargs["ip_adapter_image_embeds"], stack.negative_embeds)
            for j, e in enumerate(stack.embeds):
                if e.clip_cond is not None:
                    layer = stack.adapter.image_proj.image_projection_layers[j]
                    structure = stack.prompts[stack.prompt_of[j]].structure
                    layer.clip_embeds = e.clip_batch(batch, guided)
                    layer.shortcut = True  # FaceID Plus v2
                    layer.shortcut_scale = 1.0 if structure is None else structure
                    face_plus.append(layer)
            per_prompt = []
            scale = self.family.fast.strength_scale if request.settings.speed == "fast" else 1.0
            for n, prompt in enumerate(stack.prompts):
                first, stop = step_window(prompt, steps_run)  # of the steps this pass runs (img2img: the last ones)
                strengths = [cell[stack.indices[n]] * scale for cell in cells]
                per_prompt.append(PromptScale(strengths, stack.weights[n], first, stop, stack.masks[n]))
            scales = prompt_scales(per_prompt, guided, self.device, self.dtype, stack.prompt_of)
        base = self._current
        if request.settings.speed == "fast":  # the few-step LoRA's sampler, for this call only (all under the lock)
            self.pipe.scheduler = self.bank.fast_scheduler(base)
        true_cfg = self.true_cfg(request)
        if true_cfg > 1:
            kwargs["true_cfg_scale"] = true_cfg
        pipe, per_sample = self.structure.pipeline(self.pipe, acting)
        kwargs |= self.structure.call_kwargs(acting, start)
        if acting.start is None:  # text to image: the seeded noise, at the requested size
            size = {"width": request.settings.width, "height": request.settings.height}
            kwargs |= {**size, "latents": self.initial_latents(request, batch)}
        else:  # img2img draws the start latents and noise from the seed, one generator per sample (= single renders)
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(request.settings.seed) for _ in range(batch)]
        parts = [(t, [cell[i] for cell in cells]) for i, t in stack.tokens if any(cell[i] for cell in cells)]
        if parts:  # Redux: per-sample prompt embeddings (the text's, then each prompt's tokens x strength)
            text, keep = with_tokens(text, parts, batch)
            batch_rows = {"num_images_per_prompt": 1}
            for key in ("ip_adapter_image_embeds", "negative_ip_adapter_image_embeds"):  # one row per sample now
                if key in kwargs:
                    kwargs[key] = [e.repeat(batch, *([1] * (e.dim() - 1))) for e in kwargs[key]]
            if keep is not None:  # the image's keys follow the text's: one per packed latent
                image = torch.ones(batch, kwargs["latents"].shape[1], dtype=torch.bool)
                mask = torch.cat([keep, image], dim=1)[:, None, None, :].to(self.device)
                kwargs["joint_attention_kwargs"] = {"attention_mask": mask}
        control_strengths = [[cell[index] for cell in cells] for index, _, _ in acting.controls]
        try:
            with (
                scales if scales is not None else nullcontext() as active,
                self.structure.per_sample(per_sample, control_strengths),
            ):
                if active is not None:
                    active.set_step(0)

                def step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
                    if active is not None:
                        active.set_step(i + 1)  # each prompt acts inside its own window of steps
                    if on_step is not None:
                        on_step(offset + i + 1, total_steps)
                    return callback_kwargs

                out = pipe(
                    **text,
                    num_inference_steps=request.settings.steps,
                    guidance_scale=request.settings.guidance,
                    **(batch_rows or {"num_images_per_prompt": batch}),
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
            self.pipe.scheduler = base.scheduler
            for layer in face_plus:  # nothing of this request stays on the model
                layer.clip_embeds = None
                layer.shortcut_scale = 1.0

    def initial_latents(self, request: GenerationRequest, batch: int = 1) -> torch.Tensor:
        """Seeded noise drawn on the CPU (identical on every device), repeated for each sample of a batch."""
        settings = request.settings
        noise = self.arch.initial_latents(self.pipe, settings.seed, settings.width, settings.height)
        return noise.repeat(batch, *([1] * (noise.dim() - 1))).to(self.device, self.dtype)

    def _metadata(self, request: GenerationRequest, stack: _Stack, cell: tuple[float, ...]) -> dict[str, Any]:
        """Everything needed to reproduce the image of `cell` (one strength per declared image prompt)."""
        adapter = stack.adapter
        fast = request.settings.speed == "fast"
        ids = {
            index: self.bank.get(self._current, prompt.variant).id
            for index, prompt in zip(stack.indices, stack.prompts, strict=True)
        }
        for index, prompt in enumerate(request.image_prompts):
            if prompt.is_controlnet:  # the ControlNet that read its map
                ids[index] = self.structure.spec(prompt).id
        for index, _ in stack.tokens:  # Redux: its checkpoint
            ids[index] = self.family.adapters[request.image_prompts[index].variant].id
        ramps = {
            index: self.family.adapters[prompt.variant.split("+")[0]].layer_ramp
            for index, prompt in zip(stack.indices, stack.prompts, strict=True)
        }
        prompts = []
        for index, prompt in enumerate(request.image_prompts):
            described = prompt.describe(ids.get(index))
            if ramps.get(index) is not None and prompt.block_map is None:
                described["layer_ramp"] = list(ramps[index])  # its layer weights, first to last adapter layer
            described["strength"] = cell[index]
            prompts.append(described)
        meta = {
            "schema": SCHEMA_VERSION,
            "app": APP_NAME,
            **describe(request),
            "strength": cell[0],
            "strengths": None,
            "extra_strengths": None,
            "image_prompts": prompts,
            "model_family": self.family.name,
            "base_model": self.family.bases[request.settings.base],
            "adapter": " + ".join(([adapter.id] if adapter else []) + [ids[i] for i, _ in stack.tokens]) or None,
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
            "scheduler": self.family.fast.scheduler if fast else type(self.pipe.scheduler).__name__,
            "speed": request.settings.speed,
            "fast_lora": self.family.fast.id if fast else None,
            "strength_scale": self.family.fast.strength_scale if request.settings.speed == "fast" else 1.0,
            "true_cfg_scale": self.true_cfg(request),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.split(":")[0],
            "packages": package_versions(),
        }
        if request.slots:
            meta["extra_strength"] = cell[1]
            for n, slot in enumerate(meta["slots"]):
                slot["strength"] = cell[n + 1]
        return meta
