"""The writer: what a render or a sweep returns, and the metadata that reproduces each cell.

`Writer` builds a cell's metadata (every setting, each image prompt with its strength and checkpoint, the models,
the package versions), the whole sweep's (its axes, scores and suggestion), and the diagnostics of a run from the
counters the runner hands it. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .codec import describe
from .metadata import SCHEMA_VERSION, package_versions
from .request import GenerationRequest
from .scoring import suggest

APP_NAME = "image-prompt-studio"


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

    def single(self) -> GenerationResult:
        """A one-cell run as one image."""
        return GenerationResult(self.images[0], self.cell_metadata[0], self.diagnostics, self.warnings, self.previews)


@dataclass
class GenerationResult:
    """One image, the metadata that reproduces it, and how the run went."""

    image: Image.Image
    metadata: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    previews: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class RunFacts:
    """What the writer needs of a run besides the request and its prepared slots."""

    family: Any  # FamilySpec
    dtype: str
    device: str  # the engine's ("cuda:0"); the metadata keeps its kind ("cuda")
    scheduler: str  # the base sampler's class name
    guidance: Any  # conditioning.Guidance


class Writer:
    """Metadata, sweep axes and diagnostics of a run (one instance per run)."""

    def __init__(self, request: GenerationRequest, prepared: Any, facts: RunFacts) -> None:
        self.request, self.prepared, self.facts = request, prepared, facts

    def cell(self, cell: tuple[float, ...]) -> dict[str, Any]:
        """Everything needed to reproduce the image of `cell` (one strength per declared image prompt)."""
        request, facts, family = self.request, self.facts, self.facts.family
        own = self.prepared.metadata()
        ids = self.prepared.ids()
        fast = request.settings.speed == "fast"
        prompts = []
        for index, prompt in enumerate(request.image_prompts):
            described = prompt.describe(ids.get(index))
            if index in own["ramps"]:
                described["layer_ramp"] = own["ramps"][index]  # its layer weights, first to last adapter layer
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
            "model_family": family.name,
            "base_model": family.bases[request.settings.base],
            "adapter": own["adapter"],
            "image_encoder": own["image_encoder"],
            "face_model": family.faces.pack if own["uses_faces"] else None,
            "scheduler": family.fast.scheduler if fast else facts.scheduler,
            "speed": request.settings.speed,
            "fast_lora": family.fast.id if fast else None,
            "strength_scale": family.fast.strength_scale if fast else 1.0,
            "true_cfg_scale": facts.guidance.true_cfg,
            "dtype": facts.dtype,
            "device": facts.device.split(":")[0],
            "packages": package_versions(),
        }
        if request.slots:
            meta["extra_strength"] = cell[1]
            for n, slot in enumerate(meta["slots"]):
                slot["strength"] = cell[n + 1]
        return meta

    def result(
        self,
        images: list[Image.Image],
        cells: list[tuple[float, ...]],
        diagnostics: dict[str, Any],
        warnings: list[str],
        scores: list[dict[str, Any]],
        sweep: bool,
    ) -> SweepResult:
        """The run as a sweep of `cells` (one cell: a single render): each cell's metadata and the sweep's, its
        axes, and with scores the suggested cell."""
        request = self.request
        metas = [self.cell(cell) for cell in cells]
        sweep_meta = {**self.cell(cells[0]), "strength": None}
        result = SweepResult(images, [c[0] for c in cells], metas, sweep_meta, diagnostics, warnings,
                             self.prepared.previews)  # fmt: skip
        if not sweep:  # a single render
            return result
        strengths = [float(s) for s in request.sweep.strengths]
        columns = [c[1] for c in cells[: len(cells) // len(strengths)]] if request.slots else []
        result.extra_strengths = [c[1] for c in cells] if request.slots else []
        result.shape = (len(strengths), len(columns) if len(columns) > 1 else 1)
        if len(columns) > 1:
            result.metadata["extra_strengths"] = columns
            result.metadata["extra_strength"] = None
        result.metadata["strengths"] = strengths
        if scores:
            keys = ("strength", "extra_strength")[: len(request.image_prompts)]  # the swept axes
            result.scores = [{**dict(zip(keys, cell, strict=False)), **values}
                             for cell, values in zip(cells, scores, strict=True)]  # fmt: skip
            swept = [""] if len(strengths) > 1 or len(columns) <= 1 else []
            swept += ["extra_"] if len(columns) > 1 else []
            result.suggested = suggest(result.scores, swept)
            result.metadata["scores"] = result.scores
            result.metadata["suggested"] = result.suggested
        return result

    def diagnostics(
        self, passes: list, choice: str, used: Any, seconds: float, steps: int, score_seconds: float | None
    ) -> dict[str, Any]:
        """How the run went: time, the counters it used, its passes, and each slot kind's own numbers."""
        settings = self.request.settings
        out = {
            "seconds": round(seconds, 4),
            "steps_per_second": round(steps / seconds, 2) if seconds > 0 else None,
            "unet_calls": used["unet_calls"],
            "denoiser_calls": used["unet_calls"],  # the UNet's or the transformer's, whatever the architecture
            "encoder_calls": used["encoder_calls"],
            "text_encoder_calls": used["text_encoder_calls"],
            "cache_hits": used["embed_cache_hits"],
            "batch_size": max(len(p.members) for p in passes),
            "batches": len(passes),
            "batch_plan": "+".join(str(len(p.members)) for p in passes),
            "batch_choice": choice,
            "images": sum(len(p.members) for p in passes),
            "image_prompts": self.prepared.image_prompts,
            "device": self.facts.device,
            "base": settings.base,
            "speed": settings.speed,
        }
        if score_seconds is not None:
            out["score_seconds"] = score_seconds
        out |= self.prepared.diagnostics(used)
        if len({p.start for p in passes}) > 1:
            out["passes_note"] = (
                "A start image's strength decides where denoising starts, so each start strength is its own pass."
            )
        return out
