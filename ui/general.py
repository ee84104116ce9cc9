"""The General tab: IP-Adapter (plain or Plus) on one or more reference images."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pipelines.presets import ModePreset

from .tab import TabHandle, TabText, build_tab

if TYPE_CHECKING:
    from .endpoints import Studio

TEXT = TabText(
    title="General",
    intro="Carry the colour, texture and composition of a reference into a new image. "
    "Around 0.5 the colour and texture come through while the shape does not.",
    example_references=("gold", "tiles", "sunset"),
    reference_label="Reference images (several are combined into one image prompt)",
    strength_label="Strength (how much of the reference carries over)",
    variant_labels={
        "plain": "IP-Adapter (colour, texture, composition)",
        "plus": "IP-Adapter Plus (finer detail)",
        "xlabs": "XLabs IP-Adapter v2 (FLUX)",
        "redux": "FLUX Redux (the reference as prompt tokens)",
    },
)


FLUX_LICENCE = (
    "*FLUX.1 [dev] and the XLabs IP-Adapter are for non-commercial use (the FLUX.1 [dev] Non-Commercial License); "
    "images made with them too. Check their model cards before any other use.*"
)


def create_demo(studio: Studio, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    text = replace(TEXT, notice=FLUX_LICENCE) if preset.pipeline == "flux" else TEXT
    return build_tab(studio, preset, text)
