"""The layout every mode shares, as parts: control groups, the result and comparison panels, and their events.

A mode module supplies its labels and any controls of its own. Every control is named after the API keyword it
feeds (`pipelines/parameters.py`); the page's "Add an image prompt" groups (`slot1_mode`, `slot1_images`, ...)
are folded into the API's `slots` / `slot_images`. The page's buttons and the named API endpoints run the same
module-level functions (`ui/endpoints.py`) over a narrow `Studio` interface, never the engine itself.
"""

from __future__ import annotations

import html
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.context import Context

from pipelines.parameters import BY_NAME, MAX_SLOTS, defaults, parameters_for
from pipelines.presets import (
    CROP_MODES,
    REGIONS,
    STRUCTURE_KINDS,
    ModePreset,
    mode_texts,
    preset_for,
    slot_kinds,
    structure_texts,
)

from . import endpoints
from .common import GPU_CONCURRENCY_ID, IO_CONCURRENCY, on_gpu
from .endpoints import FILE_INPUTS, Studio
from .examples import reference_path
from .serving import as_code, boundary, uploaded_image
from .stop import JOBS

CROP_LABELS = {"center": "Centre crop", "pad": "Pad to square", "squash": "Squash to square"}
# Each slot kind as a person reads it: data (each mode file's [default], presets/structure.toml).
SLOT_LABELS = {"none": "Nothing", **mode_texts("label"), **structure_texts("label")}
STRENGTH_INFO = {**mode_texts("info"), **structure_texts("info")}
CONTROL_TYPE_LABELS = {"canny": "Edges (Canny)", "depth": "Depth", "pose": "Pose skeleton (OpenPose)",
                       "scribble": "Scribble / soft edges", "lineart": "Line art", "normal": "Normal map",
                       "segment": "Segmentation"}  # fmt: skip
REGION_LABELS = {"whole": "Whole image", "left": "Left half", "right": "Right half", "top": "Top half",
                 "bottom": "Bottom half"}  # fmt: skip
VARIANT_LABELS = {  # every adapter variant, as a person reads it (the tabs' own radios and the slots' dropdowns)
    "plain": "IP-Adapter (colour, texture, composition)", "plus": "IP-Adapter Plus (finer detail)",
    "faceid": "FaceID (identity only)", "faceid-plusv2": "FaceID Plus v2 (identity + face structure)",
    "plus+plus-face": "Plus + Plus-Face (needs a face close-up)", "xlabs": "XLabs IP-Adapter v2 (FLUX)",
    "redux": "FLUX Redux (the reference as prompt tokens)",
    "reference": "In context (the model reads the references itself)",
}  # fmt: skip
ExtraControls = Callable[[ModePreset], dict[str, gr.components.Component]]
PRIVATE = {"api_visibility": "private", "queue": False}
COMPARE_OUTPUTS = ("cells", "ab", "grid_file", "used_seed", "compare_diagnostics", "metadata", "scores", "suggested",
                   "plot", "sweep_settings")  # fmt: skip
GPU = {"concurrency_id": GPU_CONCURRENCY_ID, "concurrency_limit": 1}


@dataclass
class TabHandle:
    """A built tab: its controls by name (API keywords, and the slot groups' `slot<i>_<key>`)."""

    controls: dict[str, gr.components.Component]
    mode: str


@dataclass(frozen=True)
class TabText:
    """What a mode says about itself in the UI."""

    title: str  # the tab's name, as endpoints describe themselves ("General: draw one image ...")
    intro: str
    reference_label: str
    strength_label: str
    variant_labels: dict[str, str] = field(default_factory=dict)
    notice: str | None = None  # e.g. a licence notice
    # Controls that matter only for some variants: hidden for the others (e.g. structure: FaceID Plus only).
    variant_only: dict[str, tuple[str, ...]] = field(default_factory=dict)
    example_references: tuple[str, ...] = ()  # names of ui.examples drawings, paired with the preset's prompts


def slot_names(i: int) -> list[str]:
    """The page's controls of slot group `i` (1-based)."""
    return [f"slot{i}_{key}" for key in SLOT_GROUP_KEYS]


SLOT_GROUP_KEYS = ("mode", "images", "strength", "variant", "region", "start_at", "stop_at", "crop", "control_type")


