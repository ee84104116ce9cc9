"""ControlNets scaled per sample: diffusers' Multi(Union)ControlNetModel with each net's residuals multiplied by its
slot's strength for each sample of the batch. Imported when the first ControlNet loads: diffusers' ControlNet package
imports every ControlNet it has (and their transformers), which the app's start-up does not need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel


class ScaledControlNets:
    """Per-sample strengths for a pass: each ControlNet's residuals times its slot's strength for that sample.

    The pipeline runs with conditioning scale 1 inside each slot's window (0 outside), and the nets' outputs are
    then multiplied by (rows, 1, 1, 1) scales: the same products stock diffusers computes with one float scale
    (x * 1 * s = x * s), with another strength on each sample of the batch.
    """

    def __init__(self) -> None:
        self.scales: list[torch.Tensor] | None = None  # one (batch,) tensor per net, set for one pass

    def scaled(self, i: int, down: Sequence[torch.Tensor], mid: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
        if self.scales is None:
            return list(down), mid
        scale = self.scales[i]
        rows = mid.shape[0]
        column = scale.repeat(rows // scale.shape[0]).to(mid.device, mid.dtype).view(rows, 1, 1, 1)
        return [d * column for d in down], mid * column


def _merge(total: tuple[Any, Any] | None, down: Sequence[torch.Tensor], mid: torch.Tensor) -> tuple[Any, Any]:
    """Sum residuals as diffusers' Multi(Union)ControlNetModel does (the first net's, then each next one added)."""
    if total is None:
        return list(down), mid
    return [prev + curr for prev, curr in zip(total[0], down, strict=True)], total[1] + mid


class _PerSample:
    """Holds the per-sample strengths a Scaled* model reads during one pass."""

    def __init__(self, nets: Sequence[torch.nn.Module]) -> None:
        super().__init__(list(nets))  # type: ignore[call-arg] - the diffusers Multi* model after this in the MRO
        self.per_sample = ScaledControlNets()


class ScaledMultiControlNet(_PerSample, MultiControlNetModel):
    """diffusers' MultiControlNetModel with each net's residuals also scaled per sample (`ScaledControlNets`)."""

    # Adapted from diffusers 0.42.1 MultiControlNetModel.forward: the same calls and sums, each net's output scaled,
    # and (as the union one does) a net outside its window not run.
    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        conditioning_scale: list[float],
        class_labels: Any = None,
        timestep_cond: Any = None,
        attention_mask: Any = None,
        added_cond_kwargs: Any = None,
        cross_attention_kwargs: Any = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> Any:
        total = None
        for i, (image, scale, net) in enumerate(zip(controlnet_cond, conditioning_scale, self.nets, strict=False)):
            if scale == 0.0:  # outside its window: stock adds zeros; x + 0 is x, so it is not run at all
                continue
            down, mid = net(
                sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=image,
                conditioning_scale=scale, class_labels=class_labels, timestep_cond=timestep_cond,
                attention_mask=attention_mask, added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs, guess_mode=guess_mode, return_dict=False,
            )  # fmt: skip
            total = _merge(total, *self.per_sample.scaled(i, down, mid))
        return total if total is not None else (None, None)


class ScaledMultiControlNetUnion(_PerSample, MultiControlNetUnionModel):
    """diffusers' MultiControlNetUnionModel with each net's residuals also scaled per sample."""

    # Adapted from diffusers 0.42.1 MultiControlNetUnionModel.forward: a net outside its window (scale 0) is
    # skipped, the others called with from_multi=True and summed; each net's output scaled per sample.
    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        control_type: list[torch.Tensor],
        control_type_idx: list[list[int]],
        conditioning_scale: list[float],
        class_labels: Any = None,
        timestep_cond: Any = None,
        attention_mask: Any = None,
        added_cond_kwargs: Any = None,
        cross_attention_kwargs: Any = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> Any:
        total = None
        parts = zip(controlnet_cond, control_type, control_type_idx, conditioning_scale, self.nets, strict=False)
        for i, (image, ctype, ctype_idx, scale, net) in enumerate(parts):
            if scale == 0.0:
                continue
            down, mid = net(
                sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=image,
                control_type=ctype, control_type_idx=ctype_idx, conditioning_scale=scale, class_labels=class_labels,
                timestep_cond=timestep_cond, attention_mask=attention_mask, added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs, from_multi=True, guess_mode=guess_mode,
                return_dict=False,
            )  # fmt: skip
            total = _merge(total, *self.per_sample.scaled(i, down, mid))
        return total if total is not None else (None, None)
