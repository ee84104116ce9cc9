"""The one codec between the API's flat keywords and a request value, both ways.

`build_request` decodes the keywords of `pipelines.parameters` (with `slots` / `slot_images`, or the `extra_*`
shorthand for one slot) into a `GenerationRequest`; `describe` encodes a request back into those keywords (plus
the hashes of its images) for PNG metadata, settings files and the API. Defaults come from one place: the
parameter table (`parameters.defaults`), which reads the presets.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InvalidRequestError, shown
from .images import ReferenceImage, load_reference
from .parameters import BY_NAME, MAX_SLOTS, SLOT_KEY_NAMES, SLOT_KEYS, defaults
from .presets import (
    ARCHITECTURES,
    CROP_MODES,
    EXTRA_MODES,
    MAX_COMPARE,
    MAX_GRID_CELLS,
    REGIONS,
    SLOT_MODES,
    SPEEDS,
    STRUCTURE_KINDS,
    ModePreset,
    StructurePreset,
    preset_for,
    slot_kinds,
)
from .request import (
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    MAX_SEED,
    RANDOM_SEED,
    SIZE_MULTIPLE,
    GenerationRequest,
    ImagePrompt,
    Settings,
    Sweep,
)

ImageSource = str | Path | bytes | Image.Image | ReferenceImage
MAX_SLOTS_TEXT = 16_384  # `slots` as JSON text: three slots of every key take well under 2,000 characters
EXTRA_KEYS = {  # the `extra_*` shorthand: its keyword for each key of a slot
    "mode": "extra_mode", "strength": "extra_strength", "variant": "extra_variant", "region": "extra_region",
    "start_at": "extra_start_at", "stop_at": "extra_stop_at", "images": "extra_reference",
}  # fmt: skip


# ------------------------------------------------------------------------------------------- field validators


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise InvalidRequestError(name, f"{name} must be a number, got {shown(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidRequestError(name, f"{name} must be a number, got {shown(value)}") from e
    if not math.isfinite(out):
        raise InvalidRequestError(name, f"{name} must be a finite number, got {shown(value)}")
    return out


def integer(name: str, value: Any) -> int:
    out = number(name, value)
    if out != int(out):
        raise InvalidRequestError(name, f"{name} must be a whole number, got {shown(value)}")
    return int(out)


def text(name: str, value: Any) -> str:
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


def choice(name: str, value: Any, choices: tuple[str, ...] | list[str], field: str | None = None) -> str:
    if value not in choices:
        raise InvalidRequestError(field or name, f"{name} {shown(value)} is not one of {list(choices)}")
    return value


def build_request(preset: ModePreset, **values: Any) -> GenerationRequest:
    """Validate raw values (from the UI, the API or a script) against `preset`; None means the default.

    The keywords are the parameters of `pipelines.parameters` (`references` / `face_references` are the older
    spellings of `reference` / `face_reference`). `strengths` (and `extra_strengths`) make it a comparison.
    """
    for old, new in (("references", "reference"), ("face_references", "face_reference")):
        if old in values:
            legacy = values.pop(old)
            values[new] = legacy if values.get(new) is None else values[new]
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise TypeError(f"build_request() got unexpected keywords {unknown}")
    given = dict(values)
    d = defaults(preset)
    v = {name: d[name] if values.get(name) is None else values[name] for name in d}
    settings = _settings(preset, v)
    primary = _primary(preset, v)
    slots = _slots(preset, v, given)
    sweep = _sweep(preset, given, slots)
    if sweep.strengths:  # a comparison's request holds its first strength
        primary = replace(primary, strength=sweep.strengths[0])
    prompts = _decoded((primary, *slots))  # last: every cheap check above has passed before any image is decoded
    return GenerationRequest(mode=preset.mode, settings=settings, image_prompts=prompts, sweep=sweep,
                             family=preset.family)  # fmt: skip


def _settings(preset: ModePreset, v: dict[str, Any]) -> Settings:
    seed = integer("seed", v["seed"])
    if seed == RANDOM_SEED:  # a fresh random seed; the request (and its metadata) holds the one used
        seed = secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError("seed", f"seed = {seed} is outside [0, {MAX_SEED}]")
    base = choice("base", v["base"], preset.bases)
    width, height = _size("width", v["width"], preset.width), _size("height", v["height"], preset.height)
    if width * height > preset.max_pixels:
        raise InvalidRequestError(
            "width", f"{width}x{height} is {width * height:,} pixels; at most {preset.max_pixels:,} for this model"
        )
    speed = choice("speed", v["speed"], SPEEDS)
    if speed == "fast":  # the few-step LoRA's own sampling replaces the sliders' (which are not read)
        if preset.fast is None:
            raise InvalidRequestError("speed", f"model family {preset.family!r} has no fast mode")
        steps, guidance = preset.fast.steps, preset.fast.guidance
    else:
        steps = int(preset.steps.check(integer("steps", v["steps"]), "steps"))
        guidance = preset.guidance.check(number("guidance", v["guidance"]), "guidance")
    return Settings(
        prompt=text("prompt", v["prompt"]), negative_prompt=text("negative_prompt", v["negative_prompt"]), seed=seed,
        steps=steps, guidance=guidance, width=width, height=height, speed=speed, base=base,
        prompt_template=preset.prompt_template,
    )  # fmt: skip


def _size(name: str, value: Any, bounds: Any) -> int:
    """Snapped down to a multiple of 8 (what the VAE needs), then checked against the preset's bounds."""
    snapped = integer(name, value) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return int(bounds.check(snapped, name))


