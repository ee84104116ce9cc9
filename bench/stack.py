"""Stacked image prompts: what a 2-D sweep saves and what each added image prompt (slot) costs. Prints tables.

    python -m bench.stack                      # tiny family (128 px, 8 steps) + full-size SD1.5 UNet (256 px) on CPU
    python -m bench.stack --size 512 --full-size-px 512 --rounds 5    # a GPU: the native SD1.5 size

Sections (interleaved rounds: A, B, A, B, ...; never back to back):
- 2-D sweep: a 3 x 3 grid (general strength x style strength) in batched passes vs 9 sequential single renders:
  UNet calls and time;
- slots, tiny: one render with 1, 2, 3 and 4 image prompts (the tab's own, then style, general, general slots);
- slots, full-size SD1.5 UNet (random weights, the published shapes): one UNet call on a guided batch of 2 with
  1 to 4 IP-Adapters combined, each at a non-zero strength.
Each slot table ends with the cost of one added slot per denoising step: (time with k prompts / time with 1 - 1)
/ (k - 1), the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch
from PIL import Image

from bench.versus import rounds_table, timed

GRID = ([0.0, 0.5, 1.0], [0.0, 0.6, 1.2])  # rows: the tab's own prompt; columns: the extra (style) prompt


def interleave(variants: dict, rounds: int, device: str) -> dict[str, list[tuple[float, float]]]:
    """Every variant once per round, in the same order; one warm-up round first."""
    for fn in variants.values():
        fn()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            out[name].append(timed(fn, device))
    return out


def engine_sections(args: argparse.Namespace) -> dict:
    from pipelines import load_families, load_mode_presets

    families = load_families()
    presets = load_mode_presets(families)
    from pipelines import Engine, build_request

    family = families["tiny"]
    engine = Engine(family, max_batch=9)  # the whole 3 x 3 grid in one pass
    engine.load()
    rng = np.random.default_rng(0)
    gold = Image.fromarray((rng.random((160, 128, 3)) * 255).astype(np.uint8))
    paint = Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8))
    preset = presets["general"]["tiny"]
    common = dict(prompt="a vase", reference=[gold], seed=1, steps=args.steps, width=args.size, height=args.size)
    stack = dict(common, extra_mode="style", extra_reference=[paint])
    grid = build_request(preset, **stack, strengths=GRID[0], extra_strengths=GRID[1])
    singles = [build_request(preset, **stack, strength=s, extra_strength=e) for s in GRID[0] for e in GRID[1]]
    results: dict = {}

    calls = {}

    def count(name: str, fn) -> None:
        before = engine.counters["unet_calls"]
        fn()
        calls[name] = engine.counters["unet_calls"] - before

    def sweep() -> None:
        engine.generate_sweep(grid)

    def sequential() -> None:
        for r in singles:
            engine.generate(r)

    count("3 x 3 grid, batched", sweep)
    count("9 sequential renders", sequential)
    runs = interleave({"3 x 3 grid, batched": sweep, "9 sequential renders": sequential}, args.rounds, engine.device)
    rounds_table(f"2-D sweep, tiny, {args.size} px, {args.steps} steps, {engine.device}", runs,
                 {"9 sequential renders": "3 x 3 grid, batched"})  # fmt: skip
    print("\n| variant | UNet calls |\n|---|---|")
    for name, n in calls.items():
        print(f"| {name} | {n} |")
    results["grid"] = {"calls": calls, "seconds": {k: statistics.median(w for w, _ in v) for k, v in runs.items()}}

    kinds = [{"mode": "style", "strength": 0.8}, {"mode": "general", "strength": 0.5},
             {"mode": "general", "strength": 0.4, "region": "left"}]  # fmt: skip

    def render(n: int, steps: int):
        request = build_request(preset, **{**common, "steps": steps}, strength=0.6, slots=kinds[:n],
                                slot_images=[paint, gold, paint][:n])  # fmt: skip
        return lambda: engine.generate(request)

    # Per denoising step: a render at 2S steps minus one at S steps, so encoding, the adapter switch and decoding
    # (once per render) drop out.
    variants = {}
    for n in range(4):
        variants[f"{prompts_label(n + 1)}, {args.steps} steps"] = render(n, args.steps)
        variants[f"{prompts_label(n + 1)}, {2 * args.steps} steps"] = render(n, 2 * args.steps)
    runs = interleave(variants, args.rounds, engine.device)
    per_step = {}
    for n in range(1, 5):
        label = prompts_label(n)
        short, long = runs[f"{label}, {args.steps} steps"], runs[f"{label}, {2 * args.steps} steps"]
        per_step[label] = [((w2 - w1) / args.steps, (c2 - c1) / args.steps)
                           for (w1, c1), (w2, c2) in zip(short, long, strict=True)]  # fmt: skip
    title = f"Image prompts per denoising step, tiny, {args.size} px ({2 * args.steps} minus {args.steps} steps)"
    results["slots_tiny"] = slot_table(title, per_step)
    return results


def prompts_label(n: int) -> str:
    return "1 image prompt" if n == 1 else f"{n} image prompts"


def slot_table(title: str, runs: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """The rounds table, then the cost of one added slot: (t_k / t_1 - 1) / (k - 1), median over rounds."""
    base = prompts_label(1)
    rounds_table(title, runs, {name: base for name in runs})
    print("\n| image prompts | cost of each added slot (median over rounds) |\n|---|---|")
    costs = {}
    for k, name in enumerate(runs, 1):
        if k == 1:
            continue
        per_round = [(w / b - 1) / (k - 1) for (w, _), (b, _) in zip(runs[name], runs[base], strict=True)]
        costs[name] = statistics.median(per_round)
        print(f"| {k} | {100 * costs[name]:+.1f} % ({100 * min(per_round):+.1f} to {100 * max(per_round):+.1f}) |")
    return costs


def full_size_section(args: argparse.Namespace) -> dict:
    """One guided UNet call at the full-size SD1.5 shapes with 1 to 4 IP-Adapters (the engine's combinations)."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    from pipelines.attention import PromptScale, combine_processors, prompt_scales, wrap_ip_processors
    from pipelines.offline.full_size import VIT_H, build_unet, ip_adapter_state_dict, unet_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    unet = build_unet("sd15", dtype, device)
    loaded = []
    for seed in range(1, 5):
        unet._load_ip_adapter_weights([ip_adapter_state_dict("sd15", "pooled", seed=seed)], low_cpu_mem_usage=False)
        loaded.append((wrap_ip_processors(unet.attn_processors), unet.encoder_hid_proj))
    setups = [
        (combine_processors([p for p, _ in loaded[:n]]),
         MultiIPAdapterImageProjection([layer for _, proj in loaded[:n] for layer in proj.image_projection_layers]))
        for n in range(1, 5)
    ]  # fmt: skip
    unet.to(device=device, dtype=dtype)
    inputs = unet_inputs("sd15", 2, args.full_size_px, dtype, device)
    embeds = torch.randn(2, 1, VIT_H["projection_dim"], device=device, dtype=dtype)

    def call(setup: tuple, prompts: int):
        def run() -> None:
            unet.set_attn_processor(dict(setup[0]))  # it pops from the dict it gets
            unet.encoder_hid_proj = setup[1]
            kwargs = dict(inputs, added_cond_kwargs={"image_embeds": [embeds] * prompts})
            scales = [PromptScale([0.7 - 0.1 * i]) for i in range(prompts)]
            with torch.inference_mode(), prompt_scales(scales, True, device, dtype, list(range(prompts))):
                unet(**kwargs)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    runs = interleave({prompts_label(n): call(setups[n - 1], n) for n in range(1, 5)}, args.rounds, device)
    title = (f"Image prompts per UNet call, full-size SD1.5 UNet (random weights), {args.full_size_px} px, one guided "
             f"step, {device} {str(dtype).removeprefix('torch.')}")  # fmt: skip
    return slot_table(title, runs)


def run_sections(description: str, tiny: Any, full_size: Any) -> None:
    """Parse the shared options (tiny steps and size, full-size size, rounds), print the machine, run both parts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--full-size-px", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-full-size", action="store_true")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, gpu {gpu}, "
          f"torch {torch.__version__}")  # fmt: skip
    tiny(args)
    if not args.no_full_size:
        full_size(args)


def main() -> None:
    run_sections(__doc__.splitlines()[0], engine_sections, full_size_section)


if __name__ == "__main__":
    main()
