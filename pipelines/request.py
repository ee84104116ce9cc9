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
from .presets import (
    CROP_MODES,
    EXTRA_MODES,
    MAX_COMPARE,
    MAX_GRID_CELLS,
    REGIONS,
    SPEEDS,
    ModePreset,
    preset_for,
)

MAX_SEED = 2**32 - 1  # seeds are shown and typed by people; 32 bits is what every UI in this field uses
MAX_REFERENCES = 8
MAX_PROMPT_CHARS = 2000  # checked before tokenising; the text encoders read about 75 tokens (300-odd characters)
SIZE_MULTIPLE = 8  # the VAE downsamples by 8
ImageSource = str | Path | bytes | Image.Image | ReferenceImage


@dataclass(frozen=True)
class ImagePrompt:
    """One image prompt of a request: its adapter, references, strength, steps window and region."""

    mode: str  # the kind: "general", "face", "anime" or "style" (the adapter variant is that mode's)
    variant: str
    references: tuple[ReferenceImage, ...]
    strength: float
    start_at: float = 0.0  # it acts on the steps i with start_at <= i / steps < stop_at
    stop_at: float = 1.0
    region: str = "whole"  # where it acts: the whole image or one half
    crop: str = "center"
    block_map: dict | None = None  # InstantStyle layer map (None: every layer)
    layout: bool = False
    structure: float | None = None  # FaceID Plus: weight of the face structure (s_scale)
    face_references: tuple[ReferenceImage, ...] = ()  # close-ups for a Plus-Face component
    negative_references: tuple[ReferenceImage, ...] = ()  # replace the unconditional image embedding

    @property
    def groups(self) -> list[tuple[ReferenceImage, ...]]:
        """The images each component of the variant sees: the references, then (Plus-Face) the face close-ups."""
        return [self.references, self.face_references]

    def describe(self, adapter: str | None = None) -> dict[str, Any]:
        """This prompt in PNG metadata: what it was, where and when it acted, and which images fed it."""
        out = {
            "mode": self.mode,
            "adapter": adapter,
            "variant": self.variant,
            "strength": self.strength,
            "start_at": self.start_at,
            "stop_at": self.stop_at,
            "region": self.region,
            "crop": self.crop,
            "references_sha256": [r.sha256 for r in self.references],
        }
        if self.face_references:
            out["face_references_sha256"] = [r.sha256 for r in self.face_references]
        if self.negative_references:
            out["negative_references_sha256"] = [r.sha256 for r in self.negative_references]
        if self.block_map is not None:
            out["layout"] = self.layout
        if self.structure is not None:
            out["structure"] = self.structure
        return out


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides one image (or one comparison); `seed` is always concrete."""

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
    stop_at: float = 1.0  # the image prompt acts until this share of the steps
    crop: str = "center"  # how non-square references become square for the image encoder
    layout: bool = False  # style mode: also drive the layout layers
    structure: float | None = None  # FaceID Plus: weight of the face structure (s_scale)
    block_map: dict | None = None  # InstantStyle layer map in effect (None: every layer)
    prompt_template: str = "{prompt}"  # the mode's template around the prompt
    face_references: tuple[ReferenceImage, ...] = ()  # close-ups for a Plus-Face component
    base: str = "default"  # which base pipeline of the family draws it: "default" or a key of its alt_bases
    start_at: float = 0.0  # the image prompt acts from this share of the steps
    region: str = "whole"
    negative_references: tuple[ReferenceImage, ...] = ()
    extra: ImagePrompt | None = None  # one more image prompt of another kind ("Combine with...")
    strengths: tuple[float, ...] = ()  # a comparison's strengths (parsed once; empty for one image)
    extra_strengths: tuple[float, ...] = ()  # a 2-D comparison's second axis: the extra prompt's strengths
    speed: str = "quality"  # "fast": the family's few-step LoRA, its steps, guidance and scheduler

    @property
    def full_prompt(self) -> str:
        """The prompt the text encoder gets: the person's prompt inside the mode's template."""
        return self.prompt_template.replace("{prompt}", self.prompt).strip(" ,")

    @property
    def primary(self) -> ImagePrompt:
        """The tab's own image prompt."""
        return ImagePrompt(
            mode=self.mode, variant=self.variant, references=self.references, strength=self.strength,
            start_at=self.start_at, stop_at=self.stop_at, region=self.region, crop=self.crop,
            block_map=self.block_map, layout=self.layout, structure=self.structure,
            face_references=self.face_references, negative_references=self.negative_references,
        )  # fmt: skip

    @property
    def image_prompts(self) -> tuple[ImagePrompt, ...]:
        """Every image prompt the request declares: the tab's own, then the extra one."""
        return (self.primary,) if self.extra is None else (self.primary, self.extra)

    def describe(self) -> dict[str, Any]:
        """The JSON-able settings (shared by PNG metadata, settings files and the API)."""
        extra = self.extra
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
            "start_at": self.start_at,
            "stop_at": self.stop_at,
            "crop": self.crop,
            "layout": self.layout,
            "structure": self.structure,
            "block_map": self.block_map,
            "prompt_template": self.prompt_template,
            "region": self.region,
            "references_sha256": [r.sha256 for r in self.references],
            "face_references_sha256": [r.sha256 for r in self.face_references],
            "negative_references_sha256": [r.sha256 for r in self.negative_references],
            "base": self.base,
            "extra_mode": extra.mode if extra else "none",
            "extra_variant": extra.variant if extra else None,
            "extra_strength": extra.strength if extra else None,
            "extra_region": extra.region if extra else "whole",
            "extra_start_at": extra.start_at if extra else None,
            "extra_stop_at": extra.stop_at if extra else None,
            "extra_references_sha256": [r.sha256 for r in extra.references] if extra else [],
            "strengths": list(self.strengths) or None,
            "extra_strengths": list(self.extra_strengths) or None,
            "speed": self.speed,
        }

    @property
    def cells(self) -> list[tuple[float, ...]]:
        """A comparison's cells, each one strength per image prompt: rows = strengths, columns = extra_strengths."""
        strengths = self.strengths or (self.strength,)
        if self.extra is None:
            return [(s,) for s in strengths]
        columns = self.extra_strengths or (self.extra.strength,)
        return [(s, e) for s in strengths for e in columns]


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
    reference: Sequence[ImageSource] | None = None,
    strength: Any = None,
    variant: Any = None,
    seed: Any = 0,
    steps: Any = None,
    guidance: Any = None,
    width: Any = None,
    height: Any = None,
    start_at: Any = None,
    stop_at: Any = None,
    crop: Any = None,
    layout: Any = False,
    structure: Any = None,
    face_reference: Sequence[ImageSource] | None = None,
    base: Any = None,
    region: Any = None,
    negative_reference: Sequence[ImageSource] | None = None,
    extra_mode: Any = None,
    extra_reference: Sequence[ImageSource] | None = None,
    extra_strength: Any = None,
    extra_region: Any = None,
    extra_variant: Any = None,
    extra_start_at: Any = None,
    extra_stop_at: Any = None,
    strengths: Any = None,
    extra_strengths: Any = None,
    speed: Any = None,
    references: Sequence[ImageSource] = (),
    face_references: Sequence[ImageSource] = (),
) -> GenerationRequest:
    """Validate raw values (from the UI, the API or a script) against `preset`; None means the preset default.

    The keywords are the parameters of `pipelines.parameters` (`references` / `face_references` are the older
    spellings of `reference` / `face_reference`). `strengths` (and `extra_strengths`) make it a comparison.
    """

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    if variant is None:
        variant = preset.variant
    if variant not in preset.variants:
        raise InvalidRequestError("variant", f"variant {shown(variant)} is not one of {list(preset.variants)}")
    base = pick(base, "default")
    if base not in preset.bases:
        raise InvalidRequestError("base", f"base {shown(base)} is not one of {list(preset.bases)}")
    refs = _load_all(reference if reference is not None else references, "reference")
    faces = _load_all(face_reference if face_reference is not None else face_references, "face close-up")
    negatives = _load_all(negative_reference or (), "negative image")
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
    block_map = _block_map(preset, layout)
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
    start, stop = _window(preset, start_at, stop_at, "start_at", "stop_at")
    extra = _extra_prompt(
        preset, extra_mode, extra_reference, extra_strength, extra_region, extra_variant, extra_start_at,
        extra_stop_at,
    )  # fmt: skip
    sweep = parse_strengths(strengths, preset) if strengths is not None else ()
    extra_sweep: tuple[float, ...] = ()
    if extra_strengths is not None and not (isinstance(extra_strengths, str) and not extra_strengths.strip()):
        if extra is None:
            raise InvalidRequestError(
                "extra_strengths", "extra_strengths sweeps the extra image prompt: choose an extra_mode first."
            )
        extra_sweep = parse_strengths(extra_strengths, preset_for(extra.mode, preset.family), "extra_strengths")
    cells = max(len(sweep), 1) * max(len(extra_sweep), 1)
    if cells > MAX_GRID_CELLS:
        raise InvalidRequestError(
            "strengths", f"{len(sweep)} x {len(extra_sweep)} = {cells} cells; at most {MAX_GRID_CELLS} in one grid"
        )
    strength_value = preset.strength.check(_number("strength", pick(strength, preset.strength.default)), "strength")
    speed = pick(speed, "quality")
    if speed not in SPEEDS:
        raise InvalidRequestError("speed", f"speed {shown(speed)} is not one of {list(SPEEDS)}")
    if speed == "fast":  # the few-step LoRA's own sampling replaces the sliders' (which are not read)
        if preset.fast is None:
            raise InvalidRequestError("speed", f"model family {preset.family!r} has no fast mode")
        steps_value, guidance_value = preset.fast.steps, preset.fast.guidance
    else:
        steps_value = int(preset.steps.check(_integer("steps", pick(steps, preset.steps.default)), "steps"))
        guidance_value = preset.guidance.check(_number("guidance", pick(guidance, preset.guidance.default)), "guidance")
    return GenerationRequest(
        mode=preset.mode,
        prompt=_text("prompt", prompt),
        negative_prompt=_text("negative_prompt", pick(negative_prompt, preset.negative_prompt)),
        references=refs,
        strength=sweep[0] if sweep else strength_value,
        variant=variant,
        seed=seed_value,
        steps=steps_value,
        guidance=guidance_value,
        width=width_px,
        height=height_px,
        stop_at=stop,
        crop=crop,
        layout=layout and block_map is not None,
        structure=structure_value,
        block_map=block_map,
        prompt_template=preset.prompt_template,
        face_references=faces,
        base=base,
        start_at=start,
        region=_region("region", region),
        negative_references=negatives,
        extra=extra,
        strengths=sweep,
        extra_strengths=extra_sweep,
        speed=speed,
    )