def _region(preset: ModePreset, value: Any, name: str, field: str | None = None) -> str:
    region = choice(name, value, REGIONS, field=field)
    if region != "whole" and not ARCHITECTURES[preset.pipeline].regions:
        raise InvalidRequestError(
            field or name, f"{name}: regions are not available on {preset.pipeline.upper()} yet; use 'whole'."
        )
    return region


def _primary(preset: ModePreset, v: dict[str, Any]) -> ImagePrompt:
    """The tab's own image prompt."""
    variant = choice("variant", v["variant"], preset.variants)
    crop = choice("crop", v["crop"], CROP_MODES)
    layout = v["layout"]
    if not isinstance(layout, bool):
        raise InvalidRequestError("layout", f"layout must be true or false, got {shown(layout)}")
    block_map = _block_map(preset, layout)
    structure = None
    if preset.structure is not None:
        structure = preset.structure.check(number("structure", v["structure"]), "structure")
    start, stop = _window(preset, v["start_at"], v["stop_at"], "start_at", "stop_at")
    strength = preset.strength.check(number("strength", v["strength"]), "strength")
    return ImagePrompt(
        mode=preset.mode, variant=variant, references=load_all(v["reference"], "reference"), strength=strength,
        start_at=start, stop_at=stop, region=_region(preset, v["region"], "region"), crop=crop, block_map=block_map,
        layout=layout and block_map is not None, structure=structure,
        face_references=load_all(v["face_reference"], "face close-up"),
        negative_references=load_all(v["negative_reference"], "negative image"),
    )  # fmt: skip


def _slots(preset: ModePreset, v: dict[str, Any], given: dict[str, Any]) -> list[ImagePrompt]:
    """The added image prompts: from `slots` and `slot_images`, or the `extra_*` shorthand for one."""
    raw = parse_slots(v["slots"])
    extra_given = v["extra_mode"] not in (None, "", "none") or bool(given.get("extra_reference"))
    if raw and extra_given:
        raise InvalidRequestError(
            "slots", "Give the added image prompts either as slots (with slot_images) or as extra_*, not both."
        )
    if not raw:
        if given.get("slot_images"):
            raise InvalidRequestError("slot_images", "slot_images were given without slots to take them.")
        mode = "none" if v["extra_mode"] in (None, "") else v["extra_mode"]
        choice("extra_mode", mode, EXTRA_MODES)
        if mode == "none":
            return []
        images = list(v["extra_reference"] or ())
        # As given: a key left out (None) takes that kind's own default, as a slot's does.
        shorthand = {key: given.get(name) for key, name in EXTRA_KEYS.items() if key != "images"}
        shorthand["mode"] = mode
        shorthand["variant"] = shorthand["variant"] or None  # "": that kind's preset adapter
        shorthand["images"] = len(images)
        return [_slot(preset, shorthand, images, lambda key: EXTRA_KEYS.get(key, f"extra_{key}"), "extra reference")]
    images = list(v["slot_images"] or ())
    wanted = [_images_count(i, slot) for i, slot in enumerate(raw, 1)]
    if sum(wanted) != len(images):
        raise InvalidRequestError(
            "slot_images",
            f"The slots take {sum(wanted)} images ({' + '.join(map(str, wanted))}), but slot_images holds "
            f"{len(images)}.",
        )
    out, start = [], 0
    for i, (slot, count) in enumerate(zip(raw, wanted, strict=True), 1):
        taken = images[start : start + count]
        start += count
        out.append(_slot(preset, slot, taken, lambda key, i=i: f"slot {i} {key}", f"slot {i} image"))
    return out


