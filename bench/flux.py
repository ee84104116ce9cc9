"""FLUX (XLabs IP-Adapter): a strength sweep in one batched pass vs a loop of stock FluxPipeline calls. Prints tables.

    python -m bench.flux                         # tiny-flux, 128 px, 8 steps, CPU
    python -m bench.flux --family flux --size 1024 --steps 28 --rounds 3    # a GPU with the real weights
    python -m bench.run --gpu-suite             # runs this too: FLUX.1-dev 1024², 28 steps, with and without true CFG

The engine renders 5 strengths from one seed in one pass (each sample's image branch scaled by its own strength,
with the preset's per-layer ramp); stock diffusers needs one call per strength (`set_ip_adapter_scale` is one value
per layer for the whole batch). Same files, same seed, same image embedding.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

from bench.stack import interleave
from bench.versus import rounds_table

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny-flux")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--true-cfg", type=float, nargs="*", default=[1.0], help="true CFG scales to run (1: none)")
    args = parser.parse_args(argv)
    for true_cfg in args.true_cfg:
        run(args, true_cfg)


def run(args: argparse.Namespace, true_cfg: float) -> None:
    from dataclasses import replace

    from pipelines import build_request, load_families
    from pipelines.adapters import ramp_weights
    from pipelines.images import load_reference

    families = load_families()
    family = families[args.family]
    spec = replace(family.adapters["xlabs"], true_cfg=true_cfg)
    family = replace(family, adapters={**family.adapters, "xlabs": spec})
    engine, preset, stock, calls = engine_and_stock(family, len(STRENGTHS))
    rng = np.random.default_rng(2)
    reference = Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8))
    request = build_request(preset, prompt="a lighthouse", reference=[reference], seed=1, steps=args.steps,
                            width=args.size, height=args.size)  # fmt: skip
    single = replace(request, image_prompts=(replace(request.primary, strength=0.7),))

    local = engine.source.local_only
    stock.load_ip_adapter(engine.source.resolve(spec.repo), weight_name=spec.weight_name,
                          image_encoder_pretrained_model_name_or_path=engine.source.resolve(spec.image_encoder.repo),
                          local_files_only=local)  # fmt: skip
    ramp = list(ramp_weights(stock.transformer.attn_processors, spec.layer_ramp).values())
    embeds, _, _ = engine.encoder.embed(engine.adapter("xlabs").specs, [(load_reference(reference),), ()], "center", "")
    image = [embeds[0].for_pipeline(False)]
    cfg = (
        {"true_cfg_scale": true_cfg, "negative_prompt": ""}
        if true_cfg > 1
        else {"negative_ip_adapter_image_embeds": image}
    )

    def stock_call(s: float) -> None:
        stock.set_ip_adapter_scale([[s * w for w in ramp]])
        stock(prompt="a lighthouse", num_inference_steps=args.steps, guidance_scale=request.settings.guidance,
              width=args.size, height=args.size, ip_adapter_image_embeds=image,
              generator=torch.Generator("cpu").manual_seed(1), **cfg)  # fmt: skip

    variants = {
        "diffusers, 1 image": lambda: stock_call(0.7),
        "engine, 1 image": lambda: engine.generate(single),
        "5 stock calls": lambda: [stock_call(s) for s in STRENGTHS],
        "5-strength sweep, one pass": lambda: engine.generate_sweep(request.swept(STRENGTHS)),
    }  # fmt: skip
    counted = {}
    for name in ("5-strength sweep, one pass", "5 stock calls"):
        before_engine, before_stock = engine.counters["unet_calls"], calls["n"]
        variants[name]()
        counted[name] = engine.counters["unet_calls"] - before_engine + calls["n"] - before_stock
    runs = interleave(variants, args.rounds, engine.device)
    label = f", true CFG {true_cfg:g}" if true_cfg > 1 else ""
    rounds_table(f"XLabs, {args.family}, {args.size} px, {args.steps} steps{label}, {engine.device}", runs,
                 {"engine, 1 image": "diffusers, 1 image", "5-strength sweep, one pass": "5 stock calls"})  # fmt: skip
    print("\n| variant | transformer calls |\n|---|---|")
    for name, n in counted.items():
        print(f"| {name} | {n} |")


def engine_and_stock(family: Any, batch: int) -> tuple[Any, Any, Any, dict[str, int]]:
    """A family's engine (bf16 on a GPU; passes of `batch` images), its General preset with sizes up to 2048, the
    stock pipeline from the same files, and a count of the stock transformer's calls (`calls["n"]`)."""
    from dataclasses import replace

    from pipelines import Engine, load_families, load_mode_presets

    preset = load_mode_presets(load_families())["general"][family.name]
    preset = replace(preset, width=replace(preset.width, max=2048), height=replace(preset.height, max=2048),
                     max_pixels=2048 * 2048)  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = Engine(family, device=device, dtype=torch.bfloat16 if device == "cuda" else None, max_batch=batch)
    engine.load()
    local = engine.source.local_only
    stock = engine.arch.pipeline_class().from_pretrained(engine.source.resolve(family.base), torch_dtype=engine.dtype,
                                                         local_files_only=local).to(engine.device)  # fmt: skip
    stock.set_progress_bar_config(disable=True)
    calls = {"n": 0}
    stock.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return engine, preset, stock, calls


if __name__ == "__main__":
    main()
