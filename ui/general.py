"""The General tab: IP-Adapter (plain or Plus) on one or more reference images."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.engine import Engine
from pipelines.presets import ModePreset
from pipelines.request import build_request

from .common import (
    GPU_CONCURRENCY_ID,
    RANDOM_SEED,
    format_diagnostics,
    reference_paths,
    resolve_seed,
    user_errors,
    write_png,
)

VARIANT_LABELS = {"plain": "IP-Adapter (colour, texture, composition)", "plus": "IP-Adapter Plus (finer detail)"}


def make_handler(engine: Engine, preset: ModePreset) -> Any:
    """The `general` endpoint: keyword parameters are the public API (`api_name="general"`)."""

    @user_errors
    def general(
        prompt: str,
        negative_prompt: str,
        reference: list | None,
        strength: float,
        seed: float,
        steps: float,
        guidance: float,
        width: float,
        height: float,
        variant: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects the tracker through this default
    ) -> tuple[str, int, str, dict]:
        request = build_request(
            preset,
            prompt=prompt,
            negative_prompt=negative_prompt,
            references=reference_paths(reference),
            strength=strength,
            variant=variant,
            seed=resolve_seed(seed),
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
        )
        progress((0, request.steps), desc="Drawing", unit="steps")

        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="Drawing", unit="steps")

        result = engine.generate(request, on_step=on_step)
        return (
            write_png(result.image, result.metadata),
            request.seed,
            format_diagnostics(result.diagnostics),
            result.metadata,
        )

    return general


def create_demo(engine: Engine, preset: ModePreset) -> gr.Blocks:
    """The tab's UI; runs alone with `create_demo(...).launch()`."""
    with gr.Blocks() as demo:
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="What to draw")
                reference = gr.Gallery(
                    label="Reference images (several are combined into one image prompt)",
                    type="filepath",
                    interactive=True,
                    columns=4,
                    height=200,
                    file_types=["image"],
                )
                strength = gr.Slider(
                    label="Strength (how much of the reference carries over)",
                    minimum=preset.strength.min,
                    maximum=preset.strength.max,
                    step=preset.strength.step,
                    value=preset.strength.default,
                )
                variant = gr.Radio(
                    label="Adapter",
                    choices=[(VARIANT_LABELS.get(v, v), v) for v in preset.variants],
                    value=preset.variant,
                )
                run = gr.Button("Start drawing", variant="primary")
                with gr.Accordion("Settings", open=False):
                    negative_prompt = gr.Textbox(label="Negative prompt", value=preset.negative_prompt, lines=2)
                    with gr.Row():
                        seed = gr.Number(label="Seed (-1 = random)", value=RANDOM_SEED, precision=0)
                        random_seed = gr.Button("🎲 Random", scale=0)
                        reuse_seed = gr.Button("♻️ Reuse last", scale=0)
                    steps = gr.Slider(
                        label="Steps",
                        minimum=preset.steps.min,
                        maximum=preset.steps.max,
                        step=preset.steps.step,
                        value=preset.steps.default,
                    )
                    guidance = gr.Slider(
                        label="Guidance",
                        minimum=preset.guidance.min,
                        maximum=preset.guidance.max,
                        step=preset.guidance.step,
                        value=preset.guidance.default,
                    )
                    with gr.Row():
                        width = gr.Slider(
                            label="Width",
                            minimum=preset.width.min,
                            maximum=preset.width.max,
                            step=preset.width.step,
                            value=preset.width.default,
                        )
                        height = gr.Slider(
                            label="Height",
                            minimum=preset.height.min,
                            maximum=preset.height.max,
                            step=preset.height.step,
                            value=preset.height.default,
                        )
            with gr.Column():
                result = gr.Image(label="Result", type="filepath", format="png", interactive=False)
                used_seed = gr.Number(label="Seed used", precision=0, interactive=False)
                diagnostics = gr.Markdown(label="diagnostics")
                with gr.Accordion("Metadata (also stored in the PNG)", open=False):
                    metadata = gr.JSON(label="image_prompt")
        if preset.examples:
            gr.Examples(examples=[[p] for p in preset.examples], inputs=[prompt], label="Example prompts")

        run.click(
            make_handler(engine, preset),
            inputs=[prompt, negative_prompt, reference, strength, seed, steps, guidance, width, height, variant],
            outputs=[result, used_seed, diagnostics, metadata],
            api_name="general",
            concurrency_id=GPU_CONCURRENCY_ID,
            concurrency_limit=1,
        )
        random_seed.click(lambda: RANDOM_SEED, outputs=seed, api_visibility="private", queue=False)
        reuse_seed.click(lambda s: s, inputs=used_seed, outputs=seed, api_visibility="private", queue=False)
    return demo
