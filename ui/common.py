"""What every tab shares: seeds, the concurrency groups, turning results into files and diagnostics into text."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

try:  # Hugging Face ZeroGPU
    import spaces
except ImportError:
    spaces = None

from pipelines.metadata import save_png

from .serving import OUTPUTS, as_code, escape

log = logging.getLogger("image_prompt_studio")

GPU_CONCURRENCY_ID = "gpu"  # every event that runs the pipeline shares one queue slot
# Events that only decode or write files (settings) share one small slot of their own: N parallel decodes of
# crafted files cannot add up, and they never wait behind a render.
IO_CONCURRENCY = {"concurrency_id": "io", "concurrency_limit": 2}
# The page's own styling (Gradio 6 takes it at launch). Image strips (references, what the adapter sees) show whole
# pictures as fixed thumbnails, wrapping into rows, instead of one picture cropped by the strip's height; the
# comparison is as tall as its rows (no inner scroll hiding a row, no empty band under one row).
PAGE_CSS = """
.strip .grid-container { grid-template-columns: repeat(auto-fill, 150px) !important; }
.strip .grid-wrap { min-height: 0 !important; max-height: none !important; height: auto !important; }
.strip .thumbnail-item { width: 150px; height: 150px; }
.fit-rows .grid-wrap { min-height: 0 !important; max-height: none !important; height: auto !important; }
"""


# Seconds of GPU per denoising step per image of one megapixel (H100/H200-class, bf16), for ZeroGPU's budget.
GPU_SECONDS_PER_STEP_MP = {"sdxl": 0.06, "sd15": 0.03}
GPU_SECONDS_OVERHEAD = 15
GPU_SECONDS_MAX = 300


def gpu_seconds(pipeline: str, steps: int, images: int, width: int, height: int, weight: float = 1.0) -> int:
    """A generous estimate of the GPU time a request needs (ZeroGPU reserves this much); `weight`: the cost of one
    step relative to the UNet's alone (ControlNets add to it)."""
    per_step = GPU_SECONDS_PER_STEP_MP.get(pipeline, 0.06) * width * height / 1e6 * weight
    return int(min(GPU_SECONDS_MAX, GPU_SECONDS_OVERHEAD + 3 * steps * images * per_step))


def on_gpu(fn: Callable[..., Any], duration: Callable[..., int]) -> Callable[..., Any]:
    """`spaces.GPU(duration=...)` on ZeroGPU Spaces; the function unchanged everywhere else."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)


def output_path(prefix: str = "image", suffix: str = ".png") -> Path:
    """A fresh path in this app's output folder (bounded in age and count, removed at exit)."""
    return OUTPUTS.path(prefix, suffix)


def write_png(image: Any, metadata: dict[str, Any]) -> str:
    """Save a result as PNG with its metadata; return the path."""
    return str(save_png(image, metadata, output_path(metadata.get("mode", "image"))))


def format_diagnostics(diagnostics: dict[str, Any], warnings: list[str] | None = None) -> str:
    """One plain line under each result (after any warnings, also shown as toasts): time, speed, what drew it.

    The counters (denoiser and encoder calls, cache hits, face detections, the batch plan) are in the metadata
    JSON's `diagnostics`, for whoever measures.
    """
    parts = [f"{diagnostics['seconds']:.2f} s"]
    if diagnostics.get("speed") == "fast":
        parts.append("fast")
    if diagnostics.get("image_prompts", 1) > 1:
        parts.append(f"{diagnostics['image_prompts']} image prompts")
    images, batches = diagnostics.get("images", 1), diagnostics.get("batches", 1)
    if images > 1:
        parts.append(f"{images} images in {batches} pass{'es' if batches > 1 else ''}")
    parts.append(f"base {diagnostics['base']}")
    if diagnostics.get("steps_per_second"):
        parts.append(f"{diagnostics['steps_per_second']:g} steps a second")
    parts.append("GPU" if str(diagnostics.get("device", "")).startswith("cuda") else "CPU")
    if "peak_memory_gb" in diagnostics:
        parts.append(f"peak memory {diagnostics['peak_memory_gb']} GB")
    lines = []
    for warning in warnings or []:  # they may quote the person's own text: never rendered as markup
        gr.Warning(escape(warning))
        lines.append(f"⚠️ {as_code(warning)}")
    return "\n\n".join([*lines, " · ".join(parts)])
