"""The Anime character tab: keep one character's look across new scenes (IP-Adapter Plus, optional Plus-Face)."""

from __future__ import annotations

import gradio as gr

from pipelines.engine import Engine
from pipelines.presets import ModePreset

from .common import GPU_CONCURRENCY_ID, user_errors
from .tab import TabHandle, TabText, build_tab

TEXT = TabText(
    intro="Keep a character's look (hair, eyes, outfit, palette) in new scenes and poses. IP-Adapter Plus reads "
    "fine detail from the reference; add a face close-up and choose Plus + Plus-Face to hold the face more "
    "closely (crop it yourself: face detectors do not see anime faces).",
    example_references=("character",),
    reference_label="Character references (full figure or character sheet)",
    strength_label="Character strength",
    variant_labels={"plus": "IP-Adapter Plus", "plus+plus-face": "Plus + Plus-Face (needs a face close-up)"},
)


def _extra(preset: ModePreset) -> dict[str, gr.components.Component]:
    return {
        "face_reference": gr.Gallery(
            label="Face close-up (optional, for Plus + Plus-Face)",
            type="filepath",
            interactive=True,
            columns=4,
            height=140,
            file_types=["image"],
        )
    }


def _base_switcher(engine: Engine) -> None:
    """Swap the base model (for all tabs and users), once, with progress."""
    with gr.Accordion("Base model (applies to every tab and user)", open=False):
        base = gr.Radio(label="Base", choices=list(engine.family.bases), value=engine.base_name)
        switch = gr.Button("Switch base model")
        status = gr.Markdown(f"In use: **{engine.base_name}** (`{engine.family.bases[engine.base_name]}`)")

    @user_errors
    def set_base(base: str, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - Gradio's injection
        progress(0, desc=f"Loading the {base} base model")
        engine.use_base(base)
        return f"In use: **{engine.base_name}** (`{engine.family.bases[engine.base_name]}`)"

    switch.click(
        set_base, inputs=base, outputs=status, api_name="set_base", concurrency_id=GPU_CONCURRENCY_ID,
        concurrency_limit=1,
    )  # fmt: skip


def create_demo(engine: Engine, preset: ModePreset) -> TabHandle:
    """The tab's UI; runs alone with `create_demo(...).demo.launch()`."""
    footer = (lambda: _base_switcher(engine)) if len(engine.family.bases) > 1 else None
    return build_tab(engine, preset, TEXT, _extra, footer)