SLOT_CONTROL_NAMES = [n for i in range(1, MAX_SLOTS + 1) for n in slot_names(i)]


def build_tab(
    studio: Studio,
    preset: ModePreset,
    text: TabText,
    extra: ExtraControls | None = None,
    footer: Callable[[], None] | None = None,
) -> TabHandle:
    """The mode's UI and its endpoints `<mode>`, `<mode>_compare`, `<mode>_preview`, `<mode>_score`, `_settings`."""
    # Alone, a tab is its own Blocks; inside the app, a Column: every Blocks builds a whole web app when it closes
    # (about 0.15 s each in Gradio 6), which four nested tabs would repeat for nothing.
    with gr.Blocks() if Context.root_block is None else gr.Column():
        gr.Markdown(preset.intro or text.intro)
        if text.notice:
            gr.Markdown(text.notice)
        if studio.family.notice:  # the family's licence, in each of its tabs
            gr.Markdown(f"*{studio.family.notice}*")
        with gr.Row():
            with gr.Column():
                c = prompt_group(preset, text, extra)
                c.update(slot_groups(preset))
                c.update(speed_control(preset))
                with gr.Row():
                    buttons = {
                        "run": gr.Button("Start drawing", variant="primary", scale=4),
                        "stop": gr.Button("Stop", variant="stop", scale=1, elem_id=f"{preset.mode}-stop"),
                    }
                settings = settings_group(preset, c)
            with gr.Column():
                out = result_panel(preset.mode)
                out.update(compare_panel(preset, c))
        examples_column = gr.Column()
        api = hidden_api_inputs(preset, c)
        wire_endpoints(studio, preset, text, c, api, out, {**buttons, **settings})
        wire_helpers(preset, text, c, out, settings)
        with examples_column:
            render = on_gpu(lambda values: endpoints.single(studio, preset, values, None)[0],
                            endpoints.gpu_time(studio, preset, 1))  # fmt: skip
            _examples(preset, text, c, out["result"], render)
        if footer is not None:
            footer()  # more UI of the mode's own, inside this tab
    return TabHandle(c, preset.mode)


# ------------------------------------------------------------------------------------------- control groups


def prompt_group(preset: ModePreset, text: TabText, extra: ExtraControls | None) -> dict[str, Any]:
    """The prompt, the tab's own image prompt (references, strength, adapter) and the mode's own controls."""
    d = defaults(preset)
    c: dict[str, Any] = {"prompt": gr.Textbox(label="Prompt", lines=2, placeholder="What to draw")}
    c["reference"] = gr.Gallery(
        label=text.reference_label, type="filepath", interactive=True, columns=4, height=200, file_types=["image"],
        object_fit="contain", elem_id=f"{preset.mode}-reference", elem_classes=["strip"],
    )  # fmt: skip
    c["strength"] = gr.Slider(label=text.strength_label, minimum=preset.strength.min, maximum=preset.strength.max,
                              step=preset.strength.step, value=d["strength"])  # fmt: skip
    labels = {**VARIANT_LABELS, **text.variant_labels}
    c["variant"] = gr.Radio(label="Adapter", choices=[(labels.get(v, v), v) for v in preset.variants],
                            value=d["variant"], visible=len(preset.variants) > 1)  # fmt: skip
    if extra is not None:
        c.update(extra(preset))
    for name, variants in text.variant_only.items():
        c[name].visible = preset.variant in variants
    c["region"] = gr.Radio(label="This tab's image prompt acts on", value=d["region"],
                           choices=[(REGION_LABELS[r], r) for r in REGIONS])  # fmt: skip
    return c


def slot_groups(preset: ModePreset) -> dict[str, Any]:
    """ "Add an image prompt": up to three groups, each a face, a style or a general reference of its own."""
    c: dict[str, Any] = {}
    groups = []
    with gr.Accordion("Add an image prompt (a face, a style, another reference) or structure (edges, depth, a pose, a "
                      "start image): up to three", open=False):  # fmt: skip
        for i in range(1, MAX_SLOTS + 1):
            with gr.Group(visible=i == 1, elem_id=f"{preset.mode}-slot{i}") as group:
                c.update(_slot_group(preset, i))
            groups.append(group)
    # The next group shows once this one is in use (a loaded file sets the kinds: its groups show too).
    for i in range(1, MAX_SLOTS):
        c[f"slot{i}_mode"].change(lambda kind, nxt: gr.update(visible=kind != "none" or nxt != "none"),
                                  inputs=[c[f"slot{i}_mode"], c[f"slot{i + 1}_mode"]], outputs=groups[i],
                                  **PRIVATE)  # fmt: skip
    return c


