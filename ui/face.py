"""The Consistent-face tab: IP-Adapter FaceID on insightface embeddings of one or more photos of a person."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import gradio as gr

from pipelines.presets import ModePreset

from .tab import TabHandle, TabText, build_tab

if TYPE_CHECKING:
    from .endpoints import Studio

LICENCE = (
    "**Licence:** the insightface models (`buffalo_l`) and the IP-Adapter FaceID weights are released for "
    "**non-commercial research use** only. Do not use this tab for commercial work."
)

TEXT = TabText(
    title="Consistent face",
    intro="New images of the same person in new scenes. insightface finds the face in each photo (the largest one "
    "if there are several) and gives its identity embedding; several photos of one person are averaged into one "
    "identity. Strength decides how strongly the identity is held.",
    reference_label="Photos of the person (one clearly visible face each)",
    strength_label="Identity strength",
    variant_labels={"faceid": "FaceID (identity only)", "faceid-plusv2": "FaceID Plus v2 (identity + face structure)"},
    notice=LICENCE,
    variant_only={"structure": ("faceid-plusv2",)},  # plain FaceID has no structure input
)


def _extra(preset: ModePreset) -> dict[str, gr.components.Component]:
    r = preset.structure
    return {
        "structure": gr.Slider(
            label="Structure (FaceID Plus v2: how much of the face's shape carries over)",
            minimum=r.min,
            maximum=r.max,
            step=r.step,
            value=r.default,
        )
    }


def create_demo(studio: Studio, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    # The drawn example face is found by the offline detector only; real detectors need a real photo.
    text = (
        TEXT
        if studio.family.source == "hub"
        else replace(TEXT, example_references=("face", "face-green-eyes", "face-small"))
    )
    return build_tab(studio, preset, text, _extra)
