"""The Anime character tab: keep one character's look across new scenes (IP-Adapter Plus, optional Plus-Face)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from pipelines.presets import ModePreset

from .tab import TabHandle, TabText, build_tab

if TYPE_CHECKING:
    from .endpoints import Studio

BASE_LABELS = {"default": "Default base", "anime": "Anime fine-tune"}

TEXT = TabText(
    title="Anime character",
    intro="Keep a character's look (hair, eyes, outfit, palette) in new scenes and poses. IP-Adapter Plus reads "
    "fine detail from the reference; add a face close-up and choose Plus + Plus-Face to hold the face more "
    "closely (crop it yourself: face detectors do not see anime faces).",
    example_references=("character", "character-blue", "character-red"),
    reference_label="Character references (full figure or character sheet)",
    strength_label="Character strength",
    variant_labels={"plus": "IP-Adapter Plus", "plus+plus-face": "Plus + Plus-Face (needs a face close-up)"},
)


def _extra(preset: ModePreset) -> dict[str, gr.components.Component]:
    controls: dict[str, gr.components.Component] = {
        "face_reference": gr.Gallery(
            label="Face close-up (optional, for Plus + Plus-Face)",
            type="filepath",
            interactive=True,
            columns=4,
            height=140,
            elem_classes=["strip"],
            file_types=["image"],
            object_fit="contain",
        )
    }
    # The base is part of each request (and of its metadata): choosing one changes nobody else's images.
    controls["base"] = gr.Radio(
        label="Base model (for this request; the result says which one drew it)",
        choices=[(BASE_LABELS.get(b, b), b) for b in preset.bases],
        value="default",
        visible=len(preset.bases) > 1,
    )
    return controls


def create_demo(studio: Studio, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    return build_tab(studio, preset, TEXT, _extra)
