"""Every parameter of a request, named once.

This table drives the request (`build_request` takes exactly these keywords), the settings schema (files and PNG
metadata), the UI (one control per parameter a tab offers) and the API (each endpoint's signature, in this order,
and the description of each argument). A new parameter is added here and nowhere else names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .presets import (
    CONTROL_TYPES,
    EXTRA_MODES,
    MODES,
    REGIONS,
    SLOT_MODES,
    STRUCTURE_KINDS,
    ModePreset,
    preset_for,
    structure_texts,
)

# JSON types of settings values: "number" is an integer or a decimal, "integer" a whole number; neither may be
# true/false. "images" are files (not settings: their SHA-256 is recorded instead); "numbers" a list of numbers;
# "slots" a list of image-prompt objects (keys: SLOT_KEYS).
KINDS = ("text", "number", "integer", "true or false", "images", "numbers", "slots")
MAX_IMAGES_PER_INPUT = 8  # images one "images" parameter may carry (references, face close-ups, ...)
MAX_SLOTS = 3  # image prompts a request may add after the tab's own (four in all)
ROLES = ("single", "compare", "score")
Default = Callable[[ModePreset], Any] | Any  # a constant, or read from the tab's preset


@dataclass(frozen=True)
class Parameter:
    """One keyword of the API, one control of a tab, one key of a settings file."""

    name: str
    kind: str
    doc: str  # what the API page and MCP tool description say of it
    modes: tuple[str, ...] = MODES  # the tabs that offer it
    role: str = "both"  # "single": one image only; "compare": comparisons only; "both"; "score": scoring only
    max_files: int = MAX_IMAGES_PER_INPUT  # "images" only: how many files it may carry
    default: Default = None  # what None means (the one place defaults live): a constant or `preset -> value`

    @property
    def setting(self) -> bool:
        """Saved in settings files and PNG metadata (images are not; their SHA-256 is)."""
        return self.kind != "images"

    def default_for(self, preset: ModePreset) -> Any:
        return self.default(preset) if callable(self.default) else self.default


_REGIONS = ", ".join(f"'{r}'" for r in REGIONS)
_EXTRA = ", ".join(f"'{m}'" for m in EXTRA_MODES)
_SLOT_MODES = ", ".join(f"'{m}'" for m in SLOT_MODES + STRUCTURE_KINDS)
_CONTROL_TYPES = ", ".join(f"'{c}'" for c in CONTROL_TYPES)
_STRUCTURE = ", ".join(f"'{kind}' ({text})" for kind, text in structure_texts("api").items())
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("prompt", "text", "What to draw (text, at most 2,000 characters; may be empty).", default=""),
    Parameter(
        "reference",
        "images",
        "Reference images whose look carries over: a list of {'image': file}; several are combined.",
        default=(),
    ),
    Parameter(
        "strength",
        "number",
        "How much of the reference carries over: 0 = text only; around 0.5 keeps colour and texture.",
        role="single",
        default=lambda p: p.strength.default,
    ),
    Parameter(
        "variant", "text", "Which adapter of this mode to use (see the tab's choices).", default=lambda p: p.variant
    ),
    Parameter(
        "face_reference",
        "images",
        "Anime tab: face close-ups for the Plus-Face adapter (a list of {'image': file}).",
        modes=("anime",),
        default=(),
    ),
    Parameter(
        "structure",
        "number",
        "Face tab, FaceID Plus v2: how much of the face's shape carries over (s_scale).",
        modes=("face",),
        default=lambda p: p.structure.default if p.structure is not None else None,
    ),
    Parameter(
        "layout",
        "true or false",
        "Style tab: also drive the layout layers (true/false).",
        modes=("style",),
        default=False,
    ),
    Parameter(
        "base",
        "text",
        "Anime tab: the base model for this request, 'default' or 'anime'.",
        modes=("anime",),
        default="default",
    ),
    Parameter("region", "text", f"Where the image prompt acts: {_REGIONS}.", default="whole"),
    Parameter(
        "extra_mode",
        "text",
        f"Shorthand for one added image prompt (the first of `slots`): {_EXTRA} (its adapter is that tab's "
        "default). Use either extra_* or slots.",
        default="none",
    ),
    Parameter(
        "extra_reference",
        "images",
        "The extra image prompt's references (a list of {'image': file}).",
        default=(),
    ),
    Parameter(
        "extra_strength",
        "number",
        "The extra image prompt's strength (in a comparison: when no extra_strengths).",
        default=lambda p: preset_for("general", p.family).strength.default,
    ),
    Parameter("extra_region", "text", f"Where the extra image prompt acts: {_REGIONS}.", default="whole"),
    Parameter("extra_variant", "text", "The extra image prompt's adapter (empty: its tab's default).", default=""),
    Parameter(
        "extra_start_at", "number", "Share of the steps before the extra image prompt starts acting.", default=0.0
    ),
    Parameter(
        "extra_stop_at", "number", "Share of the steps after which the extra image prompt stops acting.", default=1.0
    ),
    Parameter(
        "negative_reference",
        "images",
        "Images whose look should NOT carry over: they replace the image prompt's unconditional embedding.",
        default=(),
    ),
    Parameter(
        "speed",
        "text",
        "'quality' (the preset's steps and guidance) or 'fast' (a few-step LoRA with its own steps and sampler).",
        default="quality",
    ),
    Parameter("negative_prompt", "text", "What to avoid (text).", default=lambda p: p.negative_prompt),
    Parameter("seed", "integer", "Random seed; -1 picks one (the seed used is returned).", default=-1),
    Parameter("steps", "integer", "Denoising steps.", default=lambda p: p.steps.default),
    Parameter("guidance", "number", "Classifier-free guidance scale.", default=lambda p: p.guidance.default),
    Parameter(
        "width",
        "integer",
        "Image width in pixels (a multiple of 8; width x height within the model's budget).",
        default=lambda p: p.width.default,
    ),
    Parameter("height", "integer", "Image height in pixels.", default=lambda p: p.height.default),
    Parameter(
        "start_at",
        "number",
        "Share of the steps before the image prompt starts acting (0 = from the start).",
        default=0.0,
    ),
    Parameter(
        "stop_at",
        "number",
        "Share of the steps after which the image prompt stops acting (1 = all).",
        default=lambda p: p.stop_at.default,
    ),
    Parameter(
        "crop",
        "text",
        "How a non-square reference becomes square: 'center', 'pad' or 'squash'.",
        default=lambda p: p.crop,
    ),
    Parameter(
        "strengths",
        "numbers",
        "Comparison: strengths to render with the same seed, comma-separated (e.g. '0, 0.5, 1').",
        role="compare",
        default=lambda p: p.compare,
    ),
    Parameter(
        "image", "images", "Scoring: the image to score (a file; made here or elsewhere).", role="score", max_files=1
    ),
    Parameter(
        "extra_strengths",
        "numbers",
        "Comparison: strengths of the first added image prompt (extra_* or slots[0]); with both lists the result is "
        "a grid of every pair (rows = strengths, columns = extra_strengths).",
        role="compare",
        default=(),
    ),
    Parameter(
        "slots",
        "slots",
        f"Up to {MAX_SLOTS} more image prompts after the tab's own, as a JSON list of objects: 'mode' ({_SLOT_MODES}), "
        "'strength', and optionally 'variant', 'region', 'start_at', 'stop_at', 'crop' and 'images' (how many of "
        f"slot_images it takes, default 1). Structure: {_STRUCTURE}. Use either slots or extra_*.",
        default=(),
    ),
    Parameter(
        "slot_images",
        "images",
        "The slots' images, in slot order (a list of {'image': file}).",
        max_files=MAX_SLOTS * MAX_IMAGES_PER_INPUT,
        default=(),
    ),
)
SCORE_PARAMETERS = ("image", "prompt", "reference", "extra_mode", "extra_reference")  # `<mode>_score`
BY_NAME = {p.name: p for p in PARAMETERS}
SETTINGS_TYPES: dict[str, str] = {p.name: p.kind for p in PARAMETERS if p.setting}
SETTINGS_FILE_INPUT = "path"  # `load_settings`: one PNG or settings file


def defaults(preset: ModePreset) -> dict[str, Any]:
    """Every parameter's default for `preset`'s tab: what a missing or None value means."""
    return {p.name: p.default_for(preset) for p in PARAMETERS}


# The keys of one slot (an added image prompt): one row per key, its default read from that kind's preset.
# Adding a key to an image prompt is a row here plus its use where `pipelines/codec.py` builds the slot.
SLOT_KEYS: tuple[Parameter, ...] = (
    Parameter("mode", "text", f"The kind of image prompt: {_SLOT_MODES}."),
    Parameter("strength", "number", "Its strength (0 = no effect).", default=lambda p: p.strength.default),
    Parameter("variant", "text", "Its adapter (default: that kind's preset adapter).", default=lambda p: p.variant),
    Parameter("region", "text", f"Where it acts: {_REGIONS}.", default="whole"),
    Parameter("start_at", "number", "Share of the steps before it starts acting.", default=0.0),
    Parameter("stop_at", "number", "Share of the steps after which it stops.", default=lambda p: p.stop_at.default),
    Parameter("crop", "text", "How its non-square images become square.", default=lambda p: p.crop),
    Parameter("images", "integer", "How many of slot_images it takes, in order.", default=1),
    Parameter("control_type", "text", f"A 'control' slot's map: {_CONTROL_TYPES}.", default=None),
)
SLOT_KEY_NAMES = tuple(k.name for k in SLOT_KEYS)


# The page's own file inputs (not API keywords): each "Add an image prompt" group's gallery.
PAGE_FILE_INPUTS = {f"slot{i}_images": MAX_IMAGES_PER_INPUT for i in range(1, MAX_SLOTS + 1)}


def file_limit(name: str) -> int:
    """How many files the input `name` may carry (0: not a file input)."""
    if name == SETTINGS_FILE_INPUT:
        return 1
    if name in PAGE_FILE_INPUTS:
        return PAGE_FILE_INPUTS[name]
    parameter = BY_NAME.get(name)
    return parameter.max_files if parameter is not None and parameter.kind == "images" else 0


def parameters_for(mode: str, role: str) -> list[str]:
    """The parameter names of `mode`'s endpoint for `role` ("single", "compare" or "score"), in API order."""
    if role == "score":
        return [n for n in SCORE_PARAMETERS if mode in BY_NAME[n].modes]
    return [p.name for p in PARAMETERS if mode in p.modes and p.role in ("both", role)]


def max_files(names: list[str] | tuple[str, ...]) -> int:
    """How many files an endpoint with these parameters may receive in one request."""
    return sum(file_limit(n) for n in names)


# The most files any endpoint may receive in one request: derived from the inputs, never sized by hand.
MAX_FILES_PER_REQUEST = max(max_files(parameters_for(mode, role)) for mode in MODES for role in ROLES)
