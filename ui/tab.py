"""The layout every mode shares: inputs, "Start drawing", a strength comparison panel and their API endpoints.

A mode module supplies its labels and any extra controls; the endpoints take keyword parameters named after the
controls (`prompt`, `reference`, `strength`, ...), so `gradio_client` callers use names, never positions.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.context import Context

from pipelines.codec import build_request, parse_strengths
from pipelines.errors import ImagePromptError, InvalidRequestError
from pipelines.grid import make_grid
from pipelines.images import load_reference
from pipelines.metadata import save_png
from pipelines.parameters import BY_NAME, parameters_for
from pipelines.plot import score_plot
from pipelines.presets import CROP_MODES, EXTRA_MODES, MAX_GRID_CELLS, REGIONS, ModePreset, preset_for
from pipelines.request import GenerationRequest
from pipelines.settings import settings_of

from .common import (
    GPU_CONCURRENCY_ID,
    IO_CONCURRENCY,
    RANDOM_SEED,
    format_diagnostics,
    gpu_seconds,
    on_gpu,
    output_path,
    resolve_seed,
    write_png,
)
from .examples import reference_path
from .serving import boundary, escape, uploaded_image, visitor_scope

if TYPE_CHECKING:
    from pipelines.engine import Engine

CROP_LABELS = {"center": "Centre crop", "pad": "Pad to square", "squash": "Squash to square"}
FILE_INPUTS = {  # parameter -> label in messages
    "reference": "reference", "face_reference": "face close-up", "extra_reference": "extra reference",
    "negative_reference": "negative image", "image": "image to score",
}  # fmt: skip
ExtraControls = Callable[[ModePreset], dict[str, gr.components.Component]]


@dataclass
class TabHandle:
    """A built tab: its Blocks (launchable alone) and its controls by parameter name."""

    demo: gr.Blocks | gr.Column  # a Blocks when built alone (launchable), a Column inside the app
    controls: dict[str, gr.components.Component]
    mode: str
    strengths: gr.Textbox | None = None  # the comparison's strengths (a grid PNG's settings restore them)


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


EXTRA_LABELS = {"none": "Nothing", "general": "General reference", "face": "A face", "style": "A style"}
REGION_LABELS = {"whole": "Whole image", "left": "Left half", "right": "Right half", "top": "Top half",
                 "bottom": "Bottom half"}  # fmt: skip


def _endpoint(
    names: list[str], body: Callable[[dict[str, Any], Any], Any], api_name: str = "endpoint", summary: str = ""
) -> Callable[..., Any]:
    """A function whose signature is `names` (+ progress): Gradio names the API parameters after it.

    `api_name` and `summary` become its name and docstring: what API pages and MCP clients show for the tool.
    """

    def endpoint(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        values = dict(bound.arguments)
        progress = values.pop("progress", None)
        return body(values, progress)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    signature = inspect.Signature(params)
    endpoint.__signature__ = signature  # type: ignore[attr-defined] - inspect reads it; type checkers do not know it
    endpoint.__name__ = endpoint.__qualname__ = api_name
    args = "\n".join(f"    {n}: {BY_NAME[n].doc}" for n in names if n in BY_NAME)
    endpoint.__doc__ = f"{summary}\n\nArgs:\n{args}\n" if summary else None
    return boundary(endpoint, files={n: label for n, label in FILE_INPUTS.items() if n in names})


def request_from(preset: ModePreset, values: dict[str, Any]) -> GenerationRequest:
    """Build the request from named UI/API values (the seed box's -1 becomes a random seed here).

    File inputs arrive as lists of checked paths: the endpoint boundary (`ui.serving.boundary`) has vetted them.
    """
    values = dict(values)
    for name in FILE_INPUTS:
        if name in values:
            values[name] = values[name] or []
    values["seed"] = resolve_seed(values.get("seed"))
    return build_request(preset, **values)


def _progress_callback(progress: Any) -> Callable[[int, int], None] | None:
    if progress is None:
        return None

    def on_step(done: int, total: int) -> None:
        progress((done, total), desc="Drawing", unit="steps")

    return on_step


def build_tab(
    engine: Engine,
    preset: ModePreset,
    text: TabText,
    extra: ExtraControls | None = None,
    footer: Callable[[], None] | None = None,
) -> TabHandle:
    """The mode's UI; endpoints `<mode>`, `<mode>_compare`, `<mode>_preview` and `<mode>_settings`."""
    mode = preset.mode
    # Alone, a tab is its own Blocks; inside the app, a Column: every Blocks builds a whole web app when it closes
    # (about 0.15 s each in Gradio 6), which four nested tabs would repeat for nothing.
    with gr.Blocks() if Context.root_block is None else gr.Column() as demo:
        gr.Markdown(text.intro)
        if text.notice:
            gr.Markdown(text.notice)
        with gr.Row():
            with gr.Column():
                c: dict[str, gr.components.Component] = {}
                c["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="What to draw")
                c["reference"] = gr.Gallery(
                    label=text.reference_label, type="filepath", interactive=True, columns=4, height=200,
                    file_types=["image"], object_fit="contain",
                )  # fmt: skip
                c["strength"] = gr.Slider(
                    label=text.strength_label, minimum=preset.strength.min, maximum=preset.strength.max,
                    step=preset.strength.step, value=preset.strength.default,
                )  # fmt: skip
                c["variant"] = gr.Radio(
                    label="Adapter", choices=[(text.variant_labels.get(v, v), v) for v in preset.variants],
                    value=preset.variant, visible=len(preset.variants) > 1,
                )  # fmt: skip
                if extra is not None:
                    c.update(extra(preset))
                for name, variants in text.variant_only.items():
                    c[name].visible = preset.variant in variants
                c.update(_combine_controls(preset))
                fast = preset.fast
                c["speed"] = gr.Radio(
                    label="Speed", value="quality", visible=fast is not None, elem_id=f"{mode}-speed",
                    choices=[("Quality (the steps and guidance below)", "quality")]
                    + ([(f"Fast ({fast.steps} steps, few-step LoRA, no guidance)", "fast")] if fast else []),
                )  # fmt: skip
                run = gr.Button("Start drawing", variant="primary")
                with gr.Accordion("Settings", open=False):
                    c["negative_prompt"] = gr.Textbox(label="Negative prompt", value=preset.negative_prompt, lines=2)
                    with gr.Row():
                        c["seed"] = gr.Number(label="Seed (-1 = random)", value=RANDOM_SEED, precision=0)
                        random_seed = gr.Button("🎲 Random", scale=0)
                        reuse_seed = gr.Button("♻️ Reuse last", scale=0)
                    for name, label in (("steps", "Steps"), ("guidance", "Guidance")):
                        r = getattr(preset, name)
                        c[name] = gr.Slider(label=label, minimum=r.min, maximum=r.max, step=r.step, value=r.default,
                                            elem_id=f"{mode}-{name}")  # fmt: skip
                    with gr.Row():
                        for name, label in (("width", "Width"), ("height", "Height")):
                            r = getattr(preset, name)
                            c[name] = gr.Slider(label=label, minimum=r.min, maximum=r.max, step=r.step, value=r.default)
                    c["negative_reference"] = gr.Gallery(
                        label="Negative images (a look that should NOT carry over)", type="filepath", interactive=True,
                        columns=4, height=120, file_types=["image"], object_fit="contain",
                    )  # fmt: skip
                    with gr.Row():
                        c["start_at"] = gr.Slider(
                            label="Start at (share of the steps before the image prompt acts)", minimum=0.0,
                            maximum=1.0, step=preset.stop_at.step, value=0.0,
                        )  # fmt: skip
                        c["stop_at"] = gr.Slider(
                            label="Stop at (share of the steps after which it stops)", minimum=preset.stop_at.min,
                            maximum=preset.stop_at.max, step=preset.stop_at.step, value=preset.stop_at.default,
                        )  # fmt: skip
                    c["crop"] = gr.Radio(
                        label="Non-square references", choices=[(CROP_LABELS[m], m) for m in CROP_MODES],
                        value=preset.crop,
                    )  # fmt: skip
                    preview_button = gr.Button("Show what the adapter sees")
                    with gr.Row():
                        defaults_button = gr.Button("Reset to the preset")
                        settings_button = gr.Button("Download settings")
                    settings_file = gr.File(label="Settings file (load it with 'Load settings' at the top)")
            with gr.Column():
                result = gr.Image(
                    label="Result", type="filepath", format="png", interactive=False, elem_id=f"{mode}-result"
                )
                # Shown once there is one (an empty number box would read "0").
                used_seed = gr.Number(label="Seed used", precision=0, interactive=False, visible=False,
                                      elem_id=f"{mode}-seed-used")  # fmt: skip
                diagnostics = gr.Markdown(label="diagnostics")
                preview = gr.Gallery(
                    label="What the adapter sees", columns=4, height=140, interactive=False, object_fit="contain",
                    elem_id=f"{mode}-preview",
                )  # fmt: skip
                with gr.Accordion("Compare strengths (same seed, one batched pass)", open=False):
                    c["strengths"] = strengths = gr.Textbox(
                        label="Strengths (comma-separated; two give an A/B slider)",
                        value=", ".join(f"{s:g}" for s in preset.compare),
                    )
                    c["extra_strengths"] = gr.Textbox(
                        label="Extra image prompt's strengths (optional: a grid of every pair, one row per strength)",
                        placeholder="e.g. 0, 0.5, 1 (needs 'Combine with...')",
                        value="",
                    )
                    compare = gr.Button("Compare strengths")
                    cells = gr.Gallery(
                        label="Comparison (the strength under each cell)", columns=5, height=260,
                        interactive=False, elem_id=f"{mode}-cells", object_fit="contain",
                    )  # fmt: skip
                    ab = gr.ImageSlider(label="A/B", type="filepath", visible=False)
                    grid_file = gr.File(label="Grid PNG (with the metadata of the whole sweep)")
                    compare_diagnostics = gr.Markdown(label="compare_diagnostics")
                    plot = gr.Image(
                        label="Scores against strength (likeness, adherence, identity; the suggestion marked)",
                        type="filepath", format="png", interactive=False, elem_id=f"{mode}-plot",
                    )  # fmt: skip
                    suggested = gr.JSON(label="Suggested strength", elem_id=f"{mode}-suggested")
                    with gr.Accordion("Scores of every cell", open=False):
                        scores = gr.JSON(label="scores")
                    sweep_settings = gr.File(label="Settings of the sweep (JSON, with its scores)")
                    with gr.Accordion("Score an image (any image, made here or elsewhere)", open=False):
                        c["image"] = uploaded_image(label="Image to score", type="filepath", format="png")
                        score_button = gr.Button("Score it against the references and prompt")
                        image_scores = gr.JSON(label="Its scores")
                with gr.Accordion("Metadata (also stored in the PNG)", open=False, elem_id=f"{mode}-metadata"):
                    metadata = gr.JSON(label="image_prompt")
        example_slot = gr.Column()

        names = parameters_for(mode, "single")  # the API's parameters, in the order of pipelines/parameters.py
        compare_names = parameters_for(mode, "compare")
        missing = [n for n in (*names, *compare_names) if n not in c]
        if missing:
            raise RuntimeError(f"the {mode} tab has no control for parameters {missing}")

        def single(values: dict[str, Any], progress: Any) -> tuple:
            request = request_from(preset, values)
            result_ = engine.generate(request, on_step=_progress_callback(progress), scope=visitor_scope())
            path = write_png(result_.image, result_.metadata)
            report = format_diagnostics(result_.diagnostics, result_.warnings)
            return path, request.settings.seed, report, result_.metadata, result_.previews

        def sweep(values: dict[str, Any], progress: Any) -> tuple:
            request = request_from(preset, {**values, "strengths": values.get("strengths") or preset.compare})
            out = engine.generate_sweep(
                request, on_step=_progress_callback(progress), scope=visitor_scope(), score=engine.scorer.available
            )
            paths = [write_png(img, m) for img, m in zip(out.images, out.cell_metadata, strict=True)]
            _, columns = out.shape
            if columns > 1:  # a 2-D grid: rows = strengths, columns = the extra prompt's strengths
                captions = [f"{s:g} × {e:g}" for s, e in zip(out.strengths, out.extra_strengths, strict=True)]
                labels = [
                    f"{mode} {s:g} · {request.slots[0].mode} {e:g}"
                    for s, e in zip(out.strengths, out.extra_strengths, strict=True)
                ]
            else:
                captions = [f"{s:g}" for s in out.strengths]  # short: readable under the smallest cell
                labels = [f"strength {c}" for c in captions]
            best = out.suggested["index"] if out.suggested else None
            if best is not None:
                labels[best] += " ★"
            grid = save_png(
                make_grid(out.images, labels, columns=columns if columns > 1 else None, highlight=best),
                out.metadata,
                output_path(f"{mode}-compare"),
            )
            slider = (paths[0], paths[1]) if len(paths) == 2 else None
            gallery = list(zip(paths, captions, strict=True))
            report = format_diagnostics(out.diagnostics, out.warnings)
            chart = None
            if out.scores:
                chart = str(output_path(f"{mode}-scores"))
                score_plot(out.scores, out.suggested).save(chart, format="PNG")
            settings_path = output_path(f"{mode}-sweep", ".json")
            sweep_file = {**settings_of(request), "scores": out.scores or None, "suggested": out.suggested}
            settings_path.write_text(json.dumps(sweep_file, indent=1, ensure_ascii=False), encoding="utf-8")
            seed = request.settings.seed
            return (gallery, slider, str(grid), seed, report, out.metadata, out.scores, out.suggested, chart,
                    str(settings_path))  # fmt: skip

        def score_image(values: dict[str, Any], progress: Any) -> dict:
            images = values.pop("image") or []
            if not images:
                raise InvalidRequestError("image", "Choose an image to score.")
            request = request_from(preset, {**values, "seed": 0})
            image = load_reference(images[0], label="image to score").image
            result, notes = engine.score(image, request, scope=visitor_scope())
            for note in notes:
                gr.Warning(escape(note))
            return result

        def download_settings(values: dict[str, Any], progress: Any) -> str:
            request = request_from(preset, values)
            path = output_path(f"{mode}-settings", ".json")
            path.write_text(json.dumps(settings_of(request), indent=1, ensure_ascii=False), encoding="utf-8")
            return str(path)

        def encoder_view(values: dict[str, Any], progress: Any) -> list:
            request = request_from(preset, values)
            if not request.primary.references:
                return []  # nothing to see (and nothing stale left showing)
            return engine.encoder_preview(request, request.primary.variant, scope=visitor_scope())

        def duration(images: int) -> Callable[[dict[str, Any], Any], int]:
            def estimate(values: dict[str, Any], progress: Any) -> int:
                n = images or _cells(values, preset)
                sizes = [values.get(k) or getattr(preset, k).default for k in ("steps", "width", "height")]
                try:
                    steps, width, height = (int(float(v)) for v in sizes)
                except (TypeError, ValueError):
                    steps, width, height = preset.steps.max, preset.width.max, preset.height.max
                if values.get("speed") == "fast" and preset.fast is not None:
                    steps = preset.fast.steps
                return gpu_seconds(engine.family.pipeline, steps, n, width, height)

            return estimate

        single = on_gpu(single, duration(1))
        sweep = on_gpu(sweep, duration(0))  # 0: as many images as strengths
        encoder_view = on_gpu(encoder_view, duration(1))
        inputs = [c[n] for n in names]
        with example_slot:
            _examples(preset, text, c, result, lambda values: single(values, None)[0])
        gpu = {"concurrency_id": GPU_CONCURRENCY_ID, "concurrency_limit": 1}
        private = {"api_visibility": "private", "queue": False}
        for button, outputs in ((run, [used_seed, diagnostics]), (compare, [used_seed, compare_diagnostics])):
            button.click(lambda: (None, ""), outputs=outputs, **private)  # a failed run leaves nothing stale
        run.click(
            _endpoint(names, single, mode, f"{text.title}: draw one image from a prompt and reference images."),
            inputs=inputs, outputs=[result, used_seed, diagnostics, metadata, preview],
            api_name=mode, **gpu,
        ).success(lambda: gr.update(visible=True), outputs=used_seed, **private)  # fmt: skip
        compare.click(
            _endpoint(
                compare_names,
                sweep,
                f"{mode}_compare",
                f"{text.title}: the same seed at several strengths, side by side, in one batched pass.",
            ),
            inputs=[c[n] for n in compare_names],
            outputs=[
                cells,
                ab,
                grid_file,
                used_seed,
                compare_diagnostics,
                metadata,
                scores,
                suggested,
                plot,
                sweep_settings,
            ],
            api_name=f"{mode}_compare",
            **gpu,
        ).success(_ab_label, inputs=metadata, outputs=ab, **private).success(
            _grid_columns, inputs=metadata, outputs=cells, **private
        ).success(lambda: gr.update(visible=True), outputs=used_seed, **private)
        preview_button.click(
            _endpoint(
                names, encoder_view, f"{mode}_preview", f"{text.title}: what the adapter sees of the references."
            ),
            inputs=inputs,
            outputs=preview,
            api_name=f"{mode}_preview",
            **gpu,
        )
        score_names = parameters_for(mode, "score")
        score_button.click(
            _endpoint(
                score_names, score_image, f"{mode}_score",
                f"{text.title}: score any image against references and a prompt (likeness, adherence, identity).",
            ),
            inputs=[c[n] for n in score_names], outputs=image_scores, api_name=f"{mode}_score", **gpu,
        )  # fmt: skip
        # What the adapter sees follows the references and crop by itself: cleared at once, then redrawn. One
        # listener for every trigger: a person changing several inputs queues one redraw, not one per input (the
        # gate admits a few jobs per visitor).
        watched = [c[n] for n in ("reference", "face_reference", "crop", "variant", "extra_mode", "extra_reference",
                                  "extra_variant") if n in c]  # fmt: skip
        gr.on([w.change for w in watched], lambda: [], outputs=preview, **private)
        gr.on([w.change for w in watched], _endpoint(names, encoder_view), inputs=inputs, outputs=preview,
              api_visibility="private", trigger_mode="always_last", **gpu)  # fmt: skip
        _keep_in_budget(preset, c["width"], c["height"], private)
        if text.variant_only:
            hidden = list(text.variant_only)
            c["variant"].change(
                lambda v: {c[n]: gr.update(visible=v in text.variant_only[n]) for n in hidden},
                inputs=c["variant"], outputs=[c[n] for n in hidden], **private,
            )  # fmt: skip
        settings_button.click(
            _endpoint(names, download_settings, f"{mode}_settings", f"{text.title}: a settings file for these values."),
            inputs=inputs, outputs=settings_file, api_name=f"{mode}_settings",
            **IO_CONCURRENCY,
        )  # fmt: skip
        _follow_extra_mode(preset, c, private)
        # Fast mode samples with its LoRA's own steps and guidance: the sliders would say something untrue.
        c["speed"].change(
            lambda speed: [gr.update(visible=speed != "fast")] * 2,
            inputs=c["speed"], outputs=[c["steps"], c["guidance"]], **private,
        )  # fmt: skip
        defaults = preset_values(preset)
        defaults_names = [n for n in names if n in defaults]
        defaults_button.click(
            lambda: [defaults[n] for n in defaults_names],
            outputs=[c[n] for n in defaults_names],
            api_visibility="private",
            queue=False,
        )
        if footer is not None:
            footer()  # more UI of the mode's own, inside this tab
        random_seed.click(lambda: RANDOM_SEED, outputs=c["seed"], api_visibility="private", queue=False)
        reuse_seed.click(lambda s: s, inputs=used_seed, outputs=c["seed"], api_visibility="private", queue=False)
    return TabHandle(demo, c, mode, strengths)


def _combine_controls(preset: ModePreset) -> dict[str, gr.components.Component]:
    """ "Combine with...": one more image prompt of another kind, its references, strength, adapter and region."""
    own = {m: preset_for(m, preset.family) for m in EXTRA_MODES if m != "none"}
    c: dict[str, gr.components.Component] = {}
    with gr.Accordion("Combine with... (one more image prompt: a face, a style, another reference)", open=False):
        c["extra_mode"] = gr.Radio(
            label="Add", choices=[(EXTRA_LABELS[m], m) for m in EXTRA_MODES], value="none",
            elem_id=f"{preset.mode}-extra-mode",
        )  # fmt: skip
        c["extra_reference"] = gr.Gallery(
            label="Its references", type="filepath", interactive=True, columns=4, height=140, file_types=["image"],
            object_fit="contain", elem_id=f"{preset.mode}-extra-reference",
        )  # fmt: skip
        low = min(p.strength.min for p in own.values())
        high = max(p.strength.max for p in own.values())
        c["extra_strength"] = gr.Slider(
            label="Its strength", minimum=low, maximum=high, step=own["general"].strength.step,
            value=own["general"].strength.default,
        )  # fmt: skip
        variants = list(dict.fromkeys(v for p in own.values() for v in p.variants))
        c["extra_variant"] = gr.Dropdown(
            label="Its adapter (empty: that tab's default)", choices=[("That tab's default", ""), *variants], value="",
        )  # fmt: skip
        with gr.Row():
            regions = [(REGION_LABELS[r], r) for r in REGIONS]
            c["region"] = gr.Radio(label="This tab's image prompt acts on", choices=regions, value="whole")
            c["extra_region"] = gr.Radio(label="The extra one acts on", choices=regions, value="whole")
        with gr.Row():
            c["extra_start_at"] = gr.Slider(label="It starts at (share of the steps)", minimum=0.0, maximum=1.0,
                                            step=0.05, value=0.0)  # fmt: skip
            c["extra_stop_at"] = gr.Slider(label="It stops at", minimum=0.0, maximum=1.0, step=0.05, value=1.0)
    return c


def _follow_extra_mode(preset: ModePreset, c: dict[str, gr.components.Component], private: dict) -> None:
    """Choosing a kind to combine with sets its strength to that kind's default (a person's choice only: a loaded
    settings file keeps its own strength)."""
    defaults = {m: preset_for(m, preset.family).strength.default for m in EXTRA_MODES if m != "none"}
    c["extra_mode"].input(
        lambda m: defaults.get(m, gr.skip()) if m != "none" else gr.skip(),
        inputs=c["extra_mode"], outputs=c["extra_strength"], **private,
    )  # fmt: skip


def _cells(values: dict[str, Any], preset: ModePreset) -> int:
    """How many images a comparison draws (for the GPU time estimate); bad values count as the largest grid."""
    mode = values.get("extra_mode")
    own = preset_for(mode, preset.family) if mode in EXTRA_MODES and mode != "none" else preset
    try:
        rows = len(parse_strengths(values.get("strengths"), preset))
        extra = values.get("extra_strengths")
        columns = len(parse_strengths(extra, own, "extra_strengths")) if extra else 1
    except ImagePromptError:
        return MAX_GRID_CELLS
    return min(rows * max(columns, 1), MAX_GRID_CELLS)


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


def _keep_in_budget(preset: ModePreset, width: gr.Slider, height: gr.Slider, private: dict) -> None:
    """When one size slider pushes width x height past the preset's pixel budget, the other one gives way."""

    def fit(changed: float, other: float, other_range: Any) -> Any:
        if changed is None or other is None or changed * other <= preset.max_pixels:
            return gr.skip()
        fitting = preset.max_pixels // int(changed) // int(other_range.step) * int(other_range.step)
        return max(int(other_range.min), fitting)

    width.input(lambda w, h: fit(w, h, preset.height), inputs=[width, height], outputs=height, **private)
    height.input(lambda h, w: fit(h, w, preset.width), inputs=[height, width], outputs=width, **private)


def _examples(
    preset: ModePreset,
    text: TabText,
    c: dict[str, gr.components.Component],
    result: gr.Image,
    render: Callable[[dict[str, Any]], str],
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

    def example(prompt: str, reference: Any) -> str:
        return render({**preset_values(preset), "prompt": prompt, "reference": reference, "seed": 0})

    example = boundary(example, files={"reference": "reference"})

    on_space = bool(os.environ.get("SPACE_ID"))
    # Clicking an example draws it: from the lazy cache on a Space, by running it (a few seconds) elsewhere.
    gr.Examples(
        examples=rows, inputs=[c["prompt"], c["reference"]], outputs=result, fn=example, label="Examples",
        cache_examples=on_space, cache_mode="lazy", run_on_click=not on_space,
    )  # fmt: skip


def preset_values(preset: ModePreset) -> dict[str, Any]:
    """The control values of a preset's defaults."""
    values = {
        "negative_prompt": preset.negative_prompt, "strength": preset.strength.default, "variant": preset.variant,
        "steps": preset.steps.default, "guidance": preset.guidance.default, "width": preset.width.default,
        "height": preset.height.default, "stop_at": preset.stop_at.default, "crop": preset.crop,
        "seed": RANDOM_SEED, "layout": False, "base": "default", "start_at": 0.0, "region": "whole",
        "extra_mode": "none", "extra_strength": preset_for("general", preset.family).strength.default,
        "extra_region": "whole", "extra_variant": "", "extra_start_at": 0.0, "extra_stop_at": 1.0, "speed": "quality",
    }  # fmt: skip
    if preset.structure is not None:
        values["structure"] = preset.structure.default
    return values