def _slot_group(preset: ModePreset, i: int) -> dict[str, Any]:
    kinds = {m: preset_for(m, preset.family) for m in slot_kinds(preset.family)}
    n = dict(zip(SLOT_GROUP_KEYS, slot_names(i), strict=True))
    general = kinds["general"]
    c: dict[str, Any] = {}
    c[n["mode"]] = gr.Radio(label=f"Image prompt {i + 1}", value="none", elem_id=f"{preset.mode}-slot{i}-mode",
                            choices=[(SLOT_LABELS[m], m) for m in ("none", *kinds)])  # fmt: skip
    c[n["images"]] = gr.Gallery(
        label="Its images", type="filepath", interactive=True, columns=4, height=140, file_types=["image"],
        object_fit="contain", elem_id=f"{preset.mode}-slot{i}-images", elem_classes=["strip"],
    )  # fmt: skip
    c[n["strength"]] = gr.Slider(
        label="Its strength", minimum=min(k.strength.min for k in kinds.values()),
        maximum=max(k.strength.max for k in kinds.values()), step=general.strength.step,
        value=general.strength.default,
    )  # fmt: skip
    # Its choices follow the kind; any value is let through (the request says which are valid), so a preview
    # queued while the choices change never trips Gradio's own check.
    c[n["variant"]] = gr.Dropdown(label="Its adapter", choices=[("That kind's default", "")], value="",
                                  allow_custom_value=True)  # fmt: skip
    types = kinds["control"].control_types if "control" in kinds else ()
    c[n["control_type"]] = gr.Dropdown(label="What its map shows", value=types[0] if types else None, visible=False,
                                       choices=[(CONTROL_TYPE_LABELS.get(t, t), t) for t in types],
                                       elem_id=f"{preset.mode}-slot{i}-control-type")  # fmt: skip
    with gr.Row():
        c[n["region"]] = gr.Radio(label="It acts on", choices=[(REGION_LABELS[r], r) for r in REGIONS], value="whole")
        c[n["crop"]] = gr.Radio(label="Its non-square images", choices=[(CROP_LABELS[m], m) for m in CROP_MODES],
                                value=general.crop)  # fmt: skip
    with gr.Row():
        c[n["start_at"]] = gr.Slider(label="It starts at (share of the steps)", minimum=0.0, maximum=1.0, step=0.05,
                                     value=0.0)  # fmt: skip
        c[n["stop_at"]] = gr.Slider(label="It stops at", minimum=0.0, maximum=1.0, step=0.05, value=1.0)
    return c


def speed_control(preset: ModePreset) -> dict[str, Any]:
    fast = preset.fast
    choices = [("Quality (the steps and guidance below)", "quality")]
    if fast is not None:
        choices.append((f"Fast ({fast.steps} steps, few-step LoRA, no guidance)", "fast"))
    return {"speed": gr.Radio(label="Speed", value="quality", visible=fast is not None, choices=choices,
                              elem_id=f"{preset.mode}-speed")}  # fmt: skip


