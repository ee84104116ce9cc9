"""What every tab's endpoints do, as module-level functions over a narrow interface (`Studio`).

A tab's events call these with the values named after the API's keywords (`pipelines/parameters.py`); the UI's
slot groups are folded into `slots` / `slot_images` first (`fold_slot_groups`), so the page and the API run the
same code. Nothing here builds UI.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from pipelines.codec import build_request, parse_slots
from pipelines.errors import InvalidRequestError
from pipelines.grid import make_grid
from pipelines.images import load_reference
from pipelines.metadata import save_png
from pipelines.parameters import MAX_SLOTS, SLOT_KEY_NAMES
from pipelines.plot import score_plot
from pipelines.presets import CONTROLNET_KINDS, MAX_GRID_CELLS, STRUCTURE_KINDS, FamilySpec, ModePreset, structure_texts
from pipelines.request import GenerationRequest
from pipelines.settings import settings_of

from .common import format_diagnostics, gpu_seconds, output_path, write_png
from .serving import escape, visitor_scope
from .stop import stopping

if TYPE_CHECKING:
    from pipelines.engine import Engine

ENCODERS = min(4, os.cpu_count() or 1)  # PNGs of one comparison encoded at once
FILE_INPUTS = {  # file input -> its label in messages (API keywords, then the page's slot galleries)
    "reference": "reference", "face_reference": "face close-up", "extra_reference": "extra reference",
    "negative_reference": "negative image", "image": "image to score", "slot_images": "slot image",
    **{f"slot{i}_images": f"slot {i} image" for i in range(1, MAX_SLOTS + 1)},
}  # fmt: skip


@dataclass(frozen=True)
class Studio:
    """What a tab calls, and the few facts about the models it shows: never the engine itself."""

    generate: Callable[..., Any]  # (request, on_step=, scope=) -> GenerationResult
    sweep: Callable[..., Any]  # (request, on_step=, scope=, score=) -> SweepResult
    preview: Callable[..., list[Image.Image]]  # (request, variant, scope=) -> what the adapters see
    score: Callable[..., tuple[dict, list]]  # (image, request, scope=) -> (scores, notes)
    family: FamilySpec
    scored: bool  # comparisons are scored (the family has scoring models)

    @classmethod
    def of(cls, engine: Engine) -> Studio:
        return cls(engine.generate, engine.generate_sweep, engine.encoder_preview, engine.score, engine.family,
                   engine.scorer.available)  # fmt: skip


def fold_slot_groups(values: dict[str, Any]) -> dict[str, Any]:
    """The page's slot groups (`slot1_mode`, `slot1_images`, ...) as the API's `slots` and `slot_images`."""
    out = dict(values)
    slots, images = [], []
    for i in range(1, MAX_SLOTS + 1):
        group = {key: out.pop(f"slot{i}_{key}", None) for key in SLOT_KEY_NAMES}
        if group["mode"] in (None, "", "none"):
            continue
        taken = list(group.pop("images") or [])
        if group["mode"] in STRUCTURE_KINDS:  # its hidden controls do not apply: no adapter, the whole image
            group["variant"] = group["region"] = None
        if structure_texts("control_type").get(group["mode"]) != "any":  # only a ready map says what it shows
            group["control_type"] = None
        slots.append({**{k: v for k, v in group.items() if v not in (None, "")}, "images": len(taken)})
        images += taken
    if slots or "slots" not in out:
        out["slots"], out["slot_images"] = slots, images
    return out


def request_from(preset: ModePreset, values: dict[str, Any]) -> GenerationRequest:
    """The request for named UI/API values (file inputs arrive as lists of paths the boundary has vetted)."""
    values = fold_slot_groups(values)
    for name in FILE_INPUTS:
        if name in values:
            values[name] = values[name] or []
    return build_request(preset, **values)


def _progress(progress: Any) -> Callable[[int, int], None]:
    """After each step: the progress bar (when there is one), then Stop's check (ui/stop.py)."""
    if progress is None:
        return stopping(None)

    def on_step(done: int, total: int) -> None:
        progress((done, total), desc="Drawing", unit="steps")

    return stopping(on_step)


def single(studio: Studio, preset: ModePreset, values: dict[str, Any], progress: Any) -> tuple:
    """One image: (PNG path, seed used, diagnostics, metadata, what the adapters saw)."""
    request = request_from(preset, values)
    result = studio.generate(request, on_step=_progress(progress), scope=visitor_scope())
    path = write_png(result.image, result.metadata)
    report = format_diagnostics(result.diagnostics, result.warnings)
    shown = {**result.metadata, "diagnostics": result.diagnostics}  # the counters, beside what reproduces it
    return path, request.settings.seed, report, shown, result.previews


