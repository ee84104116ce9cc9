"""The app's overhead over a direct diffusers call with the same components and steps.

Prints a markdown table and writes JSON. Run: `python bench/overhead.py [--models tiny] [--repeats 20]`.
Three paths render the same request (one reference, same seed, steps, size):
- direct: a stock diffusers pipeline with `load_ip_adapter` and `ip_adapter_image` (what a script would do);
- engine: `Engine.generate` (request validation, embeddings, per-sample scale, metadata);
- app: the Gradio endpoint through `gradio_client` (adds HTTP, queue, file upload and PNG writing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default="bench/overhead.json")
    parser.add_argument("--no-app", action="store_true", help="skip the Gradio round trip")
    args = parser.parse_args()

    import app
    from pipelines import Engine, build_request

    torch.manual_seed(0)
    reference = Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8))
    ref_path = Path("/tmp/bench-reference.png")
    reference.save(ref_path)

    family = app.FAMILIES[args.models]
    preset = app.PRESETS["general"][args.models]
    engine = Engine(family)
    engine.load()
    request = build_request(preset, prompt="a vase", references=[reference], seed=1, steps=args.steps, strength=0.6)

    spec = family.adapters[preset.variant]
    cls = StableDiffusionXLPipeline if family.pipeline == "sdxl" else StableDiffusionPipeline
    local = family.source == "tiny"
    pipe = cls.from_pretrained(engine._resolve(family.base), torch_dtype=engine.dtype, local_files_only=local)
    pipe.to(engine.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        engine._resolve(spec.repo),
        subfolder=spec.subfolder,
        weight_name=spec.weight_name,
        image_encoder_folder=spec.image_encoder.subfolder,
        local_files_only=local,
    )
    pipe.set_ip_adapter_scale(request.strength)

    def direct() -> None:
        pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            ip_adapter_image=reference,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            width=request.width,
            height=request.height,
            generator=torch.Generator("cpu").manual_seed(request.seed),
        )

    def through_engine() -> None:
        engine.generate(
            build_request(preset, prompt="a vase", references=[reference], seed=1, steps=args.steps, strength=0.6)
        )

    results = {"direct": timed(direct, args.repeats), "engine": timed(through_engine, args.repeats)}
    if not args.no_app:
        from gradio_client import Client, handle_file

        demo = app.create_app(engine)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False)

        def through_app() -> None:
            client.predict(
                prompt="a vase",
                reference=[{"image": handle_file(str(ref_path))}],
                seed=1,
                steps=args.steps,
                strength=0.6,
                api_name="/general",
            )

        results["app (gradio_client)"] = timed(through_app, args.repeats)
        demo.close()

    base = statistics.median(results["direct"])
    rows = []
    print(
        f"\nfamily {args.models}, {engine.device}, {request.width}x{request.height}, {args.steps} steps, "
        f"{args.repeats} repeats (median)\n"
    )
    print("| path | median s | ratio to direct |")
    print("|---|---|---|")
    for name, times in results.items():
        med = statistics.median(times)
        rows.append({"path": name, "median_s": med, "ratio": med / base, "times": times})
        print(f"| {name} | {med:.4f} | {med / base:.3f} |")
    Path(args.json).write_text(json.dumps({"models": args.models, "device": engine.device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