def settings_group(preset: ModePreset, c: dict[str, Any]) -> dict[str, Any]:
    """The Settings accordion: negative prompt, seed, sampling, size, negative images, window, crop; its buttons."""
    d, mode, b = defaults(preset), preset.mode, {}
    with gr.Accordion("Settings", open=False):
        c["negative_prompt"] = gr.Textbox(label="Negative prompt", value=d["negative_prompt"], lines=2)
        with gr.Row():
            c["seed"] = gr.Number(label="Seed (-1 = random)", value=d["seed"], precision=0)
            b["random_seed"] = gr.Button("🎲 Random", scale=0)
            b["reuse_seed"] = gr.Button("♻️ Reuse last", scale=0)
        for name, label in (("steps", "Steps"), ("guidance", "Guidance")):
            r = getattr(preset, name)  # a fixed value (min = max: a model that reads none) is not shown
            c[name] = gr.Slider(label=label, minimum=r.min, maximum=max(r.max, r.min + r.step), step=r.step,
                                value=d[name], elem_id=f"{mode}-{name}", visible=r.max > r.min)  # fmt: skip
        budget = (
            f"width x height at most {preset.max_pixels:,} pixels (about {int(preset.max_pixels**0.5)}²): "
            "moving one lowers the other when needed"
        )  # where the budget acts, said where it acts
        with gr.Row():
            for name, label in (("width", "Width"), ("height", "Height")):
                r = getattr(preset, name)
                c[name] = gr.Slider(label=label, minimum=r.min, maximum=r.max, step=r.step, value=d[name], info=budget)
        c["negative_reference"] = gr.Gallery(
            label="Negative images (a look that should NOT carry over)", type="filepath", interactive=True,
            columns=4, height=120, file_types=["image"], object_fit="contain", elem_classes=["strip"],
        )  # fmt: skip
        with gr.Row():
            c["start_at"] = gr.Slider(
                label="Start at (share of the steps before the image prompt acts)", minimum=0.0, maximum=1.0,
                step=preset.stop_at.step, value=d["start_at"],
            )  # fmt: skip
            c["stop_at"] = gr.Slider(
                label="Stop at (share of the steps after which it stops)", minimum=preset.stop_at.min,
                maximum=preset.stop_at.max, step=preset.stop_at.step, value=d["stop_at"],
            )  # fmt: skip
        c["crop"] = gr.Radio(label="Non-square references", choices=[(CROP_LABELS[m], m) for m in CROP_MODES],
                             value=d["crop"])  # fmt: skip
        b["preview"] = gr.Button("Show what the adapter sees")
        with gr.Row():
            b["defaults"] = gr.Button("Reset to the preset")
            b["settings"] = gr.Button("Download settings")
        b["settings_file"] = gr.File(label="Settings file (load it with 'Load settings' at the top)", height=80)
    return b


def result_panel(mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["result"] = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                             elem_id=f"{mode}-result")  # fmt: skip
    # Shown once there is one (an empty number box would read "0").
    out["used_seed"] = gr.Number(label="Seed used", precision=0, interactive=False, visible=False,
                                 elem_id=f"{mode}-seed-used")  # fmt: skip
    out["diagnostics"] = gr.Markdown(label="diagnostics")
    # The last error of a run on this page stays here until the next run (instead of a toast that vanishes and a
    # red "Error" on every output box); the API raises it as before.
    out["error"] = gr.Markdown(elem_id=f"{mode}-error", elem_classes=["run-error"])
    out["preview"] = gr.Gallery(label="What the adapters see (then each structure map)", columns=4, height="auto",
                                interactive=False, elem_classes=["strip"], object_fit="contain",
                                elem_id=f"{mode}-preview")  # fmt: skip
    return out


def compare_panel(preset: ModePreset, c: dict[str, Any]) -> dict[str, Any]:
    """Compare strengths (a 1-D or 2-D sweep, scored) and score any image; the metadata view."""
    mode, out = preset.mode, {}
    with gr.Accordion("Compare strengths (same seed, one batched pass)", open=False):
        c["strengths"] = gr.Textbox(label="Strengths (comma-separated; two give an A/B slider)",
                                    value=", ".join(f"{s:g}" for s in preset.compare))  # fmt: skip
        c["extra_strengths"] = gr.Textbox(
            label="Strengths of the first added image prompt (optional: a grid of every pair, one row per strength)",
            placeholder="e.g. 0, 0.5, 1 (needs 'Add an image prompt')", value="",
        )  # fmt: skip
        with gr.Row():
            out["compare"] = gr.Button("Compare strengths", scale=4)
            out["compare_stop"] = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{mode}-compare-stop")
        out["cells"] = gr.Gallery(label="Comparison (the strength under each cell)", columns=5, height="auto",
                                  elem_classes=["fit-rows"],
                                  interactive=False, elem_id=f"{mode}-cells", object_fit="contain")  # fmt: skip
        out["ab"] = gr.ImageSlider(label="A/B", type="filepath", visible=False)
        out["grid_file"] = gr.File(label="Grid PNG (with the metadata of the whole sweep)")
        out["compare_diagnostics"] = gr.Markdown(label="compare_diagnostics")
        out["suggestion"] = gr.Markdown(elem_id=f"{mode}-suggested")  # the suggestion, in a sentence
        out["plot"] = gr.Image(
            label="Scores against strength", show_label=False, type="filepath", format="png", interactive=False,
            elem_id=f"{mode}-plot",
        )  # fmt: skip
        with gr.Accordion("Scores of every cell, and the suggestion's numbers", open=False):
            out["suggested"] = gr.JSON(label="Suggested strength")
            out["scores"] = gr.JSON(label="scores")
        out["sweep_settings"] = gr.File(label="Settings of the sweep (JSON, with its scores)")
        with gr.Accordion("Score an image (any image, made here or elsewhere)", open=False):
            c["image"] = uploaded_image(label="Image to score", type="filepath", format="png")
            out["score"] = gr.Button("Score it against the references and prompt")
            out["image_scores"] = gr.JSON(label="Its scores")
    with gr.Accordion("Metadata (also stored in the PNG)", open=False, elem_id=f"{mode}-metadata"):
        out["metadata"] = gr.JSON(label="image_prompt")
    return out


