"""The engine and the app against stock diffusers as its users run it, in interleaved rounds: prints tables.

    python -m bench.versus                              # tiny family, 128 px, 8 steps, 3 rounds (CPU here)
    python -m bench.versus --full-size sd15 --size 128 --steps 2   # the full-size SD1.5 shapes (random weights)
    python -m bench.versus --gpu-suite                  # the GPU compass rows: SDXL 1024x1024, 30 steps, bf16
    python -m bench.versus --gpu-suite --dry            # the same suite at tiny sizes on CPU (CI runs it)

What users of diffusers run (its IP-Adapter guide): `load_ip_adapter`, `set_ip_adapter_scale(s)`, then
`pipe(prompt, ip_adapter_image=...)`; for several strengths a loop of that, and the one-call lower bound
`num_images_per_prompt=5` at one strength (the same work as a 5-strength sweep, which diffusers cannot express).
Every round runs every variant once, in the same order (A, B, C, A, B, C, ...); the tables give the minimum and
median wall time, the median process CPU time, and the ratio to the baseline per round (median and spread).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10G": 70.0}  # dense, per GPU


def rounds_table(title: str, results: dict[str, list[tuple[float, float]]], baselines: dict[str, str]) -> None:
    """Min and median wall time, median CPU time, and each variant's per-round ratio to its baseline."""
    print(f"\n### {title}\n")
    print("| variant | min s | median s | median CPU s | / baseline (median, min-max of rounds) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        wall = [w for w, _ in runs]
        base = baselines.get(name)
        ratio = ""
        if base and base != name:
            per_round = [w / b for (w, _), (b, _) in zip(runs, results[base], strict=True)]
            ratio = f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f}) of {base!r}"
        cpu = statistics.median(c for _, c in runs)
        print(f"| {name} | {min(wall):.3f} | {statistics.median(wall):.3f} | {cpu:.3f} | {ratio} |")


def timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def stock_pipeline(engine, family, variant: str):
    """A diffusers pipeline loaded the way its users load it, from the same files as the engine."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    spec = family.adapters[variant]
    cls = StableDiffusionXLPipeline if family.pipeline == "sdxl" else StableDiffusionPipeline
    local = family.source != "hub"
    pipe = cls.from_pretrained(engine.source.resolve(family.base), dtype=engine.dtype, local_files_only=local)
    pipe.to(engine.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        engine.source.resolve(spec.repo), subfolder=spec.subfolder, weight_name=spec.weight_name,
        image_encoder_folder=spec.image_encoder.subfolder, local_files_only=local,
    )  # fmt: skip
    return pipe


def unet_flops(pipe, width: int, height: int, rows: int, steps: int) -> float:
    """FLOPs of the denoising loop's UNet calls for `rows` batch rows (torch's flop counter, one call x steps).

    The UNet must be text-only (no adapter active): the count uses text states alone.
    """
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    scale = pipe.vae_scale_factor
    sample = torch.randn(rows, unet.config.in_channels, height // scale, width // scale, device=unet.device,
                         dtype=unet.dtype)  # fmt: skip
    dim = unet.config.cross_attention_dim
    states = torch.randn(rows, 77, dim, device=unet.device, dtype=unet.dtype)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        text_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(rows, text_dim, device=unet.device, dtype=unet.dtype),
            "time_ids": torch.randn(rows, 6, device=unet.device, dtype=unet.dtype),
        }
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(sample, 1, states, **kwargs)
    return counter.get_total_flops() * steps


def auto_sweeps(engine: Any, request: Any) -> dict[str, Callable[[], object]]:
    """The default `--max-batch auto`: the first sweep at a size (nothing measured yet) and a later one (the curve
    measured outside the request, as the app's warm-up or idle time does), on the same engine and model."""
    from pipelines.plan import BatchPlanner

    calibrated = BatchPlanner()

    def sweep(planner: BatchPlanner) -> None:
        engine.max_batch, engine.planner, measure_later = None, planner, engine.calibrate_when_idle
        engine.calibrate_when_idle = lambda *args: None  # no background measuring inside the timed rounds
        try:
            engine.clear_embed_cache()
            engine.generate_sweep(request.swept(STRENGTHS))
        finally:
            engine.max_batch, engine.calibrate_when_idle = 8, measure_later

    engine.max_batch, engine.planner = None, calibrated
    engine.calibrate(request, len(STRENGTHS))
    engine.max_batch = 8
    return {
        "engine --max-batch auto, first sweep at a size": lambda: sweep(BatchPlanner()),
        "engine --max-batch auto, later sweeps": lambda: sweep(calibrated),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="family (tiny, tiny-sd15; sdxl/sd15 need the Hub cache)")
    parser.add_argument("--full-size", choices=["sd15", "sdxl"], help="the full-size shapes, random weights")
    parser.add_argument("--gpu-suite", action="store_true", help="SDXL 1024x1024, 30 steps, bf16, compile on/off")
    parser.add_argument("--dry", action="store_true", help="with --gpu-suite: tiny sizes on CPU (a smoke run)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-app", action="store_true", help="skip the app through gradio_client")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    from pipelines import Engine, build_request, load_families
    from pipelines.offline.full_size import write_mirror
    from pipelines.offline.tiny import write_tokenizer
    from pipelines.presets import preset_for

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name, size, steps, dtype = args.models, args.size, args.steps, None
    if args.gpu_suite:
        name, size, steps = ("tiny", 64, 2) if args.dry else ("sdxl", 1024, 30)
        args.full_size = None if args.dry else "sdxl"
        dtype = torch.bfloat16 if device == "cuda" else None
        args.no_app = True
        args.rounds = 1 if args.dry else args.rounds
    name = args.full_size or name  # the presets of the family whose shapes are mirrored
    family = load_families()[name]
    mirror = None
    if args.full_size:  # every checkpoint the family names, at full size, random weights, in the Hub's layout
        mirror = Path(tempfile.mkdtemp(prefix="versus-mirror-"))
        start = time.perf_counter()
        write_tokenizer(mirror / "tokenizer-files")
        write_mirror(mirror, family, mirror / "tokenizer-files", dtype=torch.bfloat16 if device == "cuda" else
                     torch.float32)  # fmt: skip
        family = replace(family, source="local", faces=None)
        print(f"built the full-size mirror in {time.perf_counter() - start:.0f} s")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, gpu: {gpu}, "
          f"torch {torch.__version__}")  # fmt: skip
    try:
        engines = {"engine": Engine(family, device=device, dtype=dtype, tiny_root=mirror, max_batch=8)}
        if args.gpu_suite and device == "cuda" and not args.no_compile:
            engines["engine, torch.compile"] = Engine(family, device=device, dtype=dtype, tiny_root=mirror,
                                                      max_batch=8, compile=True)  # fmt: skip
        own = preset_for("general", name)
        preset = replace(own, width=replace(own.width, min=64, max=2048), height=replace(own.height, min=64, max=2048),
                         max_pixels=2048 * 2048)  # fmt: skip
        rng = np.random.default_rng(0)
        reference = Image.fromarray((rng.random((160, 128, 3)) * 255).astype(np.uint8))
        request = build_request(preset, prompt="a vase", references=[reference], seed=1, steps=steps,
                                width=size, height=size, strength=0.5)  # fmt: skip
        for engine in engines.values():
            engine.generate(request)  # load, warm (and compile)
        pipe = stock_pipeline(engines["engine"], family, request.primary.variant)
        eng_dtype = engines["engine"].dtype

        def stock(scale: float, images: int = 1) -> None:
            pipe.set_ip_adapter_scale(scale)
            s = request.settings
            pipe(prompt=s.prompt, negative_prompt=s.negative_prompt, ip_adapter_image=reference,
                 num_inference_steps=steps, guidance_scale=s.guidance, width=size, height=size,
                 num_images_per_prompt=images, generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip

        singles: dict[str, Callable[[], object]] = {"diffusers, 1 image": lambda: stock(0.5)}
        sweeps: dict[str, Callable[[], object]] = {
            "diffusers, 5 strengths (a loop of set_ip_adapter_scale)": lambda: [stock(s) for s in STRENGTHS],
            "diffusers, lower bound (one call, 5 images)": lambda: stock(0.5, images=5),
        }
        for label, engine in engines.items():
            singles[f"{label}, 1 image"] = lambda e=engine: (e.clear_embed_cache(), e.generate(request))
            sweeps[f"{label}, 5-strength sweep (one pass)"] = lambda e=engine: (
                e.clear_embed_cache(), e.generate_sweep(request.swept(STRENGTHS)))  # fmt: skip
        sweeps |= auto_sweeps(engines["engine"], request)
        demo = None
        if not args.no_app:
            from gradio_client import Client, handle_file

            import app  # only to measure the served app itself

            ref_path = Path(tempfile.mkdtemp()) / "reference.png"
            reference.save(ref_path)
            demo = app.create_app(engines["engine"])
            _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
            client = Client(url, verbose=False)
            call = {"prompt": "a vase", "reference": [{"image": handle_file(str(ref_path))}], "seed": 1,
                    "steps": steps, "strength": 0.5, "width": size, "height": size}  # fmt: skip
            singles["app through gradio_client, 1 image"] = lambda: client.predict(**call, api_name="/general")
            sweeps["app through gradio_client, 5-strength sweep"] = lambda: client.predict(
                **{k: v for k, v in call.items() if k != "strength"}, strengths="0, 0.25, 0.5, 0.75, 1",
                api_name="/general_compare",
            )  # fmt: skip
        for fn in [*singles.values(), *sweeps.values()]:
            fn()  # warm every path once
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in [*singles, *sweeps]}
        for _ in range(args.rounds):  # interleaved: A, B, C, ..., A, B, C, ...
            for label, fn in [*singles.items(), *sweeps.items()]:
                results[label].append(timed(fn, device))
        shape = f"{family.name} ({'full size, random weights' if args.full_size else family.source})"
        title = f"{shape}, {size}x{size}, {steps} steps, {device} {str(eng_dtype).removeprefix('torch.')}"
        baselines = {k: "diffusers, 1 image" for k in singles}
        baselines |= {k: "diffusers, 5 strengths (a loop of set_ip_adapter_scale)" for k in sweeps}
        rounds_table(f"{title}, {args.rounds} interleaved rounds", results, baselines)
        lower = statistics.median(w for w, _ in results["diffusers, lower bound (one call, 5 images)"])
        for label in sweeps:
            if label.startswith("engine") or label.startswith("app"):
                print(f"- {label}: {statistics.median(w for w, _ in results[label]) / lower:.2f}x the lower bound")

        if args.gpu_suite:  # memory with every adapter loaded, and the share of the GPU's bf16 peak
            engine = engines["engine"]
            for variant in preset_for("general", name).variants + preset_for("anime", name).variants:
                engine.use_variant(variant)
            if device == "cuda":
                memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GB allocated (peak, GPU)"
            else:
                memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB resident (peak, CPU)"
            print(f"- memory with the base and every General and Anime adapter loaded: {memory}")
            peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if gpu and k in gpu), None)
            engine.use_variant(None)  # text only for the count: the adapter's share of the FLOPs is small
            flops = unet_flops(engine.pipe, size, size, 2 * len(STRENGTHS), steps)
            for label in (k for k in sweeps if k.startswith("engine")):
                seconds = statistics.median(w for w, _ in results[label])
                share = f", {flops / seconds / 1e12 / peak:.1%} of its bf16 peak" if peak else ""
                print(f"- {label}: UNet {flops / seconds / 1e12:.2f} TFLOP/s{share}")
        if demo is not None:
            demo.close()
    finally:
        if mirror is not None:
            shutil.rmtree(mirror, ignore_errors=True)


if __name__ == "__main__":
    main()
