"""The adapter bank: IP-Adapter variants loaded once, combined, put on a base UNet by swapping references.

Each variant is loaded once through diffusers' `load_ip_adapter` (the same call for real and tiny checkpoints); its
attention processors and image projection are then kept in memory. A request with several image prompts uses a
*combination* (diffusers' multi-adapter form: every processor holds each variant's projections in order), built
once from the loaded variants' modules: no weights copied, no disk read. FaceID checkpoints carry a LoRA, kept as a
PEFT adapter of its own and switched on whenever a combination holds a face prompt; a newly loaded base gets the
LoRAs from memory.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .arch import architecture
from .attention import block_map_key, block_weights, combine_processors, wrap_ip_processors
from .bases import Key, LoadedBase
from .errors import ModelNotAvailableError
from .presets import AdapterSpec

if TYPE_CHECKING:
    from .encoder import ImagePromptEncoder
    from .sources import ModelSource

log = logging.getLogger(__name__)
FAST_LORA = "fast"  # the PEFT adapter name of the few-step LoRA


@dataclass
class Component:
    """One IP-Adapter checkpoint of a variant (its image encoder is the encoder's, by `spec.image_encoder`)."""

    spec: AdapterSpec
    lora: str | None = None  # PEFT adapter name of the LoRA inside the checkpoint, when applied
    lora_state: dict[str, torch.Tensor] | None = None  # that LoRA, kept to load it into another base from memory


@dataclass
class LoadedAdapter:
    """A loaded variant (one adapter, or several such as "plus+plus-face") or a combination, kept in memory."""

    components: list[Component]
    processors: dict[str, Any]  # unet.attn_processors with ScaledIPAdapterAttnProcessor on cross-attention
    image_proj: torch.nn.Module  # unet.encoder_hid_proj (MultiIPAdapterImageProjection)

    @property
    def id(self) -> str:
        return " + ".join(c.spec.id for c in self.components)

    @property
    def uses_faces(self) -> bool:
        return any(c.spec.uses_faces for c in self.components)

    @property
    def specs(self) -> list[AdapterSpec]:
        """What the image-prompt encoder needs of each component: its checkpoint's spec."""
        return [c.spec for c in self.components]

    @property
    def loras(self) -> list[Component]:
        """The components whose LoRA is on with this adapter (one per distinct LoRA)."""
        seen: dict[str, Component] = {}
        for c in self.components:
            if c.lora and c.lora not in seen:
                seen[c.lora] = c
        return list(seen.values())


def _projection_layers(adapters: list[LoadedAdapter]) -> list[torch.nn.Module]:
    """The image projection layers of a combination, in component order.

    A FaceID Plus projection reads its CLIP features from attributes set per call: when one is used twice (two
    faces) each use gets a shallow copy sharing its weights, so the two never overwrite each other's features.
    """
    layers: list[torch.nn.Module] = []
    for adapter in adapters:
        for layer in adapter.image_proj.image_projection_layers:
            layers.append(copy.copy(layer) if any(layer is seen for seen in layers) else layer)
    return layers


def ramp_weights(processors: dict[str, Any], ramp: tuple[float, float]) -> dict[str, float]:
    """A weight per image-prompt processor, from ramp[0] at the first to ramp[1] at the last, linearly (in the
    denoiser's order: FLUX's double-stream blocks 0 to 18)."""
    names = [n for n, p in processors.items() if hasattr(p, "to_k_ip")]
    last = max(len(names) - 1, 1)
    return {name: ramp[0] + (ramp[1] - ramp[0]) * i / last for i, name in enumerate(names)}


class AdapterBank:
    """Every variant and combination loaded for a family, shared by all its bases."""

    def __init__(self, source: ModelSource, encoder: ImagePromptEncoder, counters: Counter[str]) -> None:
        self.source = source
        self.encoder = encoder
        self.counters = counters  # adapter_loads (the engine's counter)
        self._variants: dict[str, LoadedAdapter] = {}
        self._combinations: dict[Key, LoadedAdapter] = {}
        self._block_weights: dict[str, dict[str, float]] = {}  # the bases of a family share one architecture
        self._fast_state: dict[str, torch.Tensor] | None = None  # the few-step LoRA, read once, kept in memory

    def loaded(self, variant: str) -> LoadedAdapter | None:
        """A variant already in memory (None when it is not)."""
        return self._variants.get(variant)

    def get(self, base: LoadedBase, key: Key | str) -> LoadedAdapter:
        """The variant or combination `key`, loading what is missing onto `base` the first time only."""
        key = (key,) if isinstance(key, str) else tuple(key)
        if len(key) == 1:
            return self._variant(base, key[0])
        if key not in self._combinations:
            from diffusers.models.embeddings import MultiIPAdapterImageProjection

            parts = [self._variant(base, v) for v in key]
            self._combinations[key] = LoadedAdapter(
                [c for p in parts for c in p.components],
                combine_processors([p.processors for p in parts]),
                MultiIPAdapterImageProjection(_projection_layers(parts)),
            )
        return self._combinations[key]

    def _variant(self, base: LoadedBase, name: str) -> LoadedAdapter:
        """The variant `name` ("plus", or "plus+plus-face" for two at once), loaded the first time only."""
        if name in self._variants:
            return self._variants[name]
        family = self.source.family
        parts = name.split("+")
        unknown = [p for p in parts if p not in family.adapters]
        if unknown:
            raise KeyError(f"family {family.name!r} has no adapter {unknown[0]!r}")
        specs = [family.adapters[p] for p in parts]
        components = []
        for spec in specs:
            if spec.image_encoder is not None:
                self.encoder.tower(spec.image_encoder)
                if spec.embeds in ("hidden", "faceid-plus"):
                    self.encoder.blank_hidden(spec.image_encoder)
            components.append(Component(spec))
        # FaceID checkpoints carry a LoRA: diffusers would apply it under a name that collides between two FaceID
        # checkpoints ("faceid_0") and leave it on for every mode, so it is split off here and handled apart.
        sources: list[Any] = []
        checkpoints: dict[int, dict] = {}
        for i, spec in enumerate(specs):
            if spec.uses_faces:
                full = self.source.checkpoint(spec)
                checkpoints[i] = full
                ip_layers = {k: v for k, v in full["ip_adapter"].items() if "_lora." not in k}
                sources.append({"image_proj": full["image_proj"], "ip_adapter": ip_layers})
            else:
                sources.append(self.source.resolve(spec.repo))
        pipe = base.pipe
        self.activate(base, None)
        first = specs[0].image_encoder
        if first is not None:  # so load_ip_adapter does not look for an image encoder of its own
            pipe.register_modules(image_encoder=self.encoder.tower(first)[0])
        try:
            pipe.load_ip_adapter(
                sources,
                subfolder=[s.subfolder for s in specs],
                weight_name=[s.weight_name for s in specs],
                local_files_only=self.source.local_only,
                **architecture(family.pipeline).ip_adapter_load_kwargs(),
            )
        except OSError as e:
            missing = " or ".join(s.id for s in specs)
            raise ModelNotAvailableError(missing, family.name, str(e)[:200]) from e
        for i, full in checkpoints.items():
            if specs[i].lora_weight > 0:
                self._load_lora(base, components[i], full)
        denoiser = base.denoiser
        adapter = LoadedAdapter(components, wrap_ip_processors(denoiser.attn_processors), denoiser.encoder_hid_proj)
        self._variants[name] = adapter
        self.counters["adapter_loads"] += 1
        base.active = ("loading",)  # the UNet now holds diffusers' processors: force the swap below
        self.activate(base, (name,))
        return adapter

    def _load_lora(self, base: LoadedBase, component: Component, checkpoint: dict) -> None:
        """Keep the LoRA inside a FaceID checkpoint as a PEFT adapter of its own (none when it has none)."""
        converted = base.denoiser._load_ip_adapter_loras([checkpoint])
        if not converted:
            log.warning("%s has no LoRA weights; lora_weight is ignored", component.spec.id)
            return
        component.lora = "faceid_" + component.spec.name.replace("-", "_")
        component.lora_state = converted[0]
        self._ensure_lora(base, component)

    @staticmethod
    def _ensure_lora(base: LoadedBase, component: Component) -> None:
        """Load the component's LoRA into `base`'s UNet (again after a base swap), from memory."""
        if component.lora not in base.loras:
            # load_lora_weights may consume the dict it gets: hand it a shallow copy
            base.pipe.load_lora_weights(dict(component.lora_state), adapter_name=component.lora)
            base.loras.add(component.lora)

    def activate(self, base: LoadedBase, key: Key | str | None, fast: bool = False) -> None:
        """Put combination `key` (None: no image prompt) on `base`'s UNet by swapping module references, with the
        LoRAs it needs: the FaceID LoRA whenever a face prompt is present, the few-step LoRA when `fast`."""
        key = (key,) if isinstance(key, str) else key
        adapter = self.get(base, key) if key is not None else None
        if key != base.active:
            unet = base.denoiser
            if adapter is None:
                processors, image_proj, hid_type = base.processors, None, None
            else:
                processors, image_proj, hid_type = adapter.processors, adapter.image_proj, "ip_image_proj"
            unet.encoder_hid_proj = image_proj
            unet.config.encoder_hid_dim_type = hid_type
            for layer_name, layer in base.layers.items():
                layer.set_processor(processors[layer_name])  # a Plus resampler's own attention layers keep theirs
            base.active = key
        loras = adapter.loras if adapter is not None else []
        wanted = tuple((c.lora, c.spec.lora_weight) for c in loras)
        if fast:
            wanted = (*wanted, (FAST_LORA, 1.0))
        if wanted != base.lora_state:  # PEFT walks every module: only when the LoRA setting really changes
            if wanted:
                for component in loras:
                    self._ensure_lora(base, component)
                if fast:
                    self._ensure_fast(base)
                base.pipe.enable_lora()
                base.pipe.set_adapters([n for n, _ in wanted], adapter_weights=[w for _, w in wanted])
            else:
                base.pipe.disable_lora()
            base.lora_state = wanted

    def _ensure_fast(self, base: LoadedBase) -> None:
        """The few-step LoRA on `base`'s base: read from disk once for all bases, then loaded from memory."""
        if FAST_LORA in base.loras:
            return
        spec = self.source.family.fast
        if self._fast_state is None:
            self._fast_state = self.source.lora_file(spec.repo, spec.weight_name)
            self.counters["fast_lora_reads"] += 1
        # load_lora_weights converts (and consumes) the dict it gets: hand it a shallow copy
        base.pipe.load_lora_weights(dict(self._fast_state), adapter_name=FAST_LORA)
        base.loras.add(FAST_LORA)

    def fast_scheduler(self, base: LoadedBase) -> Any:
        """Fast mode's scheduler for `base`, from the base's own config with the LoRA authors' settings."""
        if base.fast_scheduler is None:
            import diffusers

            spec = self.source.family.fast
            cls = getattr(diffusers, spec.scheduler)
            base.fast_scheduler = cls.from_config(base.scheduler.config, timestep_spacing=spec.timestep_spacing)
        return base.fast_scheduler

    def layer_weights(self, base: LoadedBase, variant: str, block_map: dict | None) -> dict[str, float] | None:
        """Each adapter layer's weight for an image prompt: its block map (InstantStyle), else its adapter's
        `layer_ramp` (first to last adapter layer, linearly: XLabs' recipe), else None (1.0 everywhere)."""
        if block_map is not None:
            return self.block_weights(base, block_map)
        ramp = self.source.family.adapters[variant.split("+")[0]].layer_ramp
        if ramp is None:
            return None
        return ramp_weights(self._variant(base, variant).processors, ramp)

    def block_weights(self, base: LoadedBase, block_map: dict | None) -> dict[str, float] | None:
        """An InstantStyle block map as a weight per attention processor of `base`'s UNet (cached)."""
        if block_map is None:
            return None
        key = block_map_key(block_map)
        if key not in self._block_weights:
            self._block_weights[key] = block_weights(base.denoiser, block_map)
        return self._block_weights[key]
