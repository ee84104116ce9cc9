"""Slot kinds: each image prompt of a request is prepared by its kind, once per request, and hands each denoising pass
its conditioning values (`pipelines/conditioning.py`).

The kind groups, one module each: IP-Adapter kinds acting in attention (`ip.py`: general, face, anime, style),
FLUX Redux tokens (`redux.py`), in-context references read by the base itself (`reference.py`: FLUX.2), and
structure (`structure.py`: ControlNet maps and a start image). `kind_of` is the
only place that decides which group a prompt belongs to; the runner sees a `Prepared` and never opens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from ..bases import LoadedBase
from ..conditioning import Guidance
from ..plan import Pass
from ..request import GenerationRequest, ImagePrompt
from .ip import AttentionKinds, AttentionShare
from .redux import ReduxEncoder, ReduxKind, ReduxShare
from .reference import ReferenceEncoder, ReferenceKind, ReferenceShare
from .structure import StructureBank, StructureShare

ATTENTION, REDUX, REFERENCE, STRUCTURE = "attention", "redux", "reference", "structure"


@dataclass
class Prepared:
    """A request's slot kinds, ready for its passes; the runner hands it to the writer and the passes unopened."""

    attention: AttentionShare
    redux: ReduxShare
    structure: StructureShare
    reference: ReferenceShare = field(default_factory=ReferenceShare)
    previews: list[Image.Image] = field(default_factory=list)

    def start_of(self, cell: tuple[float, ...]) -> float | None:
        return self.structure.start_of(cell)

    def for_pass(self, pipe: Any, cells: Sequence[tuple[float, ...]], run: Pass, guided: bool) -> tuple[Any, list]:
        """The pipeline that runs a pass on `pipe`'s modules, and the pass's conditioning values."""
        pipe, values = self.structure.for_pass(pipe, cells, run.start)
        values += self.attention.values(cells, run, guided) + self.redux.values(cells)
        return pipe, values + self.reference.values(cells, run)

    @property
    def image_prompts(self) -> int:
        """How many image prompts act in attention (the diagnostics' count)."""
        return len(self.attention.prompts)

    def ids(self) -> dict[int, str]:
        """The checkpoint that read each declared prompt (adapter, Redux, ControlNet), by declared index."""
        return {**self.attention.ids, **self.structure.ids, **self.redux.ids, **self.reference.ids}

    def metadata(self) -> dict[str, Any]:
        own = self.attention.metadata()
        adapters = own["adapters"] + [self.redux.ids[i] for i, _ in self.redux.tokens]
        adapters += [self.reference.ids[i] for i, *_ in self.reference.parts]
        return {"adapter": " + ".join(adapters) or None, "image_encoder": own["image_encoder"],
                "uses_faces": own["uses_faces"], "ramps": self.attention.ramps}  # fmt: skip

    def diagnostics(self, used: Any) -> dict[str, Any]:
        return {**self.structure.diagnostics(used), **self.attention.diagnostics(used)}


class SlotKinds:
    """The registry of a family's slot kinds, with the state they own (encoders' caches, ControlNets, maps)."""

    def __init__(
        self, family: Any, source: Any, arch: Any, encoder: Any, bank: Any, device: str, dtype: Any, counters: Any,
        cache_size: int,
    ) -> None:  # fmt: skip
        self.family = family
        self.attention = AttentionKinds(family, encoder, bank, device, dtype)
        self.redux = ReduxKind(family, ReduxEncoder(source, device, dtype, counters, cache_size))
        self.structure = StructureBank(source, arch, device, dtype, counters, cache_size)
        self.reference = ReferenceKind(family, ReferenceEncoder(arch, counters, cache_size))

    def kind_of(self, prompt: ImagePrompt) -> str:
        """Which group prepares `prompt`: the only kind dispatch."""
        return STRUCTURE if prompt.is_structure else self.variant_kind(prompt.variant)

    def variant_kind(self, variant: str) -> str:
        """Which group prepares the prompts of an adapter variant (a look kind's; "a+b": both act in attention)."""
        spec = self.family.adapters.get(variant.split("+")[0])
        embeds = spec.embeds if spec is not None else None
        return {"redux": REDUX, "reference": REFERENCE}.get(embeds, ATTENTION)

    def in_attention(self, variant: str) -> bool:
        """Whether a variant's prompts act in the denoiser's attention (an adapter to load and put on it)."""
        return self.variant_kind(variant) == ATTENTION

    def warnings(self, request: GenerationRequest) -> list[str]:
        """What the person should know of the request's slots before it runs."""
        declared = request.image_prompts
        if any(p.references for p in declared if self.kind_of(p) != STRUCTURE):
            return []
        structured = any(p.references for p in declared)
        end = "." if structured else " (a text-only image)."
        return ["No reference image was given: the strength had no effect" + end]

    def prepare(
        self, request: GenerationRequest, base: LoadedBase, scope: str, warnings: list[str], guidance: Guidance
    ) -> Prepared:
        """Every slot of `request`, prepared on `base`: maps, tokens, embeddings, previews; notes go to `warnings`."""
        declared = request.image_prompts
        settings = request.settings
        inputs = self.structure.inputs(declared, settings.width, settings.height, scope)
        structure = StructureShare(self.structure, declared, inputs)
        warnings += structure.notes
        acting = [i for i, p in enumerate(declared) if p.references and self.kind_of(p) != STRUCTURE]
        redux_at = [i for i in acting if self.kind_of(declared[i]) == REDUX]  # extra text tokens, no attention
        redux = self.redux.prepare(declared, redux_at, scope, guidance.true_cfg)
        reference_at = [i for i in acting if self.kind_of(declared[i]) == REFERENCE]  # read by the base itself
        reference = self.reference.prepare(declared, reference_at, base, scope)
        indices = [i for i in acting if i not in redux_at and i not in reference_at]
        if request.primary.negative_references and 0 not in indices:
            warnings.append("Negative images act against the tab's own references: add a reference to use them.")
        for n, slot in enumerate(request.slots, 1):
            if not slot.references:
                warnings.append(f"Added image prompt {n} ({slot.mode}) has no image: it had no effect.")
        attention = self.attention.prepare(request, base, indices, scope, warnings, guidance.true_cfg)
        previews = attention.previews + redux.previews + reference.previews + structure.previews
        return Prepared(attention, redux, structure, reference, previews)

    def views(self, request: GenerationRequest, variant: str, base: LoadedBase, scope: str) -> list[Image.Image]:
        """What each image prompt's encoder sees (the tab's own with `variant`), then each structure map."""
        views: list[Image.Image] = []
        for n, prompt in enumerate(request.image_prompts):
            chosen = replace(prompt, variant=variant if n == 0 else prompt.variant)
            kind = self.kind_of(chosen)
            if kind == REDUX:
                views += self.redux.views([chosen])
            elif kind == REFERENCE:
                views += self.reference.views(base, [chosen])
            elif kind == ATTENTION and (prompt.references or n == 0):
                views += self.attention.views(base, chosen, scope)
        settings = request.settings
        inputs = self.structure.inputs(request.image_prompts, settings.width, settings.height, scope)
        return views + StructureShare(self.structure, [], inputs).previews