def hidden_api_inputs(preset: ModePreset, c: dict[str, Any]) -> dict[str, Any]:
    """The API keywords the page has no control of its own for (`slots`, `slot_images` and the `extra_*`
    shorthand): hidden inputs of the named endpoints, holding their defaults."""
    d, api = defaults(preset), {}
    names = {n for role in ("single", "compare", "score") for n in parameters_for(preset.mode, role)} - set(c)
    for name in sorted(names, key=list(BY_NAME).index):
        kind = BY_NAME[name].kind
        if kind == "images":
            api[name] = gr.Gallery(visible=False, type="filepath", file_types=["image"], label=name)
        elif kind == "slots":
            api[name] = gr.JSON(visible=False, value=[], label=name)
        elif kind == "number":
            api[name] = gr.Number(visible=False, value=d[name], label=name)
        else:
            api[name] = gr.Textbox(visible=False, value=d[name], label=name)
    return api


# --------------------------------------------------------------------------------------------------- events


def endpoint(
    names: list[str], body: Callable[[dict[str, Any], Any], Any], api_name: str = "endpoint", summary: str = ""
) -> Callable[..., Any]:
    """A function whose signature is `names` (+ progress): Gradio names the API parameters after it.

    `api_name` and `summary` become its name and docstring: what API pages and MCP clients show for the tool.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        values = dict(signature.bind(*args, **kwargs).arguments)
        progress = values.pop("progress", None)
        return body(values, progress)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    signature = inspect.Signature(params)
    call.__signature__ = signature  # type: ignore[attr-defined] - inspect reads it; type checkers do not know it
    call.__name__ = call.__qualname__ = api_name
    args = "\n".join(f"    {n}: {BY_NAME[n].doc}" for n in names if n in BY_NAME)
    call.__doc__ = f"{summary}\n\nArgs:\n{args}\n" if summary else None
    return boundary(call, files={n: label for n, label in FILE_INPUTS.items() if n in names})


def page_endpoint(
    names: list[str], body: Callable[[dict[str, Any], Any], Any], outputs: int, labels: dict[str, str]
) -> Callable[..., Any]:
    """`endpoint` for the page's own events: one more output, the error box. A refused run leaves every output as
    it was and puts its message in the box, in the words of the page (`labels`: keyword -> control label); a good
    run empties the box."""
    inner = endpoint(names, body)

    def call(*args: Any, **kwargs: Any) -> tuple:
        try:
            result = inner(*args, **kwargs)
        except gr.Error as e:  # shown as the characters it is: a code span, never markup
            message = in_page_words(html.unescape(str(e.message)), labels)
            return (*[gr.skip()] * outputs, f"⚠️ {as_code(message)}")
        return (*(result if outputs > 1 else (result,)), "")

    call.__signature__ = inner.__signature__  # type: ignore[attr-defined] - Gradio injects the request by it
    call.__annotations__ = inner.__annotations__
    call.__name__ = inner.__name__
    return call


def page_labels(c: dict[str, Any]) -> dict[str, str]:
    """Each control's label as a person reads it (up to its first parenthesis), by the keyword it feeds."""
    labels = {}
    for name, control in c.items():
        label = (getattr(control, "label", None) or "").split(" (")[0].strip()
        if label:
            labels[name] = label
    return labels


