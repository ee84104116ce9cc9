"""The serving path: the app's time outside the denoiser and VAE decoding, phase by phase. Prints tables.

    python -m bench.serving                      # 1024x1024 results, a single image and a 5-cell comparison
    python -m bench.serving --size 512 --rounds 9

The engine is replaced by a stub that returns precomputed 1024x1024 photo-like images (with real metadata) at
once, so everything measured is what the app adds: validation (the request, its reference decoded), the result's
PNG with metadata, the grid, the score plot, the settings file, and Gradio's return path (queue, postprocessing,
HTTP) as a client sees it. "before" re-creates the serving path the app shipped with (Pillow's default PNG level,
one file after another, full-size grid cells, results copied into Gradio's cache, every reference decoded again);
"after" is the app as it is. Rounds are interleaved. A no-op Gradio endpoint measures Gradio's own floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
from PIL import Image, ImageFilter

PHASES: dict[str, list[float]] = defaultdict(list)


def photo_like(size: int, seed: int) -> Image.Image:
    """Smooth colour fields with fine grain: compresses like a generated picture (noise alone would not)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(small).astype(np.float32) + rng.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))


@contextmanager
def phase(name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        PHASES[name].append(time.perf_counter() - start)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with phase(name):
            return fn(*args, **kwargs)

    return wrapper


def stub_engine(size: int, cells: int) -> Any:
    """A tiny engine whose generate / generate_sweep return `size`-pixel images at once, with real metadata."""
    from dataclasses import replace

    from pipelines import Engine, build_request, load_families, load_mode_presets

    families = load_families()
    engine = Engine(families["tiny"], max_batch=8)
    engine.load()
    preset = load_mode_presets(families)["general"]["tiny"]
    ref = photo_like(256, 9)
    template = engine.generate(build_request(preset, prompt="x", reference=[ref], seed=1, steps=1))
    sweep_template = engine.generate_sweep(
        build_request(preset, prompt="x", reference=[ref], seed=1, steps=1, strengths=[0.2 * i for i in range(cells)]),
        score=True,
    )
    pictures = [photo_like(size, seed) for seed in range(cells)]

    def generate(request: Any, on_step: Any = None, scope: str = "") -> Any:
        return replace(template, image=pictures[0])

    def generate_sweep(request: Any, on_step: Any = None, scope: str = "", score: bool = False, **_: Any) -> Any:
        n = len(request.sweep.strengths)
        return replace(sweep_template, images=pictures[:n], strengths=list(request.sweep.strengths))

    engine.generate, engine.generate_sweep = generate, generate_sweep
    return engine


def install_timers() -> None:
    """Time each phase where the endpoints call it, and each endpoint as a whole."""
    from ui import common, endpoints

    endpoints.single = timed("endpoint function, in all", endpoints.single)
    endpoints.sweep = timed("endpoint function, in all", endpoints.sweep)
    endpoints.request_from = timed("validation (request, reference decoded)", endpoints.request_from)
    common_write = common.write_png
    endpoints.write_png = timed("result PNGs with metadata", common_write)
    endpoints.make_grid = timed("grid built", endpoints.make_grid)
    endpoints.save_png = timed("grid / plot PNG encoded", endpoints.save_png)
    endpoints.score_plot = timed("score plot drawn", endpoints.score_plot)


def legacy_encoding() -> Callable[[], None]:
    """The encoding the app shipped with: Pillow's default PNG settings, files one after another, full-size grid
    cells. Returns a function that restores today's."""
    from pipelines import grid, images, metadata
    from ui import endpoints, serving

    writer, cell, encoders, kept = metadata.PNG_WRITER, grid.MAX_CELL, endpoints.ENCODERS, images._decoded
    store = serving.OUTPUTS._root
    metadata.PNG_WRITER = metadata.pillow_png
    grid.MAX_CELL = 1 << 16
    endpoints.ENCODERS = 1
    images._decoded = images.LRU(0)  # every reference decoded again
    serving.OUTPUTS._root = Path(tempfile.mkdtemp(prefix="image-prompt-studio-"))  # outside Gradio's cache

    def restore() -> None:
        metadata.PNG_WRITER = writer
        grid.MAX_CELL = cell
        endpoints.ENCODERS = encoders
        images._decoded = kept
        serving.OUTPUTS._root = store

    return restore


def gradio_floor() -> tuple[Any, Any]:
    """A Gradio app with one no-op endpoint, queued like ours: the round trip no app can go below."""
    import gradio as gr
    from gradio_client import Client

    with gr.Blocks() as demo:
        text = gr.Textbox()
        gr.Button().click(lambda s: s, text, text, api_name="echo")
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    return demo, Client(url, verbose=False, download_files=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")

    import httpx
    from gradio_client import Client

    import app

    os.environ["IMAGE_PROMPT_TINY_DIR"] = os.environ.get("IMAGE_PROMPT_TINY_DIR") or tempfile.mkdtemp()
    engine = stub_engine(args.size, args.cells)
    install_timers()
    demo = app.create_app(engine)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    client = Client(url, verbose=False, download_files=False)
    floor_demo, floor_client = gradio_floor()
    ref = Path(tempfile.mkdtemp()) / "reference.png"
    photo_like(args.size, 99).save(ref)
    strengths = ", ".join(f"{0.25 * i:g}" for i in range(args.cells))
    # The reference is uploaded once, before timing: its upload is the client's input path, not the app's time.
    with open(ref, "rb") as f:
        stored = httpx.post(url.rstrip("/") + "/gradio_api/upload", files=[("files", ("ref.png", f, "image/png"))])
    reference = [{"image": {"path": stored.json()[0]}}]  # a path in the upload folder, as the boundary takes it
    calls = {
        "Gradio alone (a no-op endpoint returning a text)": lambda: floor_client.predict("x", api_name="/echo"),
        "single image": lambda: client.predict(prompt="a vase", reference=reference, seed=1, api_name="/general"),
        f"{args.cells}-cell comparison": lambda: client.predict(
            prompt="a vase", reference=reference, seed=1, strengths=strengths, api_name="/general_compare"
        ),
    }
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for call in calls.values():
        call()  # warm-up: first-use costs are not the serving path's
    for _ in range(args.rounds):
        for version in ("before", "after"):
            restore = legacy_encoding() if version == "before" else (lambda: None)
            try:
                for name, call in calls.items():
                    PHASES.clear()
                    with phase("total, as the client sees it"):
                        call()
                    for key, values in PHASES.items():
                        results.setdefault((version, name), {}).setdefault(key, []).append(sum(values))
            finally:
                restore()
    demo.close()
    floor_demo.close()
    floor = statistics.median(results[("after", next(iter(calls)))]["total, as the client sees it"])
    keys = ["validation (request, reference decoded)", "result PNGs with metadata", "grid built",
            "grid / plot PNG encoded", "score plot drawn", "endpoint function, in all",
            "total, as the client sees it"]  # fmt: skip
    print(f"\nGradio's own floor, a no-op endpoint through gradio_client: {1000 * floor:.0f} ms (median).")
    for name in list(calls)[1:]:
        print(f"\n### {name}, {args.size}x{args.size} results, engine stubbed (ms, median of {args.rounds} rounds)\n")
        print("| phase | before | after |\n|---|---|---|")
        for key in keys:
            cells = []
            for version in ("before", "after"):
                values = results.get((version, name), {}).get(key)
                cells.append(f"{1000 * statistics.median(values):.0f}" if values else "-")
            print(f"| {key} | {cells[0]} | {cells[1]} |")
        totals = [results.get((v, name), {}) for v in ("before", "after")]
        gradio = [statistics.median(t["total, as the client sees it"])
                  - statistics.median(t["endpoint function, in all"]) for t in totals]  # fmt: skip
        print(f"| Gradio's path (queue, postprocessing, HTTP: total minus the endpoint) | {1000 * gradio[0]:.0f} | "
              f"{1000 * gradio[1]:.0f} |")  # fmt: skip
        app_time = [statistics.median(t["total, as the client sees it"]) - floor for t in totals]
        print(f"| **the app's time outside the denoiser** (total minus Gradio's floor) | {1000 * app_time[0]:.0f} | "
              f"{1000 * app_time[1]:.0f} |")  # fmt: skip
    print("\n(Phases inside the endpoint overlap in 'after': the PNGs of a comparison are encoded at once.)")


if __name__ == "__main__":
    main()
