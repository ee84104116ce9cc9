"""A per-sample IP-Adapter scale that is never stored on the model.

Stock diffusers keeps one IP-Adapter scale per attention processor as a plain float: global state shared by every
request, with no batch dimension. Here the processors keep that float only as a *layer weight* (1.0 everywhere, or
an InstantStyle block map), and each call supplies its own per-sample strengths through a context variable, set
for the duration of one pipeline call in the calling thread. Two requests can never see each other's strengths,
and one batch can hold several strengths (a strength sweep in one denoising pass).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from .errors import BlockMapError


@dataclass
class PromptScale:
    """One image prompt of a call: its per-sample strengths, layer weights, steps window and region.

    `strengths`: one per sample of the batch (the sweep's cells). `block_weights`: processor name -> layer weight
    (InstantStyle); None means 1.0 on every layer. The prompt acts on steps `start <= i < stop` (None: to the end).
    `mask`: (1, height, width) at the image's size, 1 where the prompt acts (None: the whole image); it is sized per
    layer as diffusers' `IPAdapterMaskProcessor.downsample` sizes `ip_adapter_masks`.
    """

    strengths: Sequence[float]
    block_weights: Mapping[str, float] | None = None
    start: int = 0
    stop: int | None = None
    mask: torch.Tensor | None = None


class SampleScales:
    """The image-prompt strengths of one pipeline call; never shared between calls.

    `values`: (prompts, rows) strength per prompt and row of the UNet batch, rows = B or 2B ([uncond x B, cond x B]
    under guidance). `prompt_of[j]` is the image prompt that adapter component j belongs to (a variant such as
    "plus+plus-face" has two components and one prompt). The engine calls `set_step(i)` before each step, so a
    prompt acts only inside its window.
    """

    def __init__(
        self, values: torch.Tensor, prompts: Sequence[PromptScale], prompt_of: Sequence[int] | None, guided: bool
    ) -> None:
        self.values = values
        self.prompts = list(prompts)
        self.prompt_of = list(prompt_of) if prompt_of is not None else None
        # precomputed on the host: the hot path never syncs with the GPU
        self.nonzero = [any(s != 0 for s in p.strengths) for p in self.prompts]
        self._step = 0
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def set_step(self, step: int) -> None:
        self._step = step

    def prompt(self, component: int) -> int:
        return 0 if self.prompt_of is None else self.prompt_of[component]

    def acting(self, p: int) -> bool:
        """Whether prompt `p` adds anything at this step (strength 0 everywhere: exactly nothing)."""
        window = self.prompts[p]
        return self.nonzero[p] and window.start <= self._step and (window.stop is None or self._step < window.stop)

    def weight(self, p: int, layer_name: str, default: float) -> float:
        weights = self.prompts[p].block_weights
        if weights is None:
            return default
        return weights.get(layer_name, 0.0)

    def mask(self, p: int, num_queries: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Prompt `p`'s region at a layer with `num_queries` positions: (1, num_queries, 1), or None."""
        mask = self.prompts[p].mask
        if mask is None:
            return None
        key = (p, num_queries)
        if key not in self._masks:
            with warnings.catch_warnings():  # the aspect-ratio note: the same padding diffusers applies
                warnings.simplefilter("ignore", UserWarning)
                down = IPAdapterMaskProcessor.downsample(mask, 1, num_queries, 1)
            self._masks[key] = down.to(device=self.values.device, dtype=dtype)
        return self._masks[key]


_SCALES: ContextVar[SampleScales | None] = ContextVar("ip_adapter_sample_scales", default=None)
_STATS: ContextVar[list | None] = ContextVar("ip_adapter_attention_stats", default=None)


@contextmanager
def attention_stats() -> Iterator[list[tuple[str, float, float]]]:
    """Within this block, each image-prompt attention records (layer, |image branch|, |text branch|): the mean
    absolute value of what the image prompt adds (strength and layer weight applied) and of the text attention's
    output. For measurements (bench/fast.py); nothing is recorded outside such a block."""
    records: list[tuple[str, float, float]] = []
    token = _STATS.set(records)
    try:
        yield records
    finally:
        _STATS.reset(token)


@contextmanager
def prompt_scales(
    prompts: Sequence[PromptScale],
    guided: bool,
    device: torch.device | str,
    dtype: torch.dtype,
    prompt_of: Sequence[int] | None = None,
) -> Iterator[SampleScales]:
    """Within this block, IP-Adapter component j uses prompt `prompt_of[j]`'s strength `strengths[i]` for sample i."""
    rows = [list(p.strengths) * (2 if guided else 1) for p in prompts]
    scales = SampleScales(torch.tensor(rows, device=device, dtype=dtype), prompts, prompt_of, guided)
    token = _SCALES.set(scales)
    try:
        yield scales
    finally:
        _SCALES.reset(token)


def sample_scales(
    strengths: Sequence[float],
    guided: bool,
    device: torch.device | str,
    dtype: torch.dtype,
    block_weights: Mapping[str, float] | None = None,
) -> contextlib.AbstractContextManager[SampleScales]:
    """One image prompt (every component): IP-Adapter attention uses `strengths[i]` for sample i."""
    return prompt_scales([PromptScale(strengths, block_weights)], guided, device, dtype)


@dataclass
class ImageBranch:
    """How one adapter component's image branch enters one layer for this call: its weight (a float, or (B, 1, 1)
    per-sample weights) and its prompt's region. The per-sample part both architectures' processors share."""

    weights: float | torch.Tensor
    prompt: int | None = None

    def add(self, ip_out: torch.Tensor, hidden_states: torch.Tensor, layer_name: str) -> torch.Tensor:
        """What the branch adds: `ip_out` (B, queries, dim) weighted, inside the prompt's region."""
        per_sample = _SCALES.get()
        if per_sample is not None and self.prompt is not None:
            mask = per_sample.mask(self.prompt, ip_out.shape[1], ip_out.dtype)
            if mask is not None:
                ip_out = ip_out * mask  # (1, queries, 1): the prompt's region at this layer's resolution
        added = self.weights * ip_out
        stats = _STATS.get()
        if stats is not None and per_sample is not None:
            stats.append((layer_name, added.abs().mean().item(), hidden_states.abs().mean().item()))
        return added


def image_branch(component: int, layer_name: str, layer_weight: float, batch_size: int) -> ImageBranch | None:
    """Adapter component `component`'s image branch in layer `layer_name` for this call, or None when it adds
    exactly nothing (its prompt is outside its window, at strength 0 everywhere, or weighted 0 in this layer)."""
    per_sample = _SCALES.get()
    if per_sample is None:
        return ImageBranch(layer_weight) if layer_weight != 0 else None
    p = per_sample.prompt(component)
    if not per_sample.acting(p):
        return None
    layer_weight = per_sample.weight(p, layer_name, layer_weight)
    if layer_weight == 0:
        return None
    values = per_sample.values[p]
    if values.shape[0] != batch_size:
        raise RuntimeError(f"{values.shape[0]} sample scales for a batch of {batch_size}")
    return ImageBranch((layer_weight * values).view(batch_size, 1, 1), p)


def sharing_processor(cls: type, layer_name: str, procs: Sequence[Any]) -> Any:
    """A `cls` processor holding every given processor's layer weights and image projections in order, sharing
    (not copying) their `to_k_ip` / `to_v_ip` modules; both architectures' `sharing` constructors build on it."""
    new = cls.__new__(cls)  # diffusers' __init__ would build fresh (random) projections
    torch.nn.Module.__init__(new)
    new.layer_name = layer_name  # the key in the denoiser's attn_processors, which block maps and ramps address
    new.hidden_size = procs[0].hidden_size
    new.cross_attention_dim = procs[0].cross_attention_dim
    new.scale = [s for p in procs for s in p.scale]
    new.to_k_ip = torch.nn.ModuleList([m for p in procs for m in p.to_k_ip])
    new.to_v_ip = torch.nn.ModuleList([m for p in procs for m in p.to_v_ip])
    return new


class ScaledIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """IPAdapterAttnProcessor2_0 with `self.scale` as a layer weight times the call's per-sample strengths."""

    @classmethod
    def sharing(cls, layer_name: str, procs: Sequence[IPAdapterAttnProcessor2_0]) -> ScaledIPAdapterAttnProcessor:
        """The one constructor: a processor holding every given processor's projections in order, sharing (not
        copying) their `to_k_ip` / `to_v_ip` weights. One processor wraps a loaded diffusers one; several make a
        combination (diffusers' multi-adapter form)."""
        new = sharing_processor(cls, layer_name, procs)
        new.num_tokens = [n for p in procs for n in p.num_tokens]
        return new

    # Copied from diffusers 0.42.1 (models/attention_processor.py, IPAdapterAttnProcessor2_0.__call__), with the
    # image branch changed: per-sample strengths from the call's context, step windows, regions, layer weights.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if ip_adapter_masks is not None:
            raise NotImplementedError("IP-Adapter masks are not supported by ScaledIPAdapterAttnProcessor")
        if not isinstance(encoder_hidden_states, tuple):
            raise TypeError("expected (text_states, [ip_states, ...]) from a UNet with an IP-Adapter loaded")
        residual = hidden_states
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states

        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, tokens, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        for j, (ip_states, layer_weight, to_k_ip, to_v_ip) in enumerate(
            zip(ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip, strict=True)
        ):
            branch = image_branch(j, self.layer_name, layer_weight, batch_size)
            if branch is None:
                continue  # exactly the result without this prompt: nothing is added
            # ip_states: (B, num_images, tokens, dim) -> keys over all images' tokens together
            ip_key = to_k_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = to_v_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value)
            ip_out = ip_out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            hidden_states = hidden_states + branch.add(ip_out, hidden_states, self.layer_name)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