def in_page_words(message: str, labels: dict[str, str]) -> str:
    """An API message with keyword names ("strengths must be a number") in the page's words ("“Strengths” must be
    a number"); a slot's keys read as "image prompt 2: “Its strength”"."""

    def slot(match: re.Match) -> str:
        key = labels.get(f"slot{match.group(1)}_{match.group(2)}", match.group(2))
        return f"image prompt {int(match.group(1)) + 1}: “{key}”"

    message = re.sub(r"\bslot (\d) (strength|variant|region|start_at|stop_at|crop|images|mode|control_type)\b", slot,
                     message)  # fmt: skip
    for name in sorted((n for n in labels if not n.startswith("slot")), key=len, reverse=True):
        # Only where the message names the setting itself: "strengths must ...", "start_at (1) ...", "seed = 5".
        keyword = rf"(?<![\w“]){re.escape(name)}(?= (=|must|\(|'|\"|is |sweeps))"
        message = re.sub(keyword, f"“{labels[name]}”", message)
    return message


def page_names(names: list[str]) -> list[str]:
    """An endpoint's inputs on the page: its API keywords less the slot ones, plus the slot groups' controls."""
    slot_keywords = {"slots", "slot_images"} | {n for n in names if n.startswith("extra_") and n != "extra_strengths"}
    return [n for n in names if n not in slot_keywords] + SLOT_CONTROL_NAMES


def wire_endpoints(
    studio: Studio, preset: ModePreset, text: TabText, c: dict, api: dict, out: dict, buttons: dict
) -> None:
    """Each endpoint twice: the named API event (a hidden trigger, the API's keywords) and the page's button (its
    controls, the slot groups folded into `slots`): both run the same function of ui/endpoints.py."""
    mode, title = preset.mode, text.title
    outputs = {
        "single": [out[k] for k in ("result", "used_seed", "diagnostics", "metadata", "preview")],
        "compare": [out[k] for k in COMPARE_OUTPUTS],
        "preview": [out["preview"]],
        "score": [out["image_scores"]],
        "settings": [buttons["settings_file"]],
    }
    specs = [  # (kind, role, body, api name, summary, button, gpu-time images or None for the io slot)
        ("single", "single", endpoints.single, mode, f"{title}: draw one image from a prompt and reference images.",
         buttons["run"], 1),
        ("compare", "compare", endpoints.sweep, f"{mode}_compare",
         f"{title}: the same seed at several strengths, side by side, in one batched pass.", out["compare"], 0),
        ("preview", "single", endpoints.preview, f"{mode}_preview", f"{title}: what the adapter sees of the images.",
         buttons["preview"], 1),
        ("score", "score", endpoints.score, f"{mode}_score",
         f"{title}: score any image against references and a prompt (likeness, adherence, identity).",
         out["score"], 1),
        ("settings", "single", endpoints.settings_file, f"{mode}_settings",
         f"{title}: a settings file for these values.", buttons["settings"], None),
    ]  # fmt: skip
    for stop in (buttons["stop"], out["compare_stop"]):  # outside the queue: it never waits behind the job it stops
        stop.click(stop_mine, outputs=out["error"], **PRIVATE)
    inputs = {**c, **api}
    labels = page_labels(c)
    for kind, role, fn, api_name, summary, button, images in specs:
        names = parameters_for(mode, role)
        body = _bound(fn, studio, preset, images)
        slot = GPU if images is not None else IO_CONCURRENCY
        api_trigger = gr.Button(visible=False)
        api_trigger.click(endpoint(names, body, api_name, summary), inputs=[inputs[n] for n in names],
                          outputs=outputs[kind], api_name=api_name, **slot)  # fmt: skip
        if kind in ("single", "compare"):  # first: a failed run leaves nothing stale
            stale = [out["used_seed"], outputs[kind][4 if kind == "compare" else 2], out["error"]]
            button.click(lambda: (None, "", ""), outputs=stale, **PRIVATE)
        page = page_names(names)
        event = button.click(page_endpoint(page, body, len(outputs[kind]), labels), inputs=[c[n] for n in page],
                             outputs=[*outputs[kind], out["error"]], api_visibility="private", **slot)  # fmt: skip
        if kind == "single":
            event.success(lambda: gr.update(visible=True), outputs=out["used_seed"], **PRIVATE)
        if kind == "compare":
            event.success(_ab_label, inputs=out["metadata"], outputs=out["ab"], **PRIVATE).success(
                _grid_columns, inputs=out["metadata"], outputs=out["cells"], **PRIVATE
            ).success(lambda: gr.update(visible=True), outputs=out["used_seed"], **PRIVATE).success(
                lambda s: f"**{s['sentence']}**" if s and s.get("sentence") else "", inputs=out["suggested"],
                outputs=out["suggestion"], **PRIVATE,
            )  # fmt: skip
    # What the adapter sees follows the images, crop and adapters by itself: cleared at once, then redrawn. One
    # listener for every trigger: changing several inputs queues one redraw (the gate admits a few jobs a visitor).
    watched = [c[n] for n in ("reference", "face_reference", "crop", "variant", *SLOT_CONTROL_NAMES) if n in c
               and not n.endswith(("_strength", "_region", "_start_at", "_stop_at"))]  # fmt: skip
    page = page_names(parameters_for(mode, "single"))
    gr.on([w.change for w in watched], lambda: [], outputs=out["preview"], **PRIVATE)
    gr.on([w.change for w in watched], page_endpoint(page, _bound(endpoints.preview, studio, preset, 1), 1, labels),
          inputs=[c[n] for n in page], outputs=[out["preview"], out["error"]], api_visibility="private",
          trigger_mode="always_last", **GPU)  # fmt: skip


