"""FLUX.2 [klein]: a reference-strength sweep in one pass vs a loop of single renders, and the stock pipeline (which
has no strength: at 1 it is the stock call with the references). Prints tables.

    python -m bench.klein                                  # tiny-flux2-klein, 128 px, 4 steps, CPU
    python -m bench.klein --family flux2-klein --size 1024 --references 1 4 --rounds 3    # a GPU, the real weights
    python -m bench.klein --family tiny-flux2-klein-kv --references 1 2 3 4   # the KV cache's gain, 1-4 references

Each strength other than 0 and 1 adds a branch without the reference (a second transformer call per step); a sweep
runs both branches once per step for every cell together, so it costs the calls of one image at such a strength.
On a KV family (9B-KV) one more row runs the same weights with the references' tokens in every step (no cache): the
cache's gain (the images differ: the model is trained for the cached form).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

from bench.flux import engine_and_stock
from bench.stack import interleave
from bench.versus import rounds_table

STRENGTHS = [0.0, 0.5, 1.0, 1.5, 2.0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny-flux2-klein")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--references", type=int, nargs="*", default=[1], help="reference images per run (1-4)")
    args = parser.parse_args(argv)
    for count in args.references:
        run(args, count)


def run(args: argparse.Namespace, count: int) -> None:
    from dataclasses import replace

    from pipelines import build_request, load_families

    engine, preset, stock, calls = engine_and_stock(load_families()[args.family], len(STRENGTHS))
    rng = np.random.default_rng(2)
    side = max(64, args.size)
    references = [Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)) for _ in range(count)]
    slots = {"slots": [{"mode": "general", "strength": 1.0}] * (count - 1), "slot_images": references[1:]}
    request = build_request(preset, prompt="a lighthouse", reference=references[:1], seed=1, steps=args.steps,
                            width=args.size, height=args.size, **slots)  # fmt: skip
    at = {s: replace(request, image_prompts=(replace(request.primary, strength=s), *request.image_prompts[1:]))
          for s in STRENGTHS}  # fmt: skip

    def stock_call() -> None:
        stock(image=references, prompt="a lighthouse", num_inference_steps=args.steps, width=args.size,
              height=args.size, generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip

    def without_cache() -> None:
        from pipelines.arch.flux2 import Flux2

        arch, engine.arch = engine.arch, Flux2()
        try:
            engine.generate(at[1.0])
        finally:
            engine.arch = arch

    variants = {
        "diffusers, 1 image (strength 1)": stock_call,
        "engine, 1 image at 1": lambda: engine.generate(at[1.0]),
        "engine, 1 image at 0.5": lambda: engine.generate(at[0.5]),
        "5 single renders": lambda: [engine.generate(at[s]) for s in STRENGTHS],
        "5-strength sweep, one pass": lambda: engine.generate_sweep(request.swept(STRENGTHS)),
    }  # fmt: skip
    if engine.arch.kv:
        variants["engine, 1 image at 1, no KV cache"] = without_cache
    counted = {}
    for name, variant in variants.items():
        before_engine, before_stock = engine.counters["unet_calls"], calls["n"]
        variant()
        counted[name] = engine.counters["unet_calls"] - before_engine + calls["n"] - before_stock
    runs = interleave(variants, args.rounds, engine.device)
    baselines = {"engine, 1 image at 1": "diffusers, 1 image (strength 1)",
                 "5-strength sweep, one pass": "5 single renders"}  # fmt: skip
    if engine.arch.kv:
        baselines["engine, 1 image at 1"] = "engine, 1 image at 1, no KV cache"
    rounds_table(f"{args.family}, {count} reference(s), {args.size} px, {args.steps} steps, {engine.device}", runs,
                 baselines)  # fmt: skip
    print("\n| variant | transformer calls |\n|---|---|")
    for name, n in counted.items():
        print(f"| {name} | {n} |")


if __name__ == "__main__":
    main()
