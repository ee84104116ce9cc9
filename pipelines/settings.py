"""Settings that travel: one JSON schema for settings files, PNG metadata and the API's keyword parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import InvalidRequestError
from .metadata import SCHEMA_VERSION, read_png_metadata
from .presets import MODES
from .request import GenerationRequest

# The keys a person sets; the same names as the API parameters and the PNG metadata fields.
SETTINGS_KEYS = (
    "prompt",
    "negative_prompt",
    "strength",
    "variant",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "stop_at",
    "crop",
    "layout",
    "structure",
)


def settings_of(request: GenerationRequest) -> dict[str, Any]:
    """A settings file for `request` (what a person can load back into a tab)."""
    described = request.describe()
    return {"schema": SCHEMA_VERSION, "mode": request.mode, **{k: described[k] for k in SETTINGS_KEYS}}


def parse_settings(data: Any) -> tuple[str, dict[str, Any]]:
    """(mode, settings) from a settings dict or PNG metadata; unknown keys (package versions, ...) are ignored."""
    if not isinstance(data, dict):
        raise InvalidRequestError("settings", "The settings file must hold a JSON object.")
    mode = data.get("mode")
    if mode not in MODES:
        raise InvalidRequestError("settings", f"The settings name mode {mode!r}; expected one of {list(MODES)}.")
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise InvalidRequestError(
            "settings", f"Settings schema {schema!r} is not supported (expected {SCHEMA_VERSION})."
        )
    return mode, {k: data[k] for k in SETTINGS_KEYS if data.get(k) is not None}


def read_settings_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Settings from a PNG made by this app (its `image_prompt` metadata) or from a JSON settings file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            meta = read_png_metadata(img)
        if meta is None:
            raise InvalidRequestError(
                "settings", "This image has no settings from this app (only PNGs made here carry them)."
            )
        return parse_settings(meta)
    except (UnidentifiedImageError, OSError):
        pass  # not an image: try JSON
    try:
        return parse_settings(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequestError(
            "settings", "This file is neither a PNG made by this app nor a JSON settings file."
        ) from e
