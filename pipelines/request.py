"""A generation request is a value with parts: shared settings, its image prompts, and a sweep.

It is built and validated in one place (`pipelines/codec.py` maps the API's keywords to it and back), then passed
down unchanged. The tab's own image prompt and every added one ("slots") are the same `ImagePrompt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .images import ReferenceImage
from .parameters import MAX_IMAGES_PER_INPUT
from .presets import CONTROLNET_KINDS, STRUCTURE_KINDS

MAX_SEED = 2**32 - 1  # seeds are shown and typed by people; 32 bits is what every UI in this field uses
RANDOM_SEED = -1  # the seed that asks for a fresh random one
MAX_REFERENCES = MAX_IMAGES_PER_INPUT
MAX_PROMPT_CHARS = 2000  # checked before tokenising; the text encoders read about 75 tokens (300-odd characters)
SIZE_MULTIPLE = 8  # the VAE downsamples by 8


@dataclass(frozen=True)
class Settings:
    """What every image prompt of a request shares."""

    prompt: str  # as the person wrote it
    negative_prompt: str
    seed: int  # always concrete
    steps: int
    guidance: float
    width: int
    height: int
    speed: str  # "fast": the family's few-step LoRA, its steps, guidance and scheduler
    base: str  # which base pipeline of the family draws it: "default" or a key of its alt_bases
    prompt_template: str  # the mode's template around the prompt

    @property
    def full_prompt(self) -> str:
        """The prompt the text encoder gets: the person's prompt inside the mode's template."""
        return self.prompt_template.replace("{prompt}", self.prompt).strip(" ,")


@dataclass(frozen=True)
class ImagePrompt:
    """One image prompt of a request: its adapter, references, strength, steps window and region.

    A structure slot is one too (`mode` in STRUCTURE_KINDS): its one image feeds a ControlNet ("canny", "depth",
    "control" with `control_type`) or starts the denoising ("start"); it has no adapter (`variant` is "").
    """

    mode: str  # the kind: "general", "face", "anime" or "style" (the adapter variant is that mode's), or structure
    variant: str
    references: tuple[ReferenceImage, ...]
    strength: float
    start_at: float  # it acts on the steps i with start_at <= i / steps < stop_at
    stop_at: float
    region: str  # where it acts: the whole image or one half
    crop: str  # how a non-square reference becomes the encoder's square input
    block_map: dict | None = None  # InstantStyle layer map (None: every layer)
    layout: bool = False  # style: also drive the layout layers
    structure: float | None = None  # FaceID Plus: weight of the face structure (s_scale)
    face_references: tuple[ReferenceImage, ...] = ()  # close-ups for a Plus-Face component
    negative_references: tuple[ReferenceImage, ...] = ()  # replace the unconditional image embedding
    control_type: str | None = None  # structure: what the control map shows ("canny", "depth", "pose", ...)

    @property
    def is_structure(self) -> bool:
        """A ControlNet or start-image slot (no adapter)."""
        return self.mode in STRUCTURE_KINDS

    @property
    def is_controlnet(self) -> bool:
        return self.mode in CONTROLNET_KINDS

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
        if self.control_type is not None:
            out["control_type"] = self.control_type
        return out


@dataclass(frozen=True)
class Sweep:
    """A comparison's strength axes: rows sweep the tab's own image prompt, columns the first slot."""

    strengths: tuple[float, ...] = ()  # empty: one image
    extra_strengths: tuple[float, ...] = ()  # empty: the first slot keeps its own strength

    def cells(self, prompts: tuple[ImagePrompt, ...]) -> list[tuple[float, ...]]:
        """Every cell's strengths, one per image prompt (rows x columns; the other slots keep theirs)."""
        rows = self.strengths or (prompts[0].strength,)
        if len(prompts) == 1:
            return [(s,) for s in rows]
        columns = self.extra_strengths or (prompts[1].strength,)
        rest = tuple(p.strength for p in prompts[2:])
        return [(s, e, *rest) for s in rows for e in columns]


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides one image (or one comparison)."""

    mode: str  # the tab
    settings: Settings
    image_prompts: tuple[ImagePrompt, ...]  # [0]: the tab's own, then the slots in order
    sweep: Sweep = Sweep()
    family: str = ""  # the model family whose presets validated it ("": not checked)

    @property
    def primary(self) -> ImagePrompt:
        """The tab's own image prompt."""
        return self.image_prompts[0]

    @property
    def slots(self) -> tuple[ImagePrompt, ...]:
        """The image prompts added after the tab's own ("Add an image prompt", `slots`, or `extra_*`)."""
        return self.image_prompts[1:]

    def swept(self, strengths: Sequence[float], extra_strengths: Sequence[float] = ()) -> GenerationRequest:
        """This request as a comparison over `strengths` (rows) and `extra_strengths` (the first slot's columns;
        empty: it keeps its own strength)."""
        return replace(self, sweep=Sweep(tuple(float(s) for s in strengths), tuple(float(s) for s in extra_strengths)))
