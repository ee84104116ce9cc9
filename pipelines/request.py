"""A generation request is a value: built and validated in one place, then passed down unchanged."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InvalidRequestError
from .images import ReferenceImage, load_reference
from .presets import ModePreset

MAX_SEED = 2**32 - 1  # seeds are shown and typed by people; 32 bits is what every UI in this field uses
MAX_REFERENCES = 8
SIZE_MULTIPLE = 8  # the VAE downsamples by 8


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides one image; `seed` is always concrete (randomisation happens before)."""

    mode: str
    prompt: str
    negative_prompt: str
    references: tuple[ReferenceImage, ...]
    strength: float
    variant: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int

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
            "references_sha256": [r.sha256 for r in self.references],
        }


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise InvalidRequestError(name, f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(name, f"{name} must be a number, got {value!r}") from e
    if not math.isfinite(number):
        raise InvalidRequestError(name, f"{name} must be a finite number, got {value!r}")
    return number


def _integer(name: str, value: Any) -> int:
    number = _number(name, value)
    if number != int(number):
        raise InvalidRequestError(name, f"{name} must be a whole number, got {value!r}")
    return int(number)


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(name, f"{name} must be text, got {type(value).__name__}")
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
) -> GenerationRequest:
    """Validate raw values (from the UI, the API or a script) against `preset`; None means the preset default."""

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    if variant is None:
        variant = preset.variant
    if variant not in preset.variants:
        raise InvalidRequestError("variant", f"variant {variant!r} is not one of {list(preset.variants)}")
    if len(references) > MAX_REFERENCES:
        raise InvalidRequestError("reference", f"at most {MAX_REFERENCES} reference images, got {len(references)}")
    refs = tuple(
        r if isinstance(r, ReferenceImage) else load_reference(r, index=i) for i, r in enumerate(references, 1)
    )
    seed_value = _integer("seed", seed)
    if not 0 <= seed_value <= MAX_SEED:
        raise InvalidRequestError("seed", f"seed = {seed_value} is outside [0, {MAX_SEED}]")

    def size(name: str, value: Any, bounds: Any) -> int:
        # Snap down to a multiple of 8 (what the VAE needs), then check the preset's bounds.
        snapped = _integer(name, pick(value, bounds.default)) // SIZE_MULTIPLE * SIZE_MULTIPLE
        return int(bounds.check(snapped, name))

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
        width=size("width", width, preset.width),
        height=size("height", height, preset.height),
    )