def sweep(studio: Studio, preset: ModePreset, values: dict[str, Any], progress: Any) -> tuple:
    """A comparison: (cells, A/B pair, grid PNG, seed, diagnostics, metadata, scores, suggested, plot, settings)."""
    mode = preset.mode
    request = request_from(preset, {**values, "strengths": values.get("strengths") or preset.compare})
    out = studio.sweep(request, on_step=_progress(progress), scope=visitor_scope(), score=studio.scored)
    _, columns = out.shape
    best = out.suggested["index"] if out.suggested else None
    if columns > 1:  # a 2-D grid: rows = strengths, columns = the first slot's strengths
        captions = [f"{s:g} × {e:g}" for s, e in zip(out.strengths, out.extra_strengths, strict=True)]
        row_labels = [f"{mode} {s:g}" for s in out.strengths[::columns]]
        column_labels = [f"{request.slots[0].mode} {e:g}" for e in out.extra_strengths[:columns]]
    else:
        captions = [f"{s:g}" for s in out.strengths]  # short: readable under the smallest cell
        row_labels, column_labels = None, [f"strength {c}" for c in captions]
    # Encoding is most of the time outside the denoiser: the cells, the grid and the plot are encoded at once
    # (zlib releases the GIL), each PNG with the fast settings of pipelines/metadata.py.
    with ThreadPoolExecutor(max_workers=ENCODERS) as pool:
        cells = [pool.submit(write_png, img, m) for img, m in zip(out.images, out.cell_metadata, strict=True)]
        grid = make_grid(out.images, column_labels, row_labels, highlight=best)
        grid_path = pool.submit(save_png, grid, out.metadata, output_path(f"{mode}-compare"))
        chart = pool.submit(_plot, out, mode) if out.scores else None
        settings_path = output_path(f"{mode}-sweep", ".json")
        sweep_file = {**settings_of(request), "scores": out.scores or None, "suggested": out.suggested}
        settings_path.write_text(json.dumps(sweep_file, indent=1, ensure_ascii=False), encoding="utf-8")
        paths = [c.result() for c in cells]
        grid_path, chart = grid_path.result(), chart.result() if chart else None
    pair = (paths[0], paths[1]) if len(paths) == 2 else None
    report = format_diagnostics(out.diagnostics, out.warnings)
    gallery = list(zip(paths, captions, strict=True))
    shown = {**out.metadata, "diagnostics": out.diagnostics}
    return (gallery, pair, str(grid_path), request.settings.seed, report, shown, out.scores, out.suggested, chart,
            str(settings_path))  # fmt: skip


def _plot(out: Any, mode: str) -> str:
    path = output_path(f"{mode}-scores")
    save_png(score_plot(out.scores, out.suggested), {}, path)
    return str(path)


def score(studio: Studio, preset: ModePreset, values: dict[str, Any], progress: Any) -> dict:
    """Any image's scores against the references and prompt."""
    images = values.pop("image") or []
    if not images:
        raise InvalidRequestError("image", "Choose an image to score.")
    request = request_from(preset, {**values, "seed": 0})
    image = load_reference(images[0], label="image to score").image
    result, notes = studio.score(image, request, scope=visitor_scope())
    for note in notes:
        gr.Warning(escape(note))
    return result


def settings_file(studio: Studio, preset: ModePreset, values: dict[str, Any], progress: Any) -> str:
    """A settings file for these values (what `load_settings` reads back)."""
    request = request_from(preset, values)
    path = output_path(f"{preset.mode}-settings", ".json")
    path.write_text(json.dumps(settings_of(request), indent=1, ensure_ascii=False), encoding="utf-8")
    return str(path)


def preview(studio: Studio, preset: ModePreset, values: dict[str, Any], progress: Any) -> list:
    """What each image prompt's adapter sees of its images (nothing when there is no image)."""
    request = request_from(preset, values)
    if not any(p.references for p in request.image_prompts):
        return []
    return studio.preview(request, request.primary.variant, scope=visitor_scope())


def gpu_time(studio: Studio, preset: ModePreset, images: int) -> Callable[[dict[str, Any], Any], int]:
    """ZeroGPU's time estimate for an endpoint drawing `images` images (0: as many as the comparison's cells)."""

    def estimate(values: dict[str, Any], progress: Any) -> int:
        n = images or comparison_cells(values)
        sizes = [values.get(k) or getattr(preset, k).default for k in ("steps", "width", "height")]
        try:
            steps, width, height = (int(float(v)) for v in sizes)
        except (TypeError, ValueError):
            steps, width, height = preset.steps.max, preset.width.max, preset.height.max
        if values.get("speed") == "fast" and preset.fast is not None:
            steps = preset.fast.steps
        controlnets = sum(kind in CONTROLNET_KINDS for kind in slot_kinds_of(values))
        # A ControlNet costs up to about a UNet's encoder half again per step (bench.structure).
        return gpu_seconds(studio.family.pipeline, steps, n, width, height, 1 + 0.6 * controlnets)

    return estimate


def slot_kinds_of(values: dict[str, Any]) -> list[str]:
    """The kinds of the slots a request's values name (the page's groups or the API's `slots`; bad values: none)."""
    kinds = [values.get(f"slot{i}_mode") for i in range(1, MAX_SLOTS + 1)]
    with contextlib.suppress(InvalidRequestError):  # the request itself says what is wrong
        kinds += [s.get("mode") for s in parse_slots(values.get("slots")) if isinstance(s, dict)]
    return [k for k in kinds if isinstance(k, str)]


def comparison_cells(values: dict[str, Any]) -> int:
    """How many images a comparison draws, counted from its text (bad values count as the largest grid)."""

    def count(text: Any, default: int) -> int:
        if text in (None, "", ()):
            return default
        if isinstance(text, (list, tuple)):
            return len(text)
        return len([t for t in str(text).replace(";", ",").split(",") if t.strip()]) or default

    return min(count(values.get("strengths"), 5) * count(values.get("extra_strengths"), 1), MAX_GRID_CELLS)