_TWINS: dict[type, type] = {IPAdapterAttnProcessor2_0: ScaledIPAdapterAttnProcessor}


def register_twin(stock: type, scaled: type) -> None:
    """Another architecture's stock IP-Adapter processor and its per-sample twin. FLUX's lives with its
    architecture (`pipelines/arch/flux_attention.py`, registered when a FLUX pipeline is loaded): importing it here
    would pull every diffusers transformer into the app's start-up."""
    _TWINS[stock] = scaled


def twins() -> dict[type, type]:
    """Each stock IP-Adapter processor class registered so far and its per-sample twin."""
    return dict(_TWINS)


def wrap_ip_processors(processors: Mapping[str, object]) -> dict[str, object]:
    """A denoiser's `attn_processors` after `load_ip_adapter`, with every IP-Adapter processor (SD's or FLUX's)
    made per-sample scalable."""
    scaled = twins()
    return {
        name: scaled[type(proc)].sharing(name, [proc]) if type(proc) in scaled else proc
        for name, proc in processors.items()
    }


def combine_processors(parts: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """One processor map holding every part's IP-Adapter projections in order (diffusers' multi-adapter form).

    Each part is the processor map of one loaded variant; the result shares their `to_k_ip` / `to_v_ip` modules,
    so a combination costs no weights and no disk read.
    """
    combined: dict[str, object] = {}
    scaled = tuple(twins().values())
    for name, first in parts[0].items():
        if not isinstance(first, scaled):
            combined[name] = first  # self-attention and the like: the denoiser's own processor
            continue
        combined[name] = type(first).sharing(name, [p[name] for p in parts])
    return combined


def block_weights(unet: torch.nn.Module, block_map: dict) -> dict[str, float]:
    """An InstantStyle block map as a weight per cross-attention processor of `unet`; unknown blocks are an error.

    diffusers' `set_ip_adapter_scale` silently ignores a block the UNet does not have; here it raises.
    """
    with_attention = {
        "down": [i for i, b in enumerate(unet.down_blocks) if hasattr(b, "attentions")],
        "up": [i for i, b in enumerate(unet.up_blocks) if hasattr(b, "attentions")],
    }
    per_block = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
    for part, blocks in block_map.items():
        if part == "mid":
            continue
        if part not in with_attention or not isinstance(blocks, dict):
            raise BlockMapError(f"block map part {part!r} must be 'down', 'mid' or 'up' with a table of blocks")
        for block, weights in blocks.items():
            index = int(block.removeprefix("block_")) if block.removeprefix("block_").isdigit() else -1
            if index not in with_attention[part]:
                valid = [f"block_{i}" for i in with_attention[part]]
                raise BlockMapError(f"block map names {part}.{block}, which this UNet does not have (it has {valid})")
            if isinstance(weights, list) and len(weights) not in (1, per_block[part]):
                raise BlockMapError(
                    f"block map {part}.{block} has {len(weights)} weights; this UNet has {per_block[part]} layers there"
                )
    expanded = _maybe_expand_lora_scales(unet, [block_map], default_scale=0.0)[0]
    weights = {}
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            weights[name] = next((float(w) for prefix, w in expanded.items() if name.startswith(prefix)), 0.0)
    return weights


def block_map_key(block_map: dict) -> str:
    """A block map's cache key."""
    return json.dumps(block_map, sort_keys=True)
