"""The runner: one lock, the base pipelines, recovery and counters; the stages do the rest.

A request goes through four stages, and the runner hands values from one to the next without opening them: the slot
kinds prepare its image prompts once (`pipelines/slots/`), the planner puts its cells in passes (`pipelines/plan.py`),
the architecture runs each pass with the conditioning values the kinds hand it (`Architecture.denoise`,
`pipelines/conditioning.py`), and the writer records metadata and diagnostics (`pipelines/result.py`). Nothing of a
request is stored on the model, and every use of a pipeline happens under `lock`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .adapters import AdapterBank, LoadedAdapter
from .arch import architecture
from .bases import Bases, LoadedBase
from .conditioning import Guidance, PassInput
from .device import ComputeLock, default_device, default_dtype, free_memory, upcast_vae
from .encoder import ImagePromptEncoder
from .errors import GenerationError, InvalidRequestError
from .face import FaceAnalyzer
from .numerics import row_exact_linear
from .plan import BatchPlanner, IdleWork, Pass, chunk_sizes, passes, step_timer
from .presets import FamilySpec
from .prompt_length import PromptLength
from .request import GenerationRequest
from .result import GenerationResult, RunFacts, SweepResult, Writer
from .scoring import Scorer
from .slots import Prepared, SlotKinds
from .sources import ModelSource

if TYPE_CHECKING:  # the model classes are imported where a model loads: the app serves its page before that
    from diffusers import DiffusionPipeline

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
log = logging.getLogger(__name__)


class _BrokenOutput(Exception):
    """A denoising pass produced NaN or all-black images."""


class Engine:
    """Owns the base pipelines of one model family and every adapter loaded on them."""

    def __init__(
        self, family: FamilySpec, *, device: str | None = None, dtype: torch.dtype | None = None,
        tiny_root: Path | None = None, max_batch: int | None = None, embed_cache_size: int = 64, offload: bool = False,
        compile: bool = False, max_bases: int = 1, threads: int | None = None, measure_when_idle: bool = True,
    ) -> None:  # fmt: skip
        """`max_batch`: samples per pass of a sweep (None: chosen by measuring this device, pipelines/plan.py), and
        `measure_when_idle` whether to measure in the background (off where the device may be used only inside a
        request, as on ZeroGPU). `max_bases`: base pipelines kept in memory (another one swaps in under the lock);
        `offload`: model CPU offload; `compile`: torch.compile the denoiser. `threads`: the CPU threads every use of
        a pipeline computes with (default: this process's torch default)."""
        row_exact_linear()  # a sample's pixels do not depend on the size of its batch (pipelines/numerics.py)
        if max_bases < 1:
            raise ValueError(f"max_bases must be at least 1, got {max_bases}")
        self.family, self.arch = family, architecture(family.pipeline)  # what differs: pipelines/arch/
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.max_batch, self.planner, self.measure_when_idle = max_batch, BatchPlanner(), measure_when_idle
        self.counters: Counter[str] = Counter()  # base_loads, adapter_loads, encoder_calls, unet_calls, ...
        self.source = ModelSource(family, tiny_root)
        self.encoder = ImagePromptEncoder(self.source, self.device, self.dtype, self.counters, embed_cache_size)
        self.bank = AdapterBank(self.source, self.encoder, self.counters)
        self.scorer = Scorer(self.source, self.encoder, self.counters)
        self.slots = SlotKinds(family, self.source, self.arch, self.encoder, self.bank, self.device, self.dtype,
                               self.counters, embed_cache_size)  # fmt: skip
        self.bases = Bases(self.source, self.arch, self.counters, {"device": self.device, "dtype": self.dtype,
                           "offload": offload, "compile": compile, "max_bases": max_bases})  # fmt: skip
        self.lock = ComputeLock(threads or torch.get_num_threads())  # every use of a pipeline or the model state
        self.idle = IdleWork(self.lock, self.calibrate, lambda request: request.settings.base in self.bases.held)
        self._prompt_length: PromptLength | None = None  # comes with the first base

    # ----------------------------------------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        return bool(self.bases.held)

    @property
    def _current(self) -> LoadedBase | None:
        return self.bases.current

    @property
    def pipe(self) -> DiffusionPipeline | None:
        """The base pipeline in use now (None before the first load)."""
        return self._current.pipe if self._current is not None else None

    @property
    def loaded_bases(self) -> list[str]:
        """The bases held in memory, least recently used first."""
        return list(self.bases.held)

    def load(self) -> None:
        """Load the base pipeline (once); adapters load on first use."""
        with self.lock:
            self._ensure_base()

    @property
    def base_name(self) -> str:
        """The base in use now: "default" or a key of the family's `alt_bases`."""
        return self._current.name if self._current is not None else "default"

    def _ensure_base(self, name: str | None = None) -> None:
        """Put base `name` in use (`Bases.ensure`); the first one brings the prompt-length warning's tokenizer."""
        self.bases.ensure(name)
        if self._prompt_length is None:
            self._prompt_length = PromptLength(*self.arch.prompt_tokenizer(self.pipe))

    def face_analyzer(self) -> FaceAnalyzer:
        """The family's insightface pack, created on first use and shared by every request."""
        return self.encoder.face_analyzer()

    def adapter(self, variant: str | Sequence[str]) -> LoadedAdapter:
        """A variant (or a combination: one variant per image prompt), loaded onto the base in use if needed."""
        with self.lock:
            self._ensure_base()
            return self.bank.get(self._current, variant)

    def use_variant(self, name: str | Sequence[str] | None) -> None:
        """Load (if needed) and activate a variant or combination; for warm-up and outside a request. Variants that
        do not act in attention (Redux, in-context references) have nothing to put on the denoiser."""
        names = [name] if isinstance(name, str) else list(name or [])
        with self.lock:
            self._ensure_base()
            attention = [n for n in names if self.slots.in_attention(n)]
            self.bank.activate(self._current, tuple(attention) if attention else None)

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
        inputs, or each face box and aligned crop; then each map a slot makes."""
        with self.lock:
            self._ensure_base()
            return self.slots.views(request, variant, self._current, scope)

    # ------------------------------------------------------------------------------------------- generation

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None, *, scope: str = ""
    ) -> GenerationResult:
        """Render one image for `request`; `scope` keeps one visitor's cached embeddings apart from others'."""
        cell = tuple(p.strength for p in request.image_prompts)
        return self._run(request, [cell], on_step, scope, score=False, sweep=False).single()

    def generate_sweep(
        self, request: GenerationRequest, on_step: StepCallback | None = None, *, scope: str = "", score: bool = False
    ) -> SweepResult:
        """The same seed and noise at each cell of `request.sweep`, in batched denoising passes.

        Its `strengths` sweep the tab's own image prompt, its `extra_strengths` (default: the slot's own strength)
        the first added one: with both, every pair is a cell (rows = strengths). References are encoded once; the
        denoiser runs `steps` times per pass, not per cell. `score` also scores every cell (likeness, adherence,
        identity: pipelines/scoring.py) in one batched pass and suggests a cell.
        """
        if not request.sweep.strengths:
            raise ValueError("no strengths given")
        cells = request.sweep.cells(request.image_prompts)
        return self._run(request, cells, on_step, scope, score=score, sweep=True)

    def score(self, image: Image.Image, request: GenerationRequest, scope: str = "") -> tuple[dict[str, Any], list]:
        """One image's scores against `request`'s references and prompt (the same object as a scored cell's)."""
        with self.lock:
            values, notes = self.scorer.score([image], request, scope)
            return values[0], notes

    def _run(
        self, request: GenerationRequest, cells: list[tuple[float, ...]], on_step: StepCallback | None, scope: str,
        *, score: bool, sweep: bool,
    ) -> SweepResult:  # fmt: skip
        """Render `cells` (one strength per declared image prompt each) in batched passes from the same noise."""
        if request.family and request.family != self.family.name:  # one family (one architecture) per engine
            raise InvalidRequestError(
                "mode", f"This engine runs the {self.family.name} family; the request was made for {request.family}."
            )
        if request.settings.base not in self.family.bases:  # a request built without `build_request` is checked here
            raise InvalidRequestError("base", f"base {request.settings.base!r} is not one of {list(self.family.bases)}")
        warnings = self.prompt_warnings(request)  # outside the engine lock: it never waits for a render
        if not request.settings.prompt:
            warnings.append("The prompt is empty: the image comes from the image prompt (and the mode) alone.")
        warnings += self.slots.warnings(request) + self.arch.notes(request.settings)
        with self.lock:
            self._ensure_base(request.settings.base)
            start, before = time.perf_counter(), Counter(self.counters)
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            layout = self.arch.guidance(self.family.adapters, request.primary.variant, request.settings.guidance)
            text = self._encode_text(request, layout.negative_text)
            prepared = self.slots.prepare(request, self._current, scope, warnings, layout)
            plan, choice = passes(cells, request.settings.steps, prepared.start_of,
                                  lambda n: self._chunk_sizes(request, n))  # fmt: skip
            images = self._render(request, text, cells, plan, prepared, layout, on_step, warnings)
            scores, score_seconds = self.scorer.score_cells(images, request, scope, warnings) if score else ([], None)
            facts = RunFacts(self.family, str(self.dtype).removeprefix("torch."), self.device,
                             type(self.pipe.scheduler).__name__, layout)  # fmt: skip
            writer = Writer(request, prepared, facts)
            seconds = time.perf_counter() - start
            steps = sum(p.steps for p in plan)
            diagnostics = writer.diagnostics(plan, choice, self.counters - before, seconds, steps, score_seconds)
            if self.device.startswith("cuda"):
                diagnostics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            return writer.result(images, cells, diagnostics, warnings, scores, sweep)

    def _encode_text(self, request: GenerationRequest, guided: bool) -> dict[str, torch.Tensor]:
        """The prompt's text embeddings for one sample, once per request: every pass of a sweep reuses them."""
        return self.arch.encode_text(self.pipe, request.settings.full_prompt, request.settings.negative_prompt, guided)

    def _render(
        self, request: GenerationRequest, text: dict, cells: list, plan: list[Pass], prepared: Prepared,
        layout: Guidance, on_step: StepCallback | None, warnings: list[str],
    ) -> list[Image.Image]:  # fmt: skip
        """Every pass of the plan, each one guarded; the images in cell order."""
        images: list[Any] = [None] * len(cells)
        total, done = sum(p.steps for p in plan), 0
        for run in plan:

            def denoise(run: Pass = run, offset: int = done) -> list[Image.Image]:
                tick = None if on_step is None else (lambda i: on_step(offset + i, total))
                return self._denoise(request, text, [cells[i] for i in run.members], run, prepared, layout, tick)

            for i, image in zip(run.members, self._guarded(denoise, warnings), strict=True):
                images[i] = image
            done += run.steps
        return images

    def _denoise(
        self, request: GenerationRequest, text: dict, cells: list, run: Pass, prepared: Prepared, layout: Guidance,
        tick: Callable[[int], None] | None,
    ) -> list[Image.Image]:  # fmt: skip
        """One batched pass: one sample per cell, sharing prompt, noise and every slot's prepared values."""
        base, settings = self._current, request.settings
        if settings.speed == "fast":  # the few-step LoRA's sampler, for this call only (all under the lock)
            self.pipe.scheduler = self.bank.fast_scheduler(base)
        try:
            pipe, values = prepared.for_pass(self.pipe, cells, run, layout.cfg_batch)
            latents = None if run.start else self.initial_latents(request, len(cells))  # a start image: its own
            job = PassInput(pipe, text, len(cells), settings.steps, settings.guidance, settings.width,
                            settings.height, settings.seed, latents, values, layout, tick)  # fmt: skip
            images, hidden = self.arch.denoise(job)
            broken = [not np.isfinite(img).all() or (img.max() <= 1 / 255 and not h)
                      for img, h in zip(images, hidden, strict=True)]  # fmt: skip
            if any(broken):
                raise _BrokenOutput()
            return self.pipe.numpy_to_pil(images)
        finally:
            self.pipe.scheduler = base.scheduler

    # ------------------------------------------------------------------------------------------ batch sizes

    def _plan_key(self, request: GenerationRequest) -> tuple:
        s = request.settings
        return (s.width, s.height, str(self.dtype), self.arch.cfg_batch(s.guidance), s.base)

    def _chunk_sizes(self, request: GenerationRequest, n: int) -> tuple[list[int], str]:
        """How many images each pass of a sweep of `n` holds, and how that was chosen (`plan.chunk_sizes`)."""
        later = (lambda: self.calibrate_when_idle(request, n)) if self.measure_when_idle else None
        return chunk_sizes(self.max_batch, self.planner, self._plan_key(request), n, later)

    def calibrate(self, request: GenerationRequest, n: int) -> dict[int, float]:
        """Measure this device for sweeps of up to `n` images at `request`'s size (one denoising step per batch
        size, text only: the adapter's share is small); the app's warm-up calls it for the default comparison. The
        timed steps are nobody's denoiser calls."""
        with self.lock:
            self._ensure_base(request.settings.base)
            text = self._encode_text(request, self.arch.cfg_batch(request.settings.guidance))
            self.bank.activate(self._current, None, request.settings.speed == "fast")
            calls = self.counters["unet_calls"]
            try:
                call = self.arch.stock_call(text, request.settings.guidance)
                timer = step_timer(self.pipe, call, request.settings, lambda: free_memory(self.device))
                return self.planner.curve(self._plan_key(request), n, timer)
            finally:
                self.counters["unet_calls"] = calls

    def calibrate_when_idle(self, request: GenerationRequest, n: int) -> None:
        """Measure for `request`'s size once nobody has used the engine for a while (`pipelines/plan.IdleWork`)."""
        self.idle.add(self._plan_key(request), request, n)

    # ---------------------------------------------------------------------------------------------- recovery

    def _guarded(self, denoise: Callable[[], list[Image.Image]], warnings: list[str]) -> list[Image.Image]:
        """Run a denoising pass; NaN/black output retries once with the VAE in fp32; out of memory is cleaned up."""
        try:
            try:
                return denoise()
            except _BrokenOutput:
                if self.pipe.vae.dtype == torch.float32:
                    raise
                log.warning("NaN or black image: decoding with the VAE in fp32 from now on")
                upcast_vae(self.pipe.vae)
                warnings.append("The image overflowed in half precision; it was redone with the VAE in fp32.")
                return denoise()
        except _BrokenOutput as e:
            raise GenerationError(
                "The image came out black or invalid (a numerical overflow). Try another seed, fewer steps or a "
                "lower guidance."
            ) from e
        except torch.OutOfMemoryError as e:
            free_memory(self.device)
            raise GenerationError(
                "Out of GPU memory. Try a smaller size, fewer strengths in a comparison, or start the app with "
                "--offload. The app is still running."
            ) from e

    def prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """Tell the person when the text encoder will not read their whole prompt (outside the engine lock)."""
        if self._prompt_length is None:  # the first request: the tokenizer comes with the base
            with self.lock:
                self._ensure_base()
        return self._prompt_length.warnings(request)

    def initial_latents(self, request: GenerationRequest, batch: int = 1) -> torch.Tensor:
        """Seeded noise drawn on the CPU (identical on every device), repeated for each sample of a batch."""
        settings = request.settings
        noise = self.arch.initial_latents(self.pipe, settings.seed, settings.width, settings.height)
        return noise.repeat(batch, *([1] * (noise.dim() - 1))).to(self.device, self.dtype)
