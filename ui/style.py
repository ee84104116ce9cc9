"""The Style tab (InstantStyle): the image prompt drives only the style layers, optionally the layout layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from pipelines.presets import ModePreset

from .tab import TabHandle, TabText, build_tab

if TYPE_CHECKING:
    from .endpoints import Studio

TEXT = TabText(
    title="Style",
    intro="Transfer the **style** of a reference (palette, brushwork, texture) but not its content: the image "
    "prompt acts only on the UNet's style layers (InstantStyle). Turn on layout to also carry its composition.",
    example_references=("painting", "ink", "mosaic"),
    reference_label="Style references",
    strength_label="Style strength",
    variant_labels={"plain": "IP-Adapter"},
)


def _extra(preset: ModePreset) -> dict[str, gr.components.Component]:
    return {"layout": gr.Checkbox(label="Style + layout (also drive the layout layers)", value=False)}


def create_demo(studio: Studio, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    return build_tab(studio, preset, TEXT, _extra)
