"""Structure slots: what a ControlNet slot costs per step, and a structure sweep vs a loop of stock calls.

    python -m bench.structure                   # tiny family (128 px, 8 steps) + full-size SD1.5 shapes (256 px), CPU
    python -m bench.structure --size 512 --full-size-px 512 --rounds 5    # a GPU: the native SD1.5 size

Sections (interleaved rounds, one warm-up round first):
- per step, tiny (SDXL-shaped, ControlNet-Union): a render with an image prompt, with and without a canny slot,
  each at 2S minus S steps (encoding, map making and decoding drop out);
- per UNet call, full-size SD1.5 (random weights, published shapes): one guided UNet call on a batch of 2, alone and
  with a ControlNet v1.1 (its call, then the UNet with its residuals);
- a 5-strength sweep of a canny slot in one batched pass vs 5 calls of stock diffusers'
  StableDiffusionXLControlNetUnionPipeline (same files, same seed), with the UNet and ControlNet calls of each.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

from bench.stack import interleave, run_sections
from bench.versus import rounds_table

STRENGTHS = [0.0, 0.3, 0.6, 0.9, 1.2]


def photo(size: int) -> Image.Image:
    rng = np.random.default_rng(3)
    a = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    a[size // 8 : size // 2, size // 8 : size // 2] = (230, 200, 40)
    a[size // 2 : 7 * size // 8, size // 3 : 7 * size // 8] = (30, 60, 220)
    return Image.fromarray(a)


def tiny_sections(args: argparse.Namespace) -> None:
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    from pipelines import Engine, build_request, load_families, load_mode_presets

    families = load_families()
    preset = load_mode_presets(families)["general"]["tiny"]
    engine = Engine(families["tiny"], max_batch=len(STRENGTHS))
    engine.load()
    edges, gold = photo(args.size), photo(96).rotate(90)
    common = dict(prompt="a house", reference=[gold], seed=1, width=args.size, height=args.size)

    def render(canny: bool, steps: int):
        slots = [{"mode": "canny", "strength": 0.8}] if canny else []
        request = build_request(preset, **common, steps=steps, slots=slots, slot_images=[edges] if canny else [])
        return lambda: engine.generate(request)

    variants = {f"{label}, {s} steps": render(canny, s) for canny, label in ((False, "no slot"), (True, "canny slot"))
                for s in (args.steps, 2 * args.steps)}  # fmt: skip
    runs = interleave(variants, args.rounds, engine.device)
    per_step = {}
    for label in ("no slot", "canny slot"):
        short, long = runs[f"{label}, {args.steps} steps"], runs[f"{label}, {2 * args.steps} steps"]
        per_step[label] = [((w2 - w1) / args.steps, (c2 - c1) / args.steps)
                           for (w1, c1), (w2, c2) in zip(short, long, strict=True)]  # fmt: skip
    rounds_table(f"Per denoising step, tiny (ControlNet-Union), {args.size} px, {engine.device}", per_step,
                 {"canny slot": "no slot"})  # fmt: skip

    # A 5-strength sweep of the canny slot vs 5 stock calls.
    sweep_request = build_request(preset, **common, steps=args.steps, slots=[{"mode": "canny"}], slot_images=[edges])
    control_map = engine.slots.structure.control_map(sweep_request.slots[0], args.size, args.size, "")
    spec = engine.family.controlnets["canny"]
    base = engine.source.resolve(engine.family.base)
    stock = StableDiffusionXLControlNetUnionPipeline.from_pretrained(
        base, controlnet=ControlNetUnionModel.from_pretrained(engine.source.resolve(spec.repo)), local_files_only=True
    )
    stock.set_progress_bar_config(disable=True)
    adapter = engine.family.adapters["plain"]
    folder = engine.source.resolve(adapter.repo)
    stock.load_ip_adapter(folder, subfolder=adapter.subfolder, weight_name=adapter.weight_name,
                          image_encoder_folder=None, local_files_only=True)  # fmt: skip
    stock.set_ip_adapter_scale(sweep_request.primary.strength)
    embeds, _, _ = engine.encoder.embed(engine.adapter("plain").specs, [sweep_request.primary.references, ()],
                                        "center", "")  # fmt: skip
    calls = {"unet": 0, "controlnet": 0}
    stock.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))
    stock.controlnet.register_forward_pre_hook(lambda *_: calls.__setitem__("controlnet", calls["controlnet"] + 1))

    def ours() -> None:
        engine.generate_sweep(sweep_request.swept([sweep_request.primary.strength], STRENGTHS))

    def loop() -> None:
        for s in STRENGTHS:
            stock(prompt="a house", negative_prompt=sweep_request.settings.negative_prompt, control_image=[control_map],
                  control_mode=[spec.union_mode], controlnet_conditioning_scale=s, width=args.size, height=args.size,
                  num_inference_steps=args.steps, guidance_scale=sweep_request.settings.guidance,
                  ip_adapter_image_embeds=[embeds[0].for_pipeline(True)],
                  generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip

    before = {k: engine.counters[f"{k}_calls"] for k in calls}
    ours()
    counted = {"5-strength sweep, one pass": {k: engine.counters[f"{k}_calls"] - before[k] for k in calls}}
    loop()
    counted["5 stock calls"] = dict(calls)
    runs = interleave({"5-strength sweep, one pass": ours, "5 stock calls": loop}, args.rounds, engine.device)
    rounds_table(f"Canny strength sweep ({len(STRENGTHS)} strengths), tiny, {args.size} px, {args.steps} steps",
                 runs, {"5 stock calls": "5-strength sweep, one pass"})  # fmt: skip
    print("\n| variant | UNet calls | ControlNet calls |\n|---|---|---|")
    for name, n in counted.items():
        print(f"| {name} | {n['unet']} | {n['controlnet']} |")


def full_size_section(args: argparse.Namespace) -> None:
    from diffusers import ControlNetModel

    from pipelines.offline.full_size import build_unet, unet_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    unet = build_unet("sd15", dtype, device)
    net = ControlNetModel.from_unet(unet).to(device=device, dtype=dtype).eval()
    inputs = unet_inputs("sd15", 2, args.full_size_px, dtype, device)
    cond = torch.rand(2, 3, args.full_size_px, args.full_size_px, device=device, dtype=dtype)

    def alone() -> None:
        with torch.inference_mode():
            unet(**inputs)

    def with_controlnet() -> None:
        with torch.inference_mode():
            down, mid = net(**inputs, controlnet_cond=cond, conditioning_scale=0.8, return_dict=False)
            unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    runs = interleave({"UNet alone": alone, "ControlNet + UNet": with_controlnet}, args.rounds, device)
    title = (f"Per UNet call, full-size SD1.5 (random weights), {args.full_size_px} px, guided batch of 2, "
             f"{device} {str(dtype).removeprefix('torch.')}")  # fmt: skip
    rounds_table(title, runs, {"ControlNet + UNet": "UNet alone"})


def main() -> None:
    run_sections(__doc__.splitlines()[0], tiny_sections, full_size_section)


if __name__ == "__main__":
    main()
