"""FLUX's per-sample IP-Adapter processor, kept with its architecture: importing diffusers' FLUX transformer module
pulls in every diffusers transformer, so this module is imported only when a FLUX pipeline is (`Flux.pipeline_class`),
and registers its twin with `pipelines.attention` then."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor, _get_qkv_projections

from ..attention import image_branch, register_twin, sharing_processor


class ScaledFluxIPAdapterAttnProcessor(FluxIPAdapterAttnProcessor):
    """FLUX's twin of `ScaledIPAdapterAttnProcessor`: diffusers' FluxIPAdapterAttnProcessor (the XLabs IP-Adapter on
    a double-stream block) with `self.scale` as a layer weight times the call's per-sample strengths."""

    @classmethod
    def sharing(cls, layer_name: str, procs: Sequence[FluxIPAdapterAttnProcessor]) -> ScaledFluxIPAdapterAttnProcessor:
        return sharing_processor(cls, layer_name, procs)

    # Copied from diffusers 0.42.1 (models/transformers/transformer_flux.py, FluxIPAdapterAttnProcessor.__call__),
    # with the image branch changed: per-sample strengths from the call's context, step windows, layer weights.
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        ip_hidden_states: list[torch.Tensor] | None = None,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> Any:
        if ip_adapter_masks is not None:
            raise NotImplementedError("IP-Adapter masks are not supported on FLUX's packed tokens")
        batch_size = hidden_states.shape[0]
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (attn.heads, -1)))
        key = attn.norm_k(key.unflatten(-1, (attn.heads, -1)))
        value = value.unflatten(-1, (attn.heads, -1))
        ip_query = query
        if encoder_hidden_states is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (attn.heads, -1)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (attn.heads, -1)))
            encoder_value = encoder_value.unflatten(-1, (attn.heads, -1))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        text_tokens = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [text_tokens, hidden_states.shape[1] - text_tokens], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        ip_attn_output = torch.zeros_like(hidden_states)
        for j, (states, layer_weight, to_k_ip, to_v_ip) in enumerate(
            zip(ip_hidden_states or [], self.scale, self.to_k_ip, self.to_v_ip, strict=False)
        ):
            branch = image_branch(j, self.layer_name, layer_weight, batch_size)
            if branch is None:
                continue  # stock adds zeros here: x + 0 is x
            ip_key = to_k_ip(states).view(batch_size, -1, attn.heads, attn.head_dim)
            ip_value = to_v_ip(states).view(batch_size, -1, attn.heads, attn.head_dim)
            out = dispatch_attention_fn(
                ip_query,
                ip_key,
                ip_value,
                attn_mask=None,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
            out = out.reshape(batch_size, -1, attn.heads * attn.head_dim).to(ip_query.dtype)
            ip_attn_output += branch.add(out, hidden_states, self.layer_name)
        return hidden_states, encoder_hidden_states, ip_attn_output


register_twin(FluxIPAdapterAttnProcessor, ScaledFluxIPAdapterAttnProcessor)