def _block_map(preset: ModePreset, layout: bool) -> dict | None:
    if preset.block_maps is None:
        return None
    return _merge_block_maps(preset.block_maps["style"], preset.block_maps.get("layout") if layout else None)


def _region(name: str, value: Any) -> str:
    value = "whole" if value is None else value
    if value not in REGIONS:
        raise InvalidRequestError(name, f"{name} {shown(value)} is not one of {list(REGIONS)}")
    return value


def _window(preset: ModePreset, start_at: Any, stop_at: Any, start_name: str, stop_name: str) -> tuple[float, float]:
    """(start_at, stop_at) checked: inside [0, 1] and start before stop (else no step would use the prompt)."""
    stop = preset.stop_at.check(_number(stop_name, preset.stop_at.default if stop_at is None else stop_at), stop_name)
    start = _number(start_name, 0.0 if start_at is None else start_at)
    if not 0.0 <= start <= 1.0:
        raise InvalidRequestError(start_name, f"{start_name} = {start} is outside [0.0, 1.0]")
    if start >= stop:
        raise InvalidRequestError(
            start_name,
            f"{start_name} ({start:g}) must be below {stop_name} ({stop:g}): the image prompt would act on no step.",
        )
    return start, stop


def _extra_prompt(
    preset: ModePreset,
    mode: Any,
    references: Sequence[ImageSource] | None,
    strength: Any,
    region: Any,
    variant: Any,
    start_at: Any,
    stop_at: Any,
) -> ImagePrompt | None:
    """The "Combine with..." image prompt, with its own kind's preset (adapter, strength range, crop)."""
    mode = "none" if mode in (None, "") else mode
    if mode not in EXTRA_MODES:
        raise InvalidRequestError("extra_mode", f"extra_mode {shown(mode)} is not one of {list(EXTRA_MODES)}")
    if mode == "none":
        return None
    own = preset_for(mode, preset.family)
    variant = own.variant if variant in (None, "") else variant
    if variant not in own.variants:
        raise InvalidRequestError(
            "extra_variant", f"extra_variant {shown(variant)} is not one of {list(own.variants)} ({mode})"
        )
    value = own.strength.check(
        _number("extra_strength", own.strength.default if strength is None else strength), "extra_strength"
    )
    start, stop = _window(own, start_at, stop_at, "extra_start_at", "extra_stop_at")
    return ImagePrompt(
        mode=mode, variant=variant, references=_load_all(references or (), "extra reference"), strength=value,
        start_at=start, stop_at=stop, region=_region("extra_region", region), crop=own.crop,
        block_map=_block_map(own, False), structure=own.structure.default if own.structure else None,
    )  # fmt: skip


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


def parse_strengths(value: Any, preset: ModePreset, name: str = "strengths") -> tuple[float, ...]:
    """Strengths for a comparison: a list of numbers or a comma-separated string, each inside the preset range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return preset.compare
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace(";", ",").split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidRequestError(name, f"{name} must be a list or comma-separated text, got {shown(value)}")
    if not 1 <= len(items) <= MAX_COMPARE:
        raise InvalidRequestError(name, f"give 1 to {MAX_COMPARE} {name}, got {len(items)}")
    out = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        out.append(preset.strength.check(_number(name, text), name.removesuffix("s")))
    return tuple(out)
