"""Reproducibility metadata, stored as a PNG tEXt chunk `image_prompt` holding JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .png import write_png

PNG_KEY = "image_prompt"
SCHEMA_VERSION = 1

_PACKAGES = ("torch", "diffusers", "transformers", "gradio", "insightface", "onnxruntime-gpu", "pillow")


@functools.cache  # read once per process: the lookups cost about 10 ms, on every image otherwise
def _installed_versions() -> tuple[tuple[str, str], ...]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the pixels (absent ones are left out)."""
    return dict(_installed_versions())


def pillow_png(image: Image.Image, path: Path, text: dict[str, str]) -> Path:
    """Pillow's own PNG writer at its default settings (what results used before pipelines/png.py)."""
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info)
    return path


# How results are encoded (python -m bench.serving; 1024x1024 photo-like result, 2 CPU cores): Pillow's default
# 430 ms and 1.48 MB; pipelines/png.py about 30 ms and 1.6 MB. Swappable for that benchmark's "before".
PNG_WRITER: Callable[[Image.Image, Path, dict[str, str]], Path] = write_png


def save_png(image: Image.Image, meta: dict[str, Any], path: str | Path) -> Path:
    """Write `image` as PNG with `meta` as JSON in the `image_prompt` text chunk."""
    return PNG_WRITER(image, Path(path), {PNG_KEY: json.dumps(meta, sort_keys=True)})


def read_png_metadata(path_or_image: str | Path | Image.Image) -> dict[str, Any] | None:
    """The `image_prompt` metadata of a PNG, or None when it has none.

    Read from the chunks before the image data (where `save_png` writes it): no pixel is decoded.
    """
    if isinstance(path_or_image, Image.Image):
        raw = path_or_image.info.get(PNG_KEY)
    else:
        with Image.open(path_or_image) as img:
            raw = img.info.get(PNG_KEY)
    return json.loads(raw) if raw else None