def parse_slots(value: Any) -> list[dict[str, Any]]:
    """`slots` as a list of objects (JSON text or a list); shape errors name the slot and the key."""
    if value is None or value == "" or value == ():
        return []
    if isinstance(value, str):
        if len(value) > MAX_SLOTS_TEXT:
            raise InvalidRequestError("slots", f"slots is {len(value):,} characters; at most {MAX_SLOTS_TEXT:,}.")
        try:
            value = json.loads(value)
        except RecursionError:
            raise InvalidRequestError("slots", "slots is nested too deeply: a JSON list of objects.") from None
        except ValueError:
            raise InvalidRequestError("slots", "slots must be a JSON list of objects, e.g. [{\"mode\": \"style\", "
                                      "\"strength\": 0.8}].") from None  # fmt: skip
    if not isinstance(value, (list, tuple)):
        raise InvalidRequestError("slots", f"slots must be a list of objects, got {shown(value)}")
    if len(value) > MAX_SLOTS:
        raise InvalidRequestError("slots", f"At most {MAX_SLOTS} slots (four image prompts in all), got {len(value)}.")
    for i, slot in enumerate(value, 1):
        if not isinstance(slot, dict):
            raise InvalidRequestError("slots", f"slot {i} must be an object with a 'mode', got {shown(slot)}")
        unknown = sorted(set(slot) - set(SLOT_KEY_NAMES))
        if unknown:
            raise InvalidRequestError(
                "slots", f"slot {i}: unknown key {shown(unknown[0])}; a slot takes {', '.join(SLOT_KEY_NAMES)}."
            )
        if "mode" not in slot:
            raise InvalidRequestError("slots", f"slot {i}: 'mode' is missing (one of {list(SLOT_MODES)}).")
    return list(value)


def _images_count(i: int, slot: dict[str, Any]) -> int:
    count = integer(f"slot {i} images", 1 if slot.get("images") is None else slot["images"])
    if not 0 <= count <= MAX_REFERENCES:
        raise InvalidRequestError("slots", f"slot {i} images = {count} is outside [0, {MAX_REFERENCES}]")
    return count


def _slot(preset: ModePreset, raw: dict[str, Any], images: list[Any], name: Any, label: str) -> ImagePrompt:
    """One added image prompt with its own kind's preset (adapter, strength range, crop): `name(key)` is how
    messages call each key ("slot 2 strength", or "extra_strength" for the shorthand)."""
    mode = choice(name("mode"), raw.get("mode"), slot_kinds(preset.family), field="slots")
    own = preset_for(mode, preset.family)
    v = {k.name: k.default_for(own) if raw.get(k.name) is None else raw[k.name] for k in SLOT_KEYS}
    if mode in STRUCTURE_KINDS:
        return _structure_slot(own, v, images, name, label)
    if v["control_type"] is not None:
        raise InvalidRequestError("slots", f"{name('control_type')}: only a 'control' slot takes a control_type.")
    variant = choice(name("variant"), v["variant"], own.variants, field="slots")
    strength = own.strength.check(number(name("strength"), v["strength"]), name("strength"))
    start, stop = _window(own, v["start_at"], v["stop_at"], name("start_at"), name("stop_at"))
    return ImagePrompt(
        mode=mode, variant=variant, references=load_all(images, label), strength=strength, start_at=start,
        stop_at=stop, region=_region(preset, v["region"], name("region"), field="slots"),
        crop=choice(name("crop"), v["crop"], CROP_MODES, field="slots"), block_map=_block_map(own, False),
        structure=own.structure.default if own.structure else None,
    )  # fmt: skip


