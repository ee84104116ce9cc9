"""FLUX (XLabs IP-Adapter): a strength sweep in one batched pass vs a loop of stock FluxPipeline calls. Prints tables.

    python -m bench.flux                         # tiny-flux, 128 px, 8 steps, CPU
    python -m bench.flux --family flux --size 1024 --steps 28 --rounds 3    # a GPU with the real weights

The engine renders 5 strengths from one seed in one pass (each sample's image branch scaled by its own strength,
with the preset's per-layer ramp); stock diffusers needs one call per strength (`set_ip_adapter_scale` is one value
per layer for the whole batch). Same files, same seed, same image embedding.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

from bench.stack import interleave
from bench.versus import rounds_table

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny-flux")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from pipelines import Engine, build_request, load_families, load_mode_presets
    from pipelines.adapters import ramp_weights
    from pipelines.images import load_reference

    families = load_families()
    family = families[args.family]
    preset = load_mode_presets(families)["general"][args.family]
    engine = Engine(family, max_batch=len(STRENGTHS))
    engine.load()
    rng = np.random.default_rng(2)
    reference = Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8))
    request = build_request(preset, prompt="a lighthouse", reference=[reference], seed=1, steps=args.steps,
                            width=args.size, height=args.size)  # fmt: skip

    spec = family.adapters["xlabs"]
    stock = (
        engine.arch.pipeline_class()
        .from_pretrained(
            engine.source.resolve(family.base), torch_dtype=engine.dtype, local_files_only=engine.source.local_only
        )
        .to(engine.device)
    )
    stock.set_progress_bar_config(disable=True)
    local = engine.source.local_only
    stock.load_ip_adapter(engine.source.resolve(spec.repo), weight_name=spec.weight_name,
                          image_encoder_pretrained_model_name_or_path=None, local_files_only=local)  # fmt: skip
    ramp = list(ramp_weights(stock.transformer.attn_processors, spec.layer_ramp).values())
    embeds, _, _ = engine.encoder.embed(engine.adapter("xlabs").specs, [(load_reference(reference),), ()], "center", "")
    image = [embeds[0].for_pipeline(False)]
    calls = {"n": 0}
    stock.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    def ours() -> None:
        engine.generate_sweep(request, STRENGTHS)

    def loop() -> None:
        for s in STRENGTHS:
            stock.set_ip_adapter_scale([[s * w for w in ramp]])
            stock(prompt="a lighthouse", num_inference_steps=args.steps, guidance_scale=request.settings.guidance,
                  width=args.size, height=args.size, ip_adapter_image_embeds=image,
                  negative_ip_adapter_image_embeds=image, generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip

    before = engine.counters["unet_calls"]
    ours()
    counted = {"5-strength sweep, one pass": engine.counters["unet_calls"] - before}
    loop()
    counted["5 stock calls"] = calls["n"]
    runs = interleave({"5-strength sweep, one pass": ours, "5 stock calls": loop}, args.rounds, engine.device)
    rounds_table(f"XLabs strength sweep, {args.family}, {args.size} px, {args.steps} steps, {engine.device}", runs,
                 {"5 stock calls": "5-strength sweep, one pass"})  # fmt: skip
    print("\n| variant | transformer calls |\n|---|---|")
    for name, n in counted.items():
        print(f"| {name} | {n} |")


if __name__ == "__main__":
    main()
