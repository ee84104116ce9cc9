"""A generation request is a value: built and validated in one place, then passed down unchanged."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InvalidRequestError, shown
from .images import ReferenceImage, load_reference
from .presets import CROP_MODES, MAX_COMPARE, ModePreset

MAX_SEED = 2**32 - 1  # seeds are shown and typed by people; 32 bits is what every UI in this field uses
MAX_REFERENCES = 8
MAX_PROMPT_CHARS = 2000  # checked before tokenising; the text encoders read about 75 tokens (300-odd characters)
SIZE_MULTIPLE = 8  # the VAE downsamples by 8


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides one image; `seed` is always concrete (randomisation happens before)."""

    mode: str
    prompt: str  # as the person wrote it
    negative_prompt: str
    references: tuple[ReferenceImage, ...]
    strength: float
    variant: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    stop_at: float = 1.0  # the image prompt acts during the first stop_at of the steps
    crop: str = "center"  # how non-square references become square for the image encoder
    layout: bool = False  # style mode: also drive the layout layers
    structure: float | None = None  # FaceID Plus: weight of the face structure (s_scale)
    block_map: dict | None = None  # InstantStyle layer map in effect (None: every layer)
    prompt_template: str = "{prompt}"  # the mode's template around the prompt
    face_references: tuple[ReferenceImage, ...] = ()  # close-ups for a Plus-Face component
    base: str = "default"  # which base pipeline of the family draws it: "default" or a key of its alt_bases

    @property
    def full_prompt(self) -> str:
        """The prompt the text encoder gets: the person's prompt inside the mode's template."""
        return self.prompt_template.replace("{prompt}", self.prompt).strip(" ,")

    def describe(self) -> dict[str, Any]:
        """The JSON-able settings (shared by PNG metadata, presets and the API)."""
        return {
            "mode": self.mode,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "strength": self.strength,
            "variant": self.variant,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "stop_at": self.stop_at,
            "crop": self.crop,
            "layout": self.layout,
            "structure": self.structure,
            "block_map": self.block_map,
            "prompt_template": self.prompt_template,
            "references_sha256": [r.sha256 for r in self.references],
            "face_references_sha256": [r.sha256 for r in self.face_references],
            "base": self.base,
        }


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise InvalidRequestError(name, f"{name} must be a number, got {shown(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidRequestError(name, f"{name} must be a number, got {shown(value)}") from e
    if not math.isfinite(number):
        raise InvalidRequestError(name, f"{name} must be a finite number, got {shown(value)}")
    return number


def _integer(name: str, value: Any) -> int:
    number = _number(name, value)
    if number != int(number):
        raise InvalidRequestError(name, f"{name} must be a whole number, got {shown(value)}")
    return int(number)


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(name, f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(
            name, f"The {name.replace('_', ' ')} is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,}."
        )
    # Control characters (other than newlines and tabs) carry no meaning for a text encoder.
    return "".join(ch for ch in value if ch in "\n\t" or ch.isprintable()).strip()


def build_request(
    preset: ModePreset,
    *,
    prompt: Any,
    negative_prompt: Any = None,
    references: Sequence[str | Path | bytes | Image.Image | ReferenceImage] = (),
    strength: Any = None,
    variant: Any = None,
    seed: Any = 0,
    steps: Any = None,
    guidance: Any = None,
    width: Any = None,
    height: Any = None,
    stop_at: Any = None,
    crop: Any = None,
    layout: Any = False,
    structure: Any = None,
    face_references: Sequence[str | Path | bytes | Image.Image | ReferenceImage] = (),
    base: Any = None,
) -> GenerationRequest:
    """Validate raw values (from the UI, the API or a script) against `preset`; None means the preset default."""

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    if variant is None:
        variant = preset.variant
    if variant not in preset.variants:
        raise InvalidRequestError("variant", f"variant {shown(variant)} is not one of {list(preset.variants)}")
    base = pick(base, "default")
    if base not in preset.bases:
        raise InvalidRequestError("base", f"base {shown(base)} is not one of {list(preset.bases)}")
    refs = _load_all(references, "reference")
    faces = _load_all(face_references, "face close-up")
    seed_value = _integer("seed", seed)
    if not 0 <= seed_value <= MAX_SEED:
        raise InvalidRequestError("seed", f"seed = {seed_value} is outside [0, {MAX_SEED}]")

    def size(name: str, value: Any, bounds: Any) -> int:
        # Snap down to a multiple of 8 (what the VAE needs), then check the preset's bounds.
        snapped = _integer(name, pick(value, bounds.default)) // SIZE_MULTIPLE * SIZE_MULTIPLE
        return int(bounds.check(snapped, name))

    crop = pick(crop, preset.crop)
    if crop not in CROP_MODES:
        raise InvalidRequestError("crop", f"crop {shown(crop)} is not one of {list(CROP_MODES)}")
    if not isinstance(layout, bool):
        raise InvalidRequestError("layout", f"layout must be true or false, got {shown(layout)}")
    block_map = None
    if preset.block_maps is not None:
        block_map = _merge_block_maps(preset.block_maps["style"], preset.block_maps.get("layout") if layout else None)
    structure_value = None
    if preset.structure is not None:
        structure_value = preset.structure.check(
            _number("structure", pick(structure, preset.structure.default)), "structure"
        )
    width_px, height_px = size("width", width, preset.width), size("height", height, preset.height)
    cap = preset.max_pixels
    if width_px * height_px > cap:
        raise InvalidRequestError(
            "width", f"{width_px}x{height_px} is {width_px * height_px:,} pixels; at most {cap:,} for this model"
        )
    return GenerationRequest(
        mode=preset.mode,
        prompt=_text("prompt", prompt),
        negative_prompt=_text("negative_prompt", pick(negative_prompt, preset.negative_prompt)),
        references=refs,
        strength=preset.strength.check(_number("strength", pick(strength, preset.strength.default)), "strength"),
        variant=variant,
        seed=seed_value,
        steps=int(preset.steps.check(_integer("steps", pick(steps, preset.steps.default)), "steps")),
        guidance=preset.guidance.check(_number("guidance", pick(guidance, preset.guidance.default)), "guidance"),
        width=width_px,
        height=height_px,
        stop_at=preset.stop_at.check(_number("stop_at", pick(stop_at, preset.stop_at.default)), "stop_at"),
        crop=crop,
        layout=layout and block_map is not None,
        structure=structure_value,
        block_map=block_map,
        prompt_template=preset.prompt_template,
        face_references=faces,
        base=base,
    )


def _load_all(sources: Sequence[Any], label: str) -> tuple[ReferenceImage, ...]:
    if len(sources) > MAX_REFERENCES:
        raise InvalidRequestError("reference", f"at most {MAX_REFERENCES} images per input, got {len(sources)}")
    return tuple(
        s if isinstance(s, ReferenceImage) else load_reference(s, index=i, label=label)
        for i, s in enumerate(sources, 1)
    )


def _merge_block_maps(style: dict, layout: dict | None) -> dict:
    """The style map, plus the layout map's blocks when layout is on."""
    merged = {part: dict(blocks) if isinstance(blocks, dict) else blocks for part, blocks in style.items()}
    for part, blocks in (layout or {}).items():
        if isinstance(blocks, dict) and isinstance(merged.get(part), dict):
            merged[part] = {**merged[part], **blocks}
        else:
            merged[part] = blocks
    return merged


def parse_strengths(value: Any, preset: ModePreset) -> tuple[float, ...]:
    """Strengths for a comparison: a list of numbers or a comma-separated string, each inside the preset range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return preset.compare
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace(";", ",").split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidRequestError("strengths", f"strengths must be a list or comma-separated text, got {shown(value)}")
    if not 1 <= len(items) <= MAX_COMPARE:
        raise InvalidRequestError("strengths", f"give 1 to {MAX_COMPARE} strengths, got {len(items)}")
    out = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        out.append(preset.strength.check(_number("strengths", text), "strength"))
    return tuple(out)