def _structure_slot(own: StructurePreset, v: dict[str, Any], images: list[Any], name: Any, label: str) -> ImagePrompt:
    """A ControlNet or start-image slot: one image, the whole picture, no adapter."""
    kind = own.mode
    if v["variant"] not in (None, ""):
        raise InvalidRequestError("slots", f"{name('variant')}: a {kind} slot has no adapter; leave 'variant' out.")
    if len(images) > 1:
        raise InvalidRequestError("slots", f"A {kind} slot takes one image, got {len(images)} ({name('images')}).")
    region = choice(name("region"), v["region"], REGIONS, field="slots")
    if region != "whole":
        raise InvalidRequestError("slots", f"{name('region')}: a {kind} slot acts on the whole image, not {region!r}.")
    given = v["control_type"]
    if own.controlnet and own.map_type is None:  # a ready map: the slot says what it shows
        if given in (None, ""):
            raise InvalidRequestError(
                "slots", f"A control slot needs 'control_type': what its map shows, one of {list(own.control_types)}."
            )
        control_type = choice(name("control_type"), given, own.control_types, field="slots")
    else:
        control_type = own.map_type  # made by the app (None: a start image)
        if given not in (None, "", control_type):
            raise InvalidRequestError(
                "slots", f"{name('control_type')}: a {kind} slot's map is made by the app; use a 'control' slot to "
                f"give a {given} map."
            )  # fmt: skip
    strength = own.strength.check(number(name("strength"), v["strength"]), name("strength"))
    start, stop = _window(own, v["start_at"], v["stop_at"], name("start_at"), name("stop_at"))
    if not own.controlnet and start != 0:
        raise InvalidRequestError("slots", f"{name('start_at')}: a start image acts at the start; leave it at 0.")
    return ImagePrompt(
        mode=kind, variant="", references=load_all(images, label), strength=strength, start_at=start, stop_at=stop,
        region="whole", crop=choice(name("crop"), v["crop"], CROP_MODES, field="slots"), control_type=control_type,
    )  # fmt: skip


def _sweep(preset: ModePreset, given: dict[str, Any], slots: list[ImagePrompt]) -> Sweep:
    rows = parse_strengths(given["strengths"], preset) if given.get("strengths") is not None else ()
    columns: tuple[float, ...] = ()
    extra = given.get("extra_strengths")
    if extra is not None and not (isinstance(extra, str) and not extra.strip()) and extra != ():
        if not slots:
            raise InvalidRequestError(
                "extra_strengths", "extra_strengths sweeps the first added image prompt: add one (extra_mode or slots)."
            )
        columns = parse_strengths(extra, preset_for(slots[0].mode, preset.family), "extra_strengths")
    cells = max(len(rows), 1) * max(len(columns), 1)
    if cells > MAX_GRID_CELLS:
        raise InvalidRequestError(
            "strengths", f"{len(rows)} x {len(columns)} = {cells} cells; at most {MAX_GRID_CELLS} in one grid"
        )
    return Sweep(rows, columns)


def _block_map(preset: ModePreset, layout: bool) -> dict | None:
    if preset.block_maps is None:
        return None
    return _merge_block_maps(preset.block_maps["style"], preset.block_maps.get("layout") if layout else None)


def _window(preset: ModePreset, start_at: Any, stop_at: Any, start_name: str, stop_name: str) -> tuple[float, float]:
    """(start_at, stop_at) checked: inside [0, 1] and start before stop (else no step would use the prompt)."""
    stop = preset.stop_at.check(number(stop_name, stop_at), stop_name)
    start = number(start_name, start_at)
    if not 0.0 <= start <= 1.0:
        raise InvalidRequestError(start_name, f"{start_name} = {start} is outside [0.0, 1.0]")
    if start >= stop:
        raise InvalidRequestError(
            start_name,
            f"{start_name} ({start:g}) must be below {stop_name} ({stop:g}): the image prompt would act on no step.",
        )
    return start, stop


