"""Benchmarks: prints a markdown table per section and writes JSON. Not a test: numbers, not pass/fail.

    python -m bench.run                       # tiny family on this machine (CPU here)
    python -m bench.run --full-size           # also full-size SDXL / SD1.5 UNets (bf16 on a GPU; see --help)
    python -m bench.run --gpu-suite [--dry]   # the GPU compass rows against stock diffusers (versus, flux, klein)

Sections:
- sweep: a 5-strength comparison as one batched pass vs 5 sequential renders (time, UNet calls, encoder calls);
- cache: a reference's embedding on a cache miss vs a hit;
- switch: switching adapter variant vs loading the base pipeline;
- overhead: the engine and the Gradio app vs a direct diffusers call with the same components and steps;
- unet (--full-size): full-size UNets with random weights and IP-Adapter layers at their native sizes: seconds per
  image and per 5-strength sweep, UNet FLOPs and the fraction of the GPU's bf16 peak, with and without
  torch.compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10G": 70.0}  # dense, per GPU


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")


def bench_sweep(engine, request, repeats: int) -> dict:
    engine.generate(request)  # warm: adapter loaded
    singles = [replace(request, strength=s) for s in STRENGTHS]

    def batched() -> dict:
        engine.clear_embed_cache()
        return engine.generate_sweep(request.swept(STRENGTHS)).diagnostics

    def sequential(cache: bool) -> dict:
        totals = {"unet_calls": 0, "encoder_calls": 0}
        engine.clear_embed_cache()
        for single in singles:
            if not cache:
                engine.clear_embed_cache()
            d = engine.generate(single).diagnostics
            totals["unet_calls"] += d["unet_calls"]
            totals["encoder_calls"] += d["encoder_calls"]
        return totals

    out = {}
    for name, fn in {
        "batched sweep (1 pass)": batched,
        "5 sequential renders, embedding cache on": lambda: sequential(True),
        "5 sequential renders, no cache (other tools)": lambda: sequential(False),
    }.items():
        counts = fn()
        out[name] = {
            "seconds": median_time(fn, repeats),
            "unet_calls": counts["unet_calls"],
            "encoder_calls": counts["encoder_calls"],
        }
    base = out["batched sweep (1 pass)"]["seconds"]
    table(
        f"5-strength sweep, {request.settings.steps} steps, {request.settings.width}x{request.settings.height}",
        ["path", "median s", "time / batched", "UNet calls", "encoder calls"],
        [[k, v["seconds"], v["seconds"] / base, v["unet_calls"], v["encoder_calls"]] for k, v in out.items()],
    )
    return out


def bench_cache(engine, request, repeats: int) -> dict:
    adapter = engine.adapter(request.primary.variant)

    def miss() -> None:
        engine.clear_embed_cache()
        engine.encoder.embed(adapter.specs, request.primary.groups, request.primary.crop, "")

    def hit() -> None:
        engine.encoder.embed(adapter.specs, request.primary.groups, request.primary.crop, "")

    def render_miss() -> None:
        engine.clear_embed_cache()
        engine.generate(request)

    out = {
        "embedding, miss": median_time(miss, repeats),
        "embedding, hit": median_time(hit, repeats),
        "render, miss": median_time(render_miss, repeats),
        "render, hit": median_time(lambda: engine.generate(request), repeats),
    }
    table("Embedding cache", ["case", "median s"], [[k, v] for k, v in out.items()])
    return out


def bench_switch(family, engine, repeats: int) -> dict:
    from pipelines import Engine

    def load_base() -> None:
        Engine(family, device=engine.device, dtype=engine.dtype).load()

    for variant in family.adapters:
        engine.use_variant(variant)  # all loaded and cached
    with_lora = [n for n, spec in family.adapters.items() if spec.lora_weight > 0]
    plain = [n for n in family.adapters if n not in with_lora]
    state = {"i": 0}

    def cycle(names: list[str]) -> Callable[[], None]:
        def switch() -> None:
            state["i"] += 1
            engine.use_variant(names[state["i"] % len(names)])

        return switch

    loads_before = engine.counters["base_loads"], engine.counters["adapter_loads"]
    out = {"base pipeline load": median_time(load_base, max(1, repeats // 4))}
    out["variant switch"] = median_time(cycle(plain), repeats * 5)
    if with_lora:  # FaceID's LoRA goes on and off with its mode (PEFT walks every module)
        out["switch with LoRA on/off"] = median_time(cycle([plain[0], with_lora[0]]), repeats * 5)
    assert (engine.counters["base_loads"], engine.counters["adapter_loads"]) == loads_before, "a switch reloaded"
    for key in [k for k in out if k != "base pipeline load"]:
        out[f"{key} / load"] = out[key] / out["base pipeline load"]
    table("Mode switch vs base load", ["case", "value"], [[k, v] for k, v in out.items()])
    return out


def bench_overhead(
    family, preset, engine, reference: Image.Image, steps: int, size: int, repeats: int, with_app: bool
) -> dict:
    from pipelines import build_request

    def request_now():  # what the app does per request: validate, load and hash the reference
        return build_request(preset, prompt="a vase", references=[reference], seed=1, steps=steps, strength=0.6,
                             width=size, height=size)  # fmt: skip

    from bench.versus import stock_pipeline

    request = request_now()
    pipe = stock_pipeline(engine, family, request.primary.variant)
    pipe.set_ip_adapter_scale(request.primary.strength)

    s = request.settings

    def direct() -> None:
        pipe(
            prompt=s.prompt, negative_prompt=s.negative_prompt, ip_adapter_image=reference,
            num_inference_steps=s.steps, guidance_scale=s.guidance, width=s.width,
            height=s.height, generator=torch.Generator("cpu").manual_seed(s.seed),
        )  # fmt: skip

    def through_engine() -> None:
        # A full request as the app builds it (validation, reference hashing) and a cold embedding, like `direct`.
        engine.clear_embed_cache()
        engine.generate(request_now())

    out = {"direct diffusers": median_time(direct, repeats), "engine": median_time(through_engine, repeats)}
    if with_app:
        from gradio_client import Client, handle_file

        import app  # only to measure the served app itself

        ref_path = Path("/tmp/bench-reference.png")
        reference.save(ref_path)
        demo = app.create_app(engine)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False)
        out["app through gradio_client"] = median_time(
            lambda: client.predict(
                prompt="a vase", reference=[{"image": handle_file(str(ref_path))}], seed=1, steps=steps,
                strength=0.6, width=size, height=size, api_name="/general",
            ),
            repeats,
        )  # fmt: skip
        demo.close()
    base = out["direct diffusers"]
    table(
        f"Overhead over a direct diffusers call ({steps} steps, {request.settings.width}x{request.settings.height})",
        ["path", "median s", "ratio"],
        [[k, v, v / base] for k, v in out.items()],
    )
    return out


def bench_unet(
    pipeline: str, device: str, dtype: torch.dtype, steps: int, size: int, compile_: bool, repeats: int
) -> dict:
    """The denoising loop's UNet work at full size: one image (batch 2 under guidance) and a 5-sweep (batch 10)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.attention import sample_scales, wrap_ip_processors
    from pipelines.offline.full_size import VIT_H, build_unet, ip_adapter_state_dict, unet_inputs

    unet = build_unet(pipeline, dtype, device)
    unet._load_ip_adapter_weights([ip_adapter_state_dict(pipeline, "pooled")], low_cpu_mem_usage=False)
    unet.set_attn_processor(wrap_ip_processors(unet.attn_processors))
    unet.to(device=device, dtype=dtype)
    model = torch.compile(unet) if compile_ else unet
    out = {}
    for label, strengths in (("image", [0.5]), ("5-sweep", STRENGTHS)):
        rows = 2 * len(strengths)  # [uncond x N, cond x N]
        inputs = unet_inputs(pipeline, rows, size, dtype, device)
        embeds = torch.randn(rows, 1, VIT_H["projection_dim"], device=device, dtype=dtype)
        inputs.setdefault("added_cond_kwargs", {})["image_embeds"] = [embeds]

        def denoise(n_steps: int = steps, inputs: dict = inputs, strengths: list = strengths) -> None:
            with torch.inference_mode(), sample_scales(strengths, True, device, dtype):
                for _ in range(n_steps):
                    model(**inputs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        with (
            FlopCounterMode(display=False) as counter,
            torch.inference_mode(),
            sample_scales(strengths, True, device, dtype),
        ):
            unet(**inputs)
        flops = counter.get_total_flops() * steps
        denoise(2)  # warm-up (and compilation)
        seconds = median_time(denoise, repeats, warmup=0)
        out[label] = {"seconds": seconds, "tflop": flops / 1e12, "tflops_per_s": flops / seconds / 1e12}
    return out


def main() -> None:
    if "--gpu-suite" in sys.argv:  # the GPU compass rows (bench/versus.py), with its own flags (--dry, --rounds)
        from bench import flux, klein, versus

        versus.main()
        dry = "--dry" in sys.argv  # FLUX: tiny-flux on CPU, or FLUX.1-dev 1024², 28 steps, with and without true CFG
        flux.main(["--family", "tiny-flux", "--size", "64", "--steps", "2", "--rounds", "1", "--true-cfg", "1", "4"]
                  if dry else ["--family", "flux", "--size", "1024", "--steps", "28", "--rounds", "3",
                               "--true-cfg", "1", "4"])  # fmt: skip
        for family in ("flux2-klein", "flux2-klein-kv"):  # FLUX.2 [klein]: 1 and 4 references, 4 steps
            klein.main(["--family", f"tiny-{family}", "--size", "64", "--steps", "2", "--rounds", "1", "--references",
                        "1", "4"] if dry else ["--family", family, "--size", "1024", "--steps", "4", "--rounds", "3",
                                               "--references", "1", "4"])  # fmt: skip
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="family for the engine sections (default: tiny)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="pixels of the engine sections' images")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-app", action="store_true", help="skip the Gradio round trip")
    parser.add_argument("--full-size", action="store_true", help="also benchmark full-size UNets (GPU: bf16)")
    parser.add_argument("--unet-steps", type=int, default=30)
    parser.add_argument("--unet-size", type=int, default=None, help="pixels (default: native 1024 / 512)")
    parser.add_argument("--unet-pipelines", default="sdxl,sd15")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", default="bench/results.json")
    args = parser.parse_args()

    from pipelines import Engine, build_request, load_families
    from pipelines.presets import preset_for

    family = load_families()[args.models]
    preset = preset_for("general", args.models)
    engine = Engine(family)
    engine.load()
    rng = np.random.default_rng(0)
    reference = Image.fromarray((rng.random((160, 128, 3)) * 255).astype(np.uint8))
    request = build_request(
        preset, prompt="a vase", references=[reference], seed=1, steps=args.steps, width=args.size, height=args.size
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu,
               "torch": torch.__version__, "device": engine.device, "dtype": str(engine.dtype)}  # fmt: skip
    print(f"machine: {machine}")
    results: dict = {"machine": machine, "models": args.models}
    results["sweep"] = bench_sweep(engine, request, args.repeats)
    results["cache"] = bench_cache(engine, request, args.repeats)
    results["switch"] = bench_switch(family, engine, args.repeats)
    results["overhead"] = bench_overhead(
        family, preset, engine, reference, args.steps, args.size, args.repeats, not args.no_app
    )

    if args.full_size:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if gpu and k in gpu), None)
        rows = []
        results["unet"] = {}
        for pipeline in args.unet_pipelines.split(","):
            size = args.unet_size or {"sdxl": 1024, "sd15": 512}[pipeline]
            for compile_ in [False] + ([] if args.no_compile or device == "cpu" else [True]):
                r = bench_unet(pipeline, device, dtype, args.unet_steps, size, compile_, max(1, args.repeats // 3))
                results["unet"][f"{pipeline}{' compiled' if compile_ else ''}"] = r
                for label, v in r.items():
                    frac = v["tflops_per_s"] / peak if peak else None
                    rows.append([pipeline, size, "yes" if compile_ else "no", label, v["seconds"], v["tflop"],
                                 v["tflops_per_s"], f"{frac:.1%}" if frac else "n/a"])  # fmt: skip
        table(
            f"Full-size UNets, random weights, {args.unet_steps} steps, {device} {str(dtype).removeprefix('torch.')}",
            ["UNet", "px", "compile", "work", "seconds", "TFLOP", "TFLOP/s", "of bf16 peak"],
            rows,
        )
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
