"""What a slot kind hands an architecture for one denoising pass: values, one per kind of conditioning, never opened
by the runner. A leaf: slot kinds (`pipelines/slots/`) make them, architectures (`pipelines/arch/`) read them.

Each value carries the pass's per-sample strengths (one per cell of the pass), so one pass renders every cell of a
sweep. An architecture says which of these types it accepts (`Architecture.accepts`) and refuses the rest by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass(frozen=True)
class ImageAttention:
    """Image prompts in the denoiser's attention (IP-Adapter kinds).

    `embeds`: one tensor per adapter component, laid out for the pass's guidance; `negative`: each component's
    negative image prompt for a true-CFG pass (empty otherwise). `scales`: a context manager with `set_step(i)` that
    holds the per-sample strengths, steps windows, regions and layer weights of the call (`pipelines/attention.py`).
    `module_state`: (module, attributes for the pass, attributes after it) for projections that read state from the
    model between calls (diffusers' FaceID Plus API): set before the call, reset after it, under the engine lock.
    """

    embeds: list[torch.Tensor]
    negative: list[torch.Tensor]
    scales: Any
    module_state: list[tuple[Any, dict[str, Any], dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class PromptTokens:
    """Image tokens joined to the prompt's tokens (FLUX Redux): per part, its tokens (1, n, width) and each sample's
    strength (the tokens are multiplied by it; at 0 they are hidden from that sample)."""

    parts: list[tuple[torch.Tensor, list[float]]]


@dataclass(frozen=True)
class ControlResiduals:
    """ControlNets read control maps; each net's residuals are scaled per sample.

    `per_sample`: the pass's holder of per-sample scales (`pipelines/controlnets.py`); `strengths`: per net, one per
    sample; `maps`, `union_modes` (None for a plain ControlNet) and `windows` (start_at, stop_at): one per net.
    """

    per_sample: Any
    strengths: list[list[float]]
    maps: list[Image.Image]
    union_modes: list[int | None]
    windows: list[tuple[float, float]]


@dataclass(frozen=True)
class StartImage:
    """Denoising starts from this picture (img2img), at the output size; `strength` of 0 is never handed over."""

    image: Image.Image
    strength: float


@dataclass(frozen=True)
class ReferenceLatents:
    """In-context references (FLUX.2 [klein]): reference images as extra latent tokens of the denoiser.

    `parts`: per reference prompt, in declared order, its images' latents (each (1, channels, h, w) as the
    pipeline encodes them), each sample's strength, and the prompt's window of steps (first, stop). The
    architecture composes the strengths (`pipelines/arch/flux2.py`); at 0 in every sample a part is left out.
    """

    parts: list[tuple[list[torch.Tensor], list[float], tuple[int, int]]]


Conditioning = ImageAttention | PromptTokens | ControlResiduals | StartImage | ReferenceLatents


@dataclass(frozen=True)
class Guidance:
    """How a request's passes are guided: classifier-free guidance as one `[uncond, cond]` batch (`cfg_batch`), and
    true CFG's scale (a second call per step with the negative prompt; 1 = none)."""

    cfg_batch: bool
    true_cfg: float = 1.0

    @property
    def negative_text(self) -> bool:
        """Whether the negative prompt is encoded (either kind of guidance reads it)."""
        return self.cfg_batch or self.true_cfg > 1


@dataclass(frozen=True)
class PassInput:
    """One pass as the architecture runs it: `batch` samples sharing prompt, seed and conditioning values.

    `pipe`: the pipeline that runs it (the base, or one made on the base's modules for ControlNets or a start
    image); `text`: the prompt's embeddings for one sample; `latents`: the seeded noise (None with a start image:
    the pipeline draws it from `seed`, one generator per sample); `on_step(i)`: after each step of the pass.
    """

    pipe: Any
    text: dict[str, torch.Tensor]
    batch: int
    steps: int
    guidance: float
    width: int
    height: int
    seed: int
    latents: torch.Tensor | None
    conditioning: Sequence[Conditioning]
    layout: Guidance = Guidance(cfg_batch=False)
    on_step: Callable[[int], None] | None = None
