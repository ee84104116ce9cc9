"""The General tab: IP-Adapter (plain or Plus) on one or more reference images."""

from __future__ import annotations

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
    variant_labels={"plain": "IP-Adapter (colour, texture, composition)", "plus": "IP-Adapter Plus (finer detail)"},
)


def create_demo(studio: Studio, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    return build_tab(studio, preset, TEXT)
