"""A per-sample IP-Adapter scale that is never stored on the model.

Stock diffusers keeps one IP-Adapter scale per attention processor as a plain float: global state shared by every
request, with no batch dimension. Here the processors keep that float only as a *layer weight* (1.0 everywhere, or
an InstantStyle block map), and each call supplies its own per-sample strengths through a context variable, set
for the duration of one pipeline call in the calling thread. Two requests can never see each other's strengths,
and one batch can hold several strengths (a strength sweep in one denoising pass).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0


class SampleScales:
    """The image-prompt strengths of one pipeline call; never shared between calls.

    `values`: strength per row of the UNet batch, (B,) or (2B,) as [uncond x B, cond x B] under guidance.
    `block_weights`: processor name -> layer weight (InstantStyle); None means 1.0 on every layer.
    `active` is switched off by the engine after the "stop at" step, so later steps are text-only.
    """

    def __init__(self, values: torch.Tensor, any_nonzero: bool, block_weights: Mapping[str, float] | None) -> None:
        self.values = values
        self.any_nonzero = any_nonzero  # precomputed on the host: the hot path never syncs with the GPU
        self.block_weights = block_weights
        self.active = True

    def weight(self, layer_name: str, default: float) -> float:
        if self.block_weights is None:
            return default
        return self.block_weights.get(layer_name, 0.0)


_SCALES: ContextVar[SampleScales | None] = ContextVar("ip_adapter_sample_scales", default=None)


@contextmanager
def sample_scales(
    strengths: Sequence[float],
    guided: bool,
    device: torch.device | str,
    dtype: torch.dtype,
    block_weights: Mapping[str, float] | None = None,
) -> Iterator[SampleScales]:
    """Within this block, IP-Adapter attention uses `strengths[i]` for sample i (both guidance halves)."""
    rows = list(strengths) * (2 if guided else 1)
    scales = SampleScales(torch.tensor(rows, device=device, dtype=dtype), any(s != 0 for s in strengths), block_weights)
    token = _SCALES.set(scales)
    try:
        yield scales
    finally:
        _SCALES.reset(token)


class ScaledIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """IPAdapterAttnProcessor2_0 with `self.scale` as a layer weight times the call's per-sample strengths."""

    @classmethod
    def from_processor(cls, proc: IPAdapterAttnProcessor2_0, layer_name: str) -> ScaledIPAdapterAttnProcessor:
        """Wrap a loaded diffusers processor, sharing (not copying) its `to_k_ip` / `to_v_ip` weights."""
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.layer_name = layer_name  # the key in unet.attn_processors, which block maps address
        new.hidden_size = proc.hidden_size
        new.cross_attention_dim = proc.cross_attention_dim
        new.num_tokens = list(proc.num_tokens)
        new.scale = list(proc.scale)
        new.to_k_ip = proc.to_k_ip
        new.to_v_ip = proc.to_v_ip
        return new

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

        per_sample = _SCALES.get()
        for ip_states, layer_weight, to_k_ip, to_v_ip in zip(
            ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip, strict=True
        ):
            if per_sample is not None:
                if not (per_sample.active and per_sample.any_nonzero):
                    break  # exactly the text-only result: nothing is added
                layer_weight = per_sample.weight(self.layer_name, layer_weight)
            if layer_weight == 0:
                continue
            # ip_states: (B, num_images, tokens, dim) -> keys over all images' tokens together
            ip_key = to_k_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = to_v_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value)
            ip_out = ip_out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            if per_sample is None:
                hidden_states = hidden_states + layer_weight * ip_out
            else:
                if per_sample.values.shape[0] != batch_size:
                    raise RuntimeError(f"{per_sample.values.shape[0]} sample scales for a batch of {batch_size}")
                weights = (layer_weight * per_sample.values).view(batch_size, 1, 1)  # (B, 1, 1)
                hidden_states = hidden_states + weights * ip_out

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def wrap_ip_processors(processors: Mapping[str, object]) -> dict[str, object]:
    """`unet.attn_processors` after `load_ip_adapter`, with every IP-Adapter processor made per-sample scalable."""
    return {
        name: ScaledIPAdapterAttnProcessor.from_processor(proc, name)
        if isinstance(proc, IPAdapterAttnProcessor2_0)
        else proc
        for name, proc in processors.items()
    }
