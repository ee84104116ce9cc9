"""Every parameter of a request, named once.

This table drives the request (`build_request` takes exactly these keywords), the settings schema (files and PNG
metadata), the UI (one control per parameter a tab offers) and the API (each endpoint's signature, in this order,
and the description of each argument). A new parameter is added here and nowhere else names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .presets import EXTRA_MODES, MODES, REGIONS

# JSON types of settings values: "number" is an integer or a decimal, "integer" a whole number; neither may be
# true/false. "images" are files (not settings: their SHA-256 is recorded instead); "numbers" a list of numbers.
KINDS = ("text", "number", "integer", "true or false", "images", "numbers")
MAX_IMAGES_PER_INPUT = 8  # images one "images" parameter may carry (references, face close-ups, ...)
ROLES = ("single", "compare", "score")


@dataclass(frozen=True)
class Parameter:
    """One keyword of the API, one control of a tab, one key of a settings file."""

    name: str
    kind: str
    doc: str  # what the API page and MCP tool description say of it
    modes: tuple[str, ...] = MODES  # the tabs that offer it
    role: str = "both"  # "single": one image only; "compare": comparisons only; "both"; "score": scoring only
    max_files: int = MAX_IMAGES_PER_INPUT  # "images" only: how many files it may carry

    @property
    def setting(self) -> bool:
        """Saved in settings files and PNG metadata (images are not; their SHA-256 is)."""
        return self.kind != "images"


_REGIONS = ", ".join(f"'{r}'" for r in REGIONS)
_EXTRA = ", ".join(f"'{m}'" for m in EXTRA_MODES)
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("prompt", "text", "What to draw (text, at most 2,000 characters; may be empty)."),
    Parameter(
        "reference",
        "images",
        "Reference images whose look carries over: a list of {'image': file}; several are combined.",
    ),
    Parameter(
        "strength",
        "number",
        "How much of the reference carries over: 0 = text only; around 0.5 keeps colour and texture.",
        role="single",
    ),
    Parameter("variant", "text", "Which adapter of this mode to use (see the tab's choices)."),
    Parameter(
        "face_reference",
        "images",
        "Anime tab: face close-ups for the Plus-Face adapter (a list of {'image': file}).",
        modes=("anime",),
    ),
    Parameter(
        "structure",
        "number",
        "Face tab, FaceID Plus v2: how much of the face's shape carries over (s_scale).",
        modes=("face",),
    ),
    Parameter("layout", "true or false", "Style tab: also drive the layout layers (true/false).", modes=("style",)),
    Parameter("base", "text", "Anime tab: the base model for this request, 'default' or 'anime'.", modes=("anime",)),
    Parameter("region", "text", f"Where the image prompt acts: {_REGIONS}."),
    Parameter(
        "extra_mode",
        "text",
        f"Combine with one more image prompt of another kind: {_EXTRA} (its adapter is that tab's default).",
    ),
    Parameter("extra_reference", "images", "The extra image prompt's references (a list of {'image': file})."),
    Parameter(
        "extra_strength", "number", "The extra image prompt's strength (in a comparison: when no extra_strengths)."
    ),
    Parameter("extra_region", "text", f"Where the extra image prompt acts: {_REGIONS}."),
    Parameter("extra_variant", "text", "The extra image prompt's adapter (empty: its tab's default)."),
    Parameter("extra_start_at", "number", "Share of the steps before the extra image prompt starts acting."),
    Parameter("extra_stop_at", "number", "Share of the steps after which the extra image prompt stops acting."),
    Parameter(
        "negative_reference",
        "images",
        "Images whose look should NOT carry over: they replace the image prompt's unconditional embedding.",
    ),
    Parameter(
        "speed",
        "text",
        "'quality' (the preset's steps and guidance) or 'fast' (a few-step LoRA with its own steps and sampler).",
    ),
    Parameter("negative_prompt", "text", "What to avoid (text)."),
    Parameter("seed", "integer", "Random seed; -1 picks one (the seed used is returned)."),
    Parameter("steps", "integer", "Denoising steps."),
    Parameter("guidance", "number", "Classifier-free guidance scale."),
    Parameter("width", "integer", "Image width in pixels (a multiple of 8; width x height within the model's budget)."),
    Parameter("height", "integer", "Image height in pixels."),
    Parameter("start_at", "number", "Share of the steps before the image prompt starts acting (0 = from the start)."),
    Parameter("stop_at", "number", "Share of the steps after which the image prompt stops acting (1 = all)."),
    Parameter("crop", "text", "How a non-square reference becomes square: 'center', 'pad' or 'squash'."),
    Parameter(
        "strengths",
        "numbers",
        "Comparison: strengths to render with the same seed, comma-separated (e.g. '0, 0.5, 1').",
        role="compare",
    ),
    Parameter(
        "image", "images", "Scoring: the image to score (a file; made here or elsewhere).", role="score", max_files=1
    ),
    Parameter(
        "extra_strengths",
        "numbers",
        "Comparison: strengths of the extra image prompt; with both lists the result is a grid of every pair "
        "(rows = strengths, columns = extra_strengths).",
        role="compare",
    ),
)
SCORE_PARAMETERS = ("image", "prompt", "reference", "extra_mode", "extra_reference")  # `<mode>_score`
BY_NAME = {p.name: p for p in PARAMETERS}
SETTINGS_TYPES: dict[str, str] = {p.name: p.kind for p in PARAMETERS if p.setting}
SETTINGS_FILE_INPUT = "path"  # `load_settings`: one PNG or settings file


def file_limit(name: str) -> int:
    """How many files the input `name` may carry (0: not a file input)."""
    if name == SETTINGS_FILE_INPUT:
        return 1
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
