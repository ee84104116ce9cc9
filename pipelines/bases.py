"""Loaded base models: each one's pipeline, its denoiser, and what is on the denoiser now (processors, LoRAs,
schedulers); `Bases` keeps up to `max_bases` of them. The adapter bank swaps variants onto one by reference.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .device import free_memory

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


class Bases:
    """The base pipelines held in memory (least recently used first) and the one in use; at most `max_bases`.

    `ensure(name)` puts a base in use, loading it when it is not in memory: the least recently used one is released
    *before* another loads, so peak memory stays at `max_bases` bases. Each loaded base runs on the engine's device
    (or with model CPU offload), its VAE decodes one image at a time, and its denoiser's and text encoders' calls are
    counted in `counters`.
    """

    def __init__(self, source: Any, arch: Any, counters: Any, settings: dict[str, Any]) -> None:
        self.source, self.arch, self.counters = source, arch, counters
        self.device, self.dtype = settings["device"], settings["dtype"]
        self.offload, self.compile, self.max_bases = settings["offload"], settings["compile"], settings["max_bases"]
        self.held: OrderedDict[str, LoadedBase] = OrderedDict()
        self.current: LoadedBase | None = None

    def ensure(self, name: str | None = None) -> LoadedBase:
        """Put base `name` (default: the one in use, else "default") in use and return it."""
        name = name or (self.current.name if self.current is not None else "default")
        if name in self.held:
            self.held.move_to_end(name)
            self.current = self.held[name]
            return self.current
        while len(self.held) >= self.max_bases:
            _, old = self.held.popitem(last=False)
            if old is self.current:
                self.current = None
            del old
            free_memory(self.device)
        self.current = self.held[name] = self._load(name)
        return self.current

    def _load(self, name: str) -> LoadedBase:
        pipe = self.source.pipeline(name, self.dtype)
        if self.offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        denoiser = self.arch.denoiser(pipe)
        if self.compile:
            denoiser.compile()  # in place: processors stay swappable (a variant switch recompiles once)
        pipe.set_progress_bar_config(disable=True)
        if hasattr(pipe.vae, "enable_slicing"):
            # One image at a time through the VAE: a comparison's cell is decoded exactly as its single render is
            # (a CPU convolution over 1 image rounds differently from one over several; pipelines/numerics.py), and
            # the decoder's peak memory is one image's.
            pipe.vae.enable_slicing()
        denoiser.register_forward_pre_hook(self._counter("unet_calls"))  # the diagnostics' name since the start
        for encoder in self.arch.text_encoders(pipe):
            encoder.register_forward_pre_hook(self._counter("text_encoder_calls"))
        self.counters["base_loads"] += 1
        return LoadedBase.of(name, pipe, denoiser)

    def _counter(self, name: str) -> Any:
        """A forward pre-hook that counts a model's calls in `counters[name]`."""

        def count(module: torch.nn.Module, args: Any) -> None:
            self.counters[name] += 1

        return count