def _bound(fn: Callable[..., Any], studio: Studio, preset: ModePreset, images: int | None) -> Callable[..., Any]:
    """`fn(studio, preset, values, progress)` as `body(values, progress)`, under ZeroGPU's time estimate."""

    def body(values: dict[str, Any], progress: Any) -> Any:
        return fn(studio, preset, values, progress)

    return body if images is None else on_gpu(body, endpoints.gpu_time(studio, preset, images))


def stop_mine(request: gr.Request) -> Any:
    """The page's Stop: this visitor's running jobs leave at their next step (their own run then says where)."""
    if not JOBS.stop(getattr(request, "session_hash", None)):
        return "Nothing of yours is running."
    return gr.skip()


def wire_helpers(preset: ModePreset, text: TabText, c: dict, out: dict, buttons: dict) -> None:
    """The events that only change controls: sizes within budget, variant-only controls, fast mode's sliders,
    slot kinds, reset to the preset, the seed buttons."""
    _keep_in_budget(preset, c["width"], c["height"])
    if text.variant_only:
        hidden = list(text.variant_only)
        c["variant"].change(lambda v: {c[n]: gr.update(visible=v in text.variant_only[n]) for n in hidden},
                            inputs=c["variant"], outputs=[c[n] for n in hidden], **PRIVATE)  # fmt: skip
    # Fast mode samples with its LoRA's own steps and guidance: the sliders would say something untrue.
    c["speed"].change(lambda speed: [gr.update(visible=speed != "fast")] * 2, inputs=c["speed"],
                      outputs=[c["steps"], c["guidance"]], **PRIVATE)  # fmt: skip
    for i in range(1, MAX_SLOTS + 1):
        _follow_slot_kind(preset, c, i)
    d = defaults(preset)
    reset = [n for n in c if n in d and BY_NAME[n].kind not in ("images", "numbers")]
    groups = [c[n] for n in SLOT_CONTROL_NAMES if n.endswith("_mode")]
    buttons["defaults"].click(lambda: [d[n] for n in reset] + ["none"] * len(groups),
                              outputs=[c[n] for n in reset] + groups, **PRIVATE)  # fmt: skip
    buttons["random_seed"].click(lambda: d["seed"], outputs=c["seed"], **PRIVATE)
    buttons["reuse_seed"].click(lambda s: s, inputs=out["used_seed"], outputs=c["seed"], **PRIVATE)


