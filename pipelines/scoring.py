"""Scored comparisons: how much of the reference each cell kept, how well it follows the prompt, and a suggestion.

The measures of the IP-Adapter paper, on the models the app already has:
- `likeness` (CLIP-I): the cosine between the CLIP image embedding of the image and that of each reference of the
  tab's own image prompt, averaged over the references; the image encoder is the adapters' own (OpenCLIP ViT-H/14);
- `adherence` (CLIP-T): the cosine between the image embedding and the text embedding of the person's prompt, from
  the text half of the same CLIP model (loaded on first use); null without a prompt;
- `identity` (face prompts): the ArcFace cosine between the image's largest face and the reference identity, through
  the same insightface pack; null, with a note, when the image shows no face;
- `extra_likeness` / `extra_identity`: the same for the first added image prompt (`slot2_likeness`, ... for
  the others).

Every image is seen centre-cropped to a square (the encoder's own preprocessing), references too, so an image scored
against itself has likeness 1. A sweep's cells and any reference not yet embedded go through the encoder together,
in one call.

The suggested strength (`suggest`): each measure that changes with the swept strengths (the swept prompts'
`identity`, else their `likeness`, and `adherence`) is rescaled over the cells to [0, 1] (0 = the cell that keeps the
least of it, 1 = the most); a cell's balance is the smallest of its rescaled measures, and the suggestion is the cell
with the largest balance (ties: the lowest strengths). With likeness rising and adherence falling, that is where the
two curves cross: as much of the reference as the prompt allows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .errors import ModelNotAvailableError
from .images import ReferenceImage, square_for_encoder

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from .encoder import ImagePromptEncoder
    from .request import GenerationRequest
    from .sources import ModelSource

RULE = (
    "balance: each measure that changes with the swept strengths (identity for faces, else likeness; and adherence) "
    "rescaled over the cells to [0, 1]; the cell whose smallest rescaled measure is largest (ties: lower strengths)"
)
DIGITS = 4  # scores are reported to 4 decimals
# Below this spread (max - min over the cells, cosine units) a measure does not tell the cells apart: CLIP and
# ArcFace cosines of one picture drawn twice with other seeds differ by about this much. When no measure spreads
# more, nothing is suggested ("too close to call").
MIN_SPREAD = 0.02
_WORDS = {"likeness": "likeness", "identity": "identity", "adherence": "adherence to the prompt"}


class Scorer:
    """Scores images against a request's references and prompt; the text tower loads on first use."""

    def __init__(self, source: ModelSource, encoder: ImagePromptEncoder, counters: Counter[str]) -> None:
        self.source = source
        self.encoder = encoder
        self.counters = counters  # encoder_calls, score_text_calls, face detections (the engine's counter)
        self._text: tuple[CLIPTextModelWithProjection, CLIPTokenizer] | None = None

    @property
    def text_loaded(self) -> bool:
        """Whether the text tower is in memory (it loads on the first scored comparison)."""
        return self._text is not None

    @property
    def available(self) -> bool:
        return self.source.family.scoring is not None

    def text_tower(self) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
        """The text half of the adapters' CLIP model (half precision on a GPU), loaded once."""
        if self._text is None:
            from transformers import AutoConfig, CLIPTextModelWithProjection, CLIPTokenizer

            repo = self.source.family.scoring.text_encoder
            # The checkpoint is a whole CLIP model: its shared embedding size is the top-level `projection_dim`; the
            # text part of such a config may carry the default (512) instead, so the text tower is told explicitly.
            whole = self.source.from_pretrained(AutoConfig.from_pretrained, repo)
            model = self.source.from_pretrained(
                CLIPTextModelWithProjection.from_pretrained, repo, dtype=self.encoder.dtype,
                projection_dim=whole.projection_dim,
            )  # fmt: skip
            model.to(self.encoder.device).eval()
            tokenizer = self.source.from_pretrained(CLIPTokenizer.from_pretrained, repo)
            self._text = (model, tokenizer)
        return self._text

    def _text_embedding(self, text: str) -> torch.Tensor:
        model, tokenizer = self.text_tower()
        tokens = tokenizer([text], padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                           return_tensors="pt")  # fmt: skip
        self.counters["score_text_calls"] += 1
        with torch.inference_mode():
            out = model(input_ids=tokens.input_ids.to(self.encoder.device)).text_embeds  # (1, D)
        return _unit(out.float())[0]

    def _image_embeddings(
        self, images: Sequence[Image.Image], groups: Sequence[Sequence[ReferenceImage]], scope: str
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(n, D) unit embeddings of `images`, and (m, D) of each group of references: one encoder call for the
        images and every reference not embedded before."""
        spec = self.source.family.scoring.image_encoder
        model, processor = self.encoder.tower(spec)
        key = lambda r: (scope, spec, "score", r.sha256)  # noqa: E731 - one key for lookup and store
        missing = list({r.sha256: r for g in groups for r in g if self.encoder.cache.get(key(r)) is None}.values())
        squares = [square_for_encoder(img.convert("RGB"), "center") for img in images]
        squares += [square_for_encoder(r.image, "center") for r in missing]
        pixels = processor(images=squares, return_tensors="pt").pixel_values.to(self.encoder.device, self.encoder.dtype)
        self.counters["encoder_calls"] += 1
        with torch.inference_mode():
            embeds = _unit(model(pixels).image_embeds.float())
        for r, e in zip(missing, embeds[len(images) :], strict=True):
            self.encoder.cache.put(key(r), e)
        found = {r.sha256: e for r, e in zip(missing, embeds[len(images) :], strict=True)}
        groups_out = [
            torch.stack([found.get(r.sha256, self.encoder.cache.get(key(r))) for r in g]) if g else embeds[:0]
            for g in groups
        ]
        return embeds[: len(images)], groups_out

    def score_cells(
        self, images: Sequence[Image.Image], request: GenerationRequest, scope: str, warnings: list[str]
    ) -> tuple[list[dict[str, float | None]], float]:
        """A sweep's cells scored in one batched encoder pass, and the seconds it took; a missing scoring model
        leaves the images standing without their scores (and says so in `warnings`)."""
        scored_at, scores = time.perf_counter(), []
        try:
            scores, notes = self.score(images, request, scope)
            warnings += notes
        except ModelNotAvailableError as e:
            warnings.append(f"The cells were not scored: {e}")
        return scores, round(time.perf_counter() - scored_at, 4)

    def score(
        self, images: Sequence[Image.Image], request: GenerationRequest, scope: str = ""
    ) -> tuple[list[dict[str, float | None]], list[str]]:
        """Each image's scores against `request`'s references and prompt, and notes for the person."""
        if not self.available:
            raise ValueError(f"model family {self.source.family.name!r} has no scoring models")
        prompts = request.image_prompts
        groups = [p.references for p in prompts]
        cells, refs = self._image_embeddings(images, groups, scope)
        out: list[dict[str, float | None]] = [{} for _ in images]
        notes: list[str] = []
        for n, (prompt, group_embeds) in enumerate(zip(prompts, refs, strict=True)):
            prefix = "" if n == 0 else "extra_" if n == 1 else f"slot{n}_"  # slot 1 keeps the extra_* names
            likeness = (cells @ group_embeds.T).mean(dim=1) if len(group_embeds) else None
            for i, row in enumerate(out):
                row[f"{prefix}likeness"] = _round(likeness[i]) if likeness is not None else None
            if n == 0:
                text = self._text_embedding(request.settings.prompt) if request.settings.prompt else None
                for i, row in enumerate(out):
                    row["adherence"] = _round(cells[i] @ text) if text is not None else None
                if text is None:
                    notes.append("The prompt is empty: adherence is not scored.")
            if prompt.mode == "face" and prompt.references:
                identities, missing = self._identities(images, prompt.references, scope)
                for row, value in zip(out, identities, strict=True):
                    row[f"{prefix}identity"] = value
                if missing:
                    what = "the image" if len(images) == 1 else f"{missing} of {len(images)} cells"
                    notes.append(f"No face was found in {what}: {prefix}identity is null there.")
        return out, notes

    def _identities(
        self, images: Sequence[Image.Image], references: Sequence[ReferenceImage], scope: str
    ) -> tuple[list[float | None], int]:
        from .face import identity

        analyzer = self.encoder.face_analyzer()
        results, _ = analyzer.analyze(references, scope=scope)
        reference = identity(results)
        values: list[float | None] = []
        for img in images:
            found = analyzer.largest_embedding(img)
            values.append(None if found is None else _round(float(np.dot(found, reference))))
        return values, sum(v is None for v in values)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _round(value: Any) -> float:
    return round(float(value), DIGITS)


def suggest(cells: Sequence[dict[str, Any]], swept: Sequence[str] = ("",)) -> dict[str, Any] | None:
    """The suggested cell of a scored sweep (see the module's docstring), or None when nothing was scored.

    `cells`: each cell's `strength` (and `extra_strength`) with its scores; `swept`: the prefixes of the prompts
    whose strength varies ("" the tab's own, "extra_" the extra one).
    """
    if not cells:
        return None
    measures = []
    for prefix in swept:
        for name in (f"{prefix}identity", f"{prefix}likeness"):
            if all(c.get(name) is not None for c in cells):
                measures.append(name)
                break
    if all(c.get("adherence") is not None for c in cells):
        measures.append("adherence")
    if not measures:
        return None
    spreads = {name: float(np.ptp([c[name] for c in cells])) for name in measures}
    if all(spread < MIN_SPREAD for spread in spreads.values()):
        return {"index": None, "strength": None, "balance": None, "measures": measures, "rule": RULE,
                "sentence": f"Too close to call: the scores change by less than {MIN_SPREAD} across these "
                "strengths, so no cell is marked."}  # fmt: skip
    rescaled = []
    for name in measures:
        values = np.array([c[name] for c in cells], dtype=np.float64)
        span = values.max() - values.min()
        rescaled.append((values - values.min()) / span if span > 0 else np.ones_like(values))
    balance = np.min(np.stack(rescaled), axis=0)
    order = sorted(
        range(len(cells)),
        key=lambda i: (
            -round(float(balance[i]), 9),
            cells[i].get("strength", 0) + (cells[i].get("extra_strength") or 0),
        ),
    )
    best = order[0]
    out = {"index": best, "strength": cells[best].get("strength")}
    if "extra_strength" in cells[best]:
        out["extra_strength"] = cells[best]["extra_strength"]
    out.update({"balance": round(float(balance[best]), DIGITS), "measures": measures, "rule": RULE})
    where = f"{out['strength']:g}" + (f" × {out['extra_strength']:g}" if "extra_strength" in out else "")
    what = " and ".join(dict.fromkeys(_WORDS.get(m.removeprefix("extra_"), m) for m in measures))
    out["sentence"] = f"Suggested: {where} - {what} balance best here."
    return out
