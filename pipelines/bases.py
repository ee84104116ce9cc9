"""A loaded base model: its pipeline, its denoiser, and what is on the denoiser now (processors, LoRAs, schedulers).

The engine keeps up to `max_bases` of these; the adapter bank swaps variants onto one by reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

Key = tuple[str, ...]  # a combination: one variant name per image prompt, e.g. ("faceid", "plain")


@dataclass
class LoadedBase:
    """One loaded base pipeline and what is on its UNet now."""

    name: str
    pipe: DiffusionPipeline
    processors: dict[str, Any]  # the UNet's own attention processors (no image prompt)
    layers: dict[str, torch.nn.Module]  # its attention layers by processor name, to set processors directly
    active: Key | None = None  # the combination whose processors are on the UNet now
    loras: set[str] = field(default_factory=set)  # PEFT adapters loaded into this UNet
    lora_state: tuple = ()  # (name, weight) of the LoRAs on now; () = none active
    scheduler: Any = None  # the pipeline's own scheduler (quality)
    fast_scheduler: Any = None  # fast mode's, made from the same config on first use
    denoiser: Any = None  # the model whose attention layers carry the image prompts (pipelines/arch/)

    @classmethod
    def of(cls, name: str, pipe: Any, denoiser: torch.nn.Module) -> LoadedBase:
        processors = dict(denoiser.attn_processors)
        # The UNet's own attention layers by processor name, so a switch sets each one directly instead of walking
        # the module tree twice (diffusers' set_attn_processor): about 10x faster.
        layers = {
            f"{layer}.processor": module
            for layer, module in denoiser.named_modules()
            if f"{layer}.processor" in processors
        }
        return cls(name, pipe, processors, layers, scheduler=pipe.scheduler, denoiser=denoiser)