def _follow_slot_kind(preset: ModePreset, c: dict, i: int) -> None:
    """Choosing a slot's kind offers only that kind's adapters, by their labels, and sets its strength to that
    kind's default (a person's choice only: loading a settings file keeps the file's own strength)."""
    kinds = {m: preset_for(m, preset.family) for m in slot_kinds(preset.family)}
    mode, strength, variant, region, control_type = (
        c[f"slot{i}_{k}"] for k in ("mode", "strength", "variant", "region", "control_type")
    )

    def chosen(kind: str) -> tuple:
        if kind not in kinds:
            return gr.skip(), gr.update(choices=[("That kind's default", "")], value="")
        own = kinds[kind]
        choices = [(VARIANT_LABELS.get(v, v), v) for v in own.variants]
        return own.strength.default, gr.update(choices=choices, value=own.variant)

    def offered(kind: str, value: str) -> Any:  # a loaded file sets the kind and its adapter together
        own = kinds.get(kind)
        choices = [(VARIANT_LABELS.get(v, v), v) for v in own.variants] if own else [("That kind's default", "")]
        look = kind not in STRUCTURE_KINDS  # structure has no adapter and acts on the whole image
        return (
            gr.update(choices=choices, value=value if own and value in own.variants else choices[0][1], visible=look),
            gr.update(visible=look),
            gr.update(visible=structure_texts("control_type").get(kind) == "any"),  # a ready map: say its type
            gr.update(info=STRENGTH_INFO.get(kind, STRENGTH_INFO["general"])),
        )

    mode.input(chosen, inputs=mode, outputs=[strength, variant], **PRIVATE)
    mode.change(offered, inputs=[mode, variant], outputs=[variant, region, control_type, strength], **PRIVATE)


def _grid_columns(metadata: dict | None) -> Any:
    """A 2-D comparison shows one gallery row per strength."""
    columns = len((metadata or {}).get("extra_strengths") or [])
    return gr.update(columns=columns if columns > 1 else 5)


def _ab_label(metadata: dict | None) -> Any:
    """Show the A/B slider for two cells only, labelled with the strength on each side (from the metadata: the
    slider's own value is never read back, so no image input but the boundary's exists)."""
    sweep = (metadata or {}).get("strengths") or []
    if len(sweep) != 2 or (metadata or {}).get("extra_strengths"):
        return gr.update(visible=False)
    return gr.update(visible=True, label=f"A/B: left = strength {sweep[0]:g}, right = strength {sweep[1]:g}")


def _keep_in_budget(preset: ModePreset, width: gr.Slider, height: gr.Slider) -> None:
    """When one size slider pushes width x height past the preset's pixel budget, the other one gives way."""

    def fit(changed: float, other: float, other_range: Any) -> Any:
        if changed is None or other is None or changed * other <= preset.max_pixels:
            return gr.skip()
        fitting = preset.max_pixels // int(changed) // int(other_range.step) * int(other_range.step)
        return max(int(other_range.min), fitting)

    width.input(lambda w, h: fit(w, h, preset.height), inputs=[width, height], outputs=height, **PRIVATE)
    height.input(lambda h, w: fit(h, w, preset.width), inputs=[height, width], outputs=width, **PRIVATE)


def _examples(
    preset: ModePreset, text: TabText, c: dict, result: gr.Image, render: Callable[[dict[str, Any]], str]
) -> None:
    """Example rows: the preset's prompts, with drawn references where the mode has them.

    On a Space the results are cached lazily (computed on first click), so start-up needs no GPU.
    """
    if not preset.examples:
        return
    if not text.example_references:
        gr.Examples(examples=[[p] for p in preset.examples], inputs=[c["prompt"]], label="Example prompts")
        return
    drawings, prompts = text.example_references, preset.examples
    count = max(len(prompts), len(drawings))  # every drawing appears, each with a prompt
    rows = [[prompts[i % len(prompts)], [reference_path(drawings[i % len(drawings)])]] for i in range(count)]

    d = defaults(preset)
    single = {n: d[n] for n in parameters_for(preset.mode, "single")}

    def example(prompt: str, reference: Any) -> str:
        return render({**single, "prompt": prompt, "reference": reference, "seed": 0})

    on_space = bool(os.environ.get("SPACE_ID"))
    # Clicking an example draws it: from the lazy cache on a Space, by running it (a few seconds) elsewhere.
    gr.Examples(
        examples=rows, inputs=[c["prompt"], c["reference"]], outputs=result,
        fn=boundary(example, files={"reference": "reference"}), label="Examples",
        cache_examples=on_space, cache_mode="lazy", run_on_click=not on_space,
    )  # fmt: skip