@dataclass(frozen=True)
class _Undecoded:
    """An image source counted and labelled, decoded only once the whole request has been checked (`_decoded`)."""

    source: Any
    index: int
    label: str


def load_all(sources: Sequence[Any] | None, label: str) -> tuple[Any, ...]:
    """An input's images, counted now and decoded by `_decoded` after every other value is checked."""
    sources = list(sources or ())
    if len(sources) > MAX_REFERENCES:
        raise InvalidRequestError("reference", f"at most {MAX_REFERENCES} images per input, got {len(sources)}")
    return tuple(s if isinstance(s, ReferenceImage) else _Undecoded(s, i, label) for i, s in enumerate(sources, 1))


def _decoded(prompts: tuple[ImagePrompt, ...]) -> tuple[ImagePrompt, ...]:
    """The image prompts with every image decoded (bounded, pipelines/images.py), in the order they were given."""

    def decode(images: tuple[Any, ...]) -> tuple[ReferenceImage, ...]:
        return tuple(
            load_reference(i.source, index=i.index, label=i.label) if isinstance(i, _Undecoded) else i for i in images
        )

    return tuple(
        replace(p, references=decode(p.references), face_references=decode(p.face_references),
                negative_references=decode(p.negative_references))
        for p in prompts
    )  # fmt: skip


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
        items: list[Any] = [x for x in value.replace(";", ",").split(",") if x.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidRequestError(name, f"{name} must be a list or comma-separated text, got {shown(value)}")
    if not 1 <= len(items) <= MAX_COMPARE:
        raise InvalidRequestError(name, f"give 1 to {MAX_COMPARE} {name}, got {len(items)}")
    out = []
    for item in items:
        value_ = item.strip() if isinstance(item, str) else item
        out.append(preset.strength.check(number(name, value_), name.removesuffix("s")))
    return tuple(out)


# -------------------------------------------------------------------------------------------------- encoding


def describe_slot(prompt: ImagePrompt) -> dict[str, Any]:
    """One added image prompt as `slots` takes it (its images by count; their hashes go beside)."""
    out = {
        "mode": prompt.mode, "strength": prompt.strength, "variant": prompt.variant, "region": prompt.region,
        "start_at": prompt.start_at, "stop_at": prompt.stop_at, "crop": prompt.crop, "images": len(prompt.references),
    }  # fmt: skip
    if prompt.control_type is not None:
        out["control_type"] = prompt.control_type
    return out


def describe(request: GenerationRequest) -> dict[str, Any]:
    """The request as the API's keywords (and its images' hashes): PNG metadata, settings files, the API."""
    s, own, slots = request.settings, request.primary, request.slots
    first = slots[0] if slots else None
    return {
        "mode": request.mode,
        "prompt": s.prompt,
        "negative_prompt": s.negative_prompt,
        "strength": own.strength,
        "variant": own.variant,
        "seed": s.seed,
        "steps": s.steps,
        "guidance": s.guidance,
        "width": s.width,
        "height": s.height,
        "start_at": own.start_at,
        "stop_at": own.stop_at,
        "crop": own.crop,
        "layout": own.layout,
        "structure": own.structure,
        "block_map": own.block_map,
        "prompt_template": s.prompt_template,
        "region": own.region,
        "references_sha256": [r.sha256 for r in own.references],
        "face_references_sha256": [r.sha256 for r in own.face_references],
        "negative_references_sha256": [r.sha256 for r in own.negative_references],
        "base": s.base,
        # The first slot in the `extra_*` shorthand (kept for readers of earlier files); `slots` holds them all.
        "extra_mode": first.mode if first else "none",
        "extra_variant": first.variant if first else None,
        "extra_strength": first.strength if first else None,
        "extra_region": first.region if first else "whole",
        "extra_start_at": first.start_at if first else None,
        "extra_stop_at": first.stop_at if first else None,
        "extra_references_sha256": [r.sha256 for r in first.references] if first else [],
        "slots": [describe_slot(p) for p in slots],
        "slot_images_sha256": [r.sha256 for p in slots for r in p.references],
        "strengths": list(request.sweep.strengths) or None,
        "extra_strengths": list(request.sweep.extra_strengths) or None,
        "speed": s.speed,
    }
