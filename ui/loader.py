"""Load settings: a PNG made here or a settings file fills whichever tab it belongs to (every slot included)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.parameters import MAX_SLOTS, SLOT_KEY_NAMES
from pipelines.presets import ModePreset
from pipelines.settings import FAST_IMPLIED, SETTINGS_KEYS, read_settings_file, validated_settings

from .common import IO_CONCURRENCY
from .serving import as_code, boundary
from .tab import SLOT_CONTROL_NAMES, TabHandle

SWEEPS = ("strengths", "extra_strengths")  # lists in settings files, comma-separated text on the page
SHORTHAND = {"mode": "extra_mode", "strength": "extra_strength", "variant": "extra_variant",
             "region": "extra_region", "start_at": "extra_start_at", "stop_at": "extra_stop_at"}  # fmt: skip


def slots_of(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The added image prompts a file describes: its `slots`, or (files made before slots) its `extra_*`."""
    if "slots" in settings:
        return list(settings["slots"])
    if settings.get("extra_mode") not in (None, "none"):
        return [{key: settings.get(name) for key, name in SHORTHAND.items()}]
    return []


def load_settings_panel(presets: dict[str, dict[str, ModePreset]], family: str, handles: list[TabHandle],
                        tabs: gr.Tabs) -> None:  # fmt: skip
    """The "Load settings" accordion and its endpoint `load_settings`."""
    with gr.Accordion("Load settings (a PNG made here, or a settings file)", open=False):
        settings_file = gr.File(label="Drop a PNG or .json", file_types=[".png", ".json"], type="filepath",
                                height=80)  # fmt: skip
        status = gr.Markdown()
    targets = [(h, name) for h in handles for name in h.controls
               if (name in SETTINGS_KEYS and name != "slots") or name in SLOT_CONTROL_NAMES]  # fmt: skip
    loaded = gr.JSON(visible=False)  # what the API returns; the page's controls are filled from it

    def load_settings(path: list[str]) -> tuple[str, dict]:
        """Read a PNG made here or a settings file: (a note for the person, the validated settings)."""
        if not path:
            raise gr.Error("Choose a PNG made here or a settings file.")
        mode, raw = read_settings_file(path[0])
        values = validated_settings(presets[mode][family], raw)  # this family's bounds; cleaned; sweeps parsed
        strengths = values.pop("strengths", None)  # a comparison grid PNG: its sweep
        extra_strengths = values.pop("extra_strengths", None)  # ... and a 2-D grid's columns
        shown = {name for h, name in targets if h.mode == mode and name in SETTINGS_KEYS and name not in SWEEPS}
        implied = set(FAST_IMPLIED) if values.get("speed") == "fast" else set()  # the LoRA's, not the sliders'
        missing = sorted(shown - set(values) - implied)
        slots = slots_of(values)
        note = f"Loaded **{mode}** settings (seed {values.get('seed', 'random')}). Add the images again."
        if slots:
            note += f" Added image prompts: {', '.join(str(s['mode']) for s in slots)}."
        if strengths:
            note += f" Comparison strengths: {', '.join(f'{v:g}' for v in strengths)}."
        if extra_strengths:
            note += f" Strengths of the first added prompt: {', '.join(f'{v:g}' for v in extra_strengths)}."
        if missing:
            note += f" Not in the file, left as they were: {', '.join(as_code(m) for m in missing)}."
        data = {"mode": mode, "settings": values, "strengths": strengths, "missing": missing}
        data["extra_strengths"] = extra_strengths
        return note, data

    def fill_controls(data: dict) -> list:
        """Put loaded settings into their tab's controls (every slot group too); other controls stay as they are."""
        mode = data["mode"]
        values = {**data["settings"], **{k: data.get(k) for k in SWEEPS}}
        for i in range(1, MAX_SLOTS + 1):
            slot = (slots_of(data["settings"]) + [{"mode": "none"}] * MAX_SLOTS)[i - 1]
            values.update({f"slot{i}_{key}": slot.get(key) for key in SLOT_KEY_NAMES if key != "images"})

        def value(h: TabHandle, name: str) -> object:
            if h.mode != mode or values.get(name) is None:
                return gr.skip()
            if name in SWEEPS:
                return ", ".join(f"{v:g}" for v in values[name])
            return values[name]

        return [gr.Tabs(selected=mode), *[value(h, name) for h, name in targets]]

    # A failed load raises before `.success`: the controls are left untouched (no error on each of them).
    settings_file.upload(
        boundary(load_settings, files={"path": "settings file"}), inputs=settings_file, outputs=[status, loaded],
        api_name="load_settings", **IO_CONCURRENCY,
    ).success(
        fill_controls, inputs=loaded, outputs=[tabs, *[h.controls[name] for h, name in targets]],
        api_visibility="private", queue=False,
    )  # fmt: skip
