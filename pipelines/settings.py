"""Settings that travel: one JSON schema for settings files, PNG metadata and the API's keyword parameters.

A settings file comes from anyone (a PNG found online, a crafted JSON): it is read with bounded size and depth,
every value is type-checked, then validated as a request against the tab's preset. Whatever is wrong is reported as
"This settings file is not valid: ..."; what reaches the controls is the validated value, never the raw one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from .codec import build_request, describe
from .errors import InvalidRequestError, shown
from .images import ReferenceImage
from .metadata import PNG_KEY, SCHEMA_VERSION
from .parameters import SETTINGS_TYPES
from .png import PngChunkError, read_text
from .presets import MODES, ModePreset
from .request import GenerationRequest

# The keys a person sets, with the JSON type each must have: the parameters of `pipelines.parameters` (the API's
# keyword names and the PNG metadata fields), less the image inputs.
SETTINGS_KEYS = tuple(SETTINGS_TYPES)
FAST_IMPLIED = ("steps", "guidance")  # set by fast mode itself: a fast PNG leaves the quality sliders as they are
MAX_SETTINGS_BYTES = 256 * 1024  # a settings file is a few hundred bytes; PNG text is capped by Pillow (1 MB)
MAX_DEPTH = 16  # nesting of a settings document (ours is 3 deep: the package versions)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PHRASES = {
    "text": "text",
    "number": "a number",
    "integer": "a whole number",
    "true or false": "true or false",
    "numbers": "a list of numbers",
    "slots": "a list of image-prompt objects",
}


_PLACEHOLDER = ReferenceImage(Image.new("RGB", (1, 1)), "placeholder")  # stands for an image a file cannot hold


class SettingsFileError(InvalidRequestError):
    """A settings file or PNG that cannot be loaded; the message says why, for the person who chose it."""

    def __init__(self, reason: str) -> None:
        super().__init__("settings", f"This settings file is not valid: {reason}")


def settings_of(request: GenerationRequest) -> dict[str, Any]:
    """A settings file for `request` (what a person can load back into a tab)."""
    described = describe(request)
    return {"schema": SCHEMA_VERSION, "mode": request.mode, **{k: described[k] for k in SETTINGS_KEYS}}


def _depth(data: Any) -> int:
    """How deeply `data` nests lists and objects (iteratively: a crafted document cannot exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "numbers":
        return isinstance(value, list) and all(_type_ok("number", v) for v in value)
    if kind == "slots":  # each slot's values are checked when the request is built
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if kind == "text":
        return isinstance(value, str)
    if kind == "true or false":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or isinstance(value, int) or float(value).is_integer()


def parse_settings(data: Any) -> tuple[str, dict[str, Any]]:
    """(mode, settings) from a settings dict or PNG metadata; unknown keys (package versions, ...) are ignored."""
    if not isinstance(data, dict):
        raise SettingsFileError("it must hold a JSON object.")
    if _depth(data) > MAX_DEPTH:
        raise SettingsFileError(f"it is nested more than {MAX_DEPTH} levels deep.")
    mode = data.get("mode")
    if mode not in MODES:
        raise SettingsFileError(f"it names mode {shown(mode)}; expected one of {list(MODES)}.")
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise SettingsFileError(f"schema {shown(schema)} is not supported (expected {SCHEMA_VERSION}).")
    values = {}
    for key, kind in SETTINGS_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        if not _type_ok(kind, value):
            raise SettingsFileError(f"{key} must be {_PHRASES[kind]}, got {shown(value)}.")
        values[key] = value
    return mode, values


def validated_settings(preset: ModePreset, values: dict[str, Any]) -> dict[str, Any]:
    """The values of `values`' keys as a request built from them has them (ranges checked, text cleaned).

    Keys the file lacks take the preset's defaults for the check and are left out of the result, as are keys that
    do not apply (an extra prompt's values without its `extra_mode`, a grid's sweep as lists).
    """
    values = {k: v for k, v in values.items() if k in SETTINGS_TYPES}
    asked = set(values)  # what the file holds (its extra_* are answered from the slots they describe)
    if values.get("slots"):  # a file made here also describes slot 1 as extra_*: `slots` holds them all
        values = {k: v for k, v in values.items() if not k.startswith("extra_") or k == "extra_strengths"}
        # The images are not in the file: the slots are checked as if each had its images.
        values["slot_images"] = [_PLACEHOLDER] * sum(_count(s) for s in values["slots"])
    try:
        request = build_request(preset, **{"prompt": "", **values})
    except InvalidRequestError as e:
        raise SettingsFileError(str(e)) from e
    clean = settings_of(request)
    implied = FAST_IMPLIED if request.settings.speed == "fast" else ()  # fast mode's steps and guidance are the LoRA's
    return {key: clean[key] for key in asked if clean.get(key) is not None and key not in implied}


def _count(slot: dict[str, Any]) -> int:
    images = slot.get("images", 1)
    return images if isinstance(images, int) and not isinstance(images, bool) and 0 <= images <= 8 else 0


def _png_text(path: Path) -> str | None:
    """The `image_prompt` text of a PNG, read from the chunks before the image data within a budget of chunks and
    bytes (pipelines/png.py: a PNG of millions of empty chunks answers at once); no pixel is decoded."""
    try:
        return read_text(path, PNG_KEY)
    except (OSError, PngChunkError) as e:
        raise SettingsFileError(f"its PNG chunks cannot be read ({e}).") from None


def read_settings_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Settings from a PNG made by this app (its `image_prompt` metadata) or from a JSON settings file."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(len(_PNG_MAGIC))
    if head == _PNG_MAGIC:
        text = _png_text(path)
        if text is None:
            raise SettingsFileError("this image has no settings from this app (only PNGs made here carry them).")
    else:
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise SettingsFileError(f"it is larger than {MAX_SETTINGS_BYTES // 1024} KB.")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise SettingsFileError("it is neither a PNG made by this app nor a JSON settings file.") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise SettingsFileError(f"it is nested more than {MAX_DEPTH} levels deep.") from None
    except ValueError as e:  # not JSON, or an integer past Python's digit limit
        if "digits" in str(e):
            raise SettingsFileError("a number in it has too many digits.") from None
        raise SettingsFileError("it is neither a PNG made by this app nor a JSON settings file.") from None
    return parse_settings(data)
