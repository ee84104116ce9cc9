"""What row-exact linear layers and one-image VAE decodes cost (pipelines/numerics.py). Prints a table.

    python -m bench.numerics                       # CPU: tiny SDXL-shaped family, then full-size SD1.5 shapes
    python -m bench.numerics --family tiny --rounds 7

Interleaved rounds (A, B, A, B ...) of one image and a 5-strength comparison, with the row-exact `F.linear` and
VAE slicing on (as served) and off (stock torch and diffusers); medians and per-round ratios.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch.nn.functional as F

from bench.mirrored import full_size_setup
from bench.versus import rounds_table, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", help="tiny, or sd15 / sdxl (full size, random weights)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from pipelines import build_request, numerics

    engine, preset, reference, device, label = full_size_setup(args.family, "numerics-mirror-")
    engine.load()
    vae = engine.pipe.vae
    single = build_request(preset, prompt="a vase", seed=1, steps=2, width=args.size, height=args.size,
                           references=[reference])  # fmt: skip
    sweep = build_request(preset, prompt="a vase", seed=1, steps=2, width=args.size, height=args.size,
                          references=[reference], strengths="0, 0.25, 0.5, 0.75, 1")  # fmt: skip

    def exact(on: bool) -> None:
        F.linear = numerics._linear if on else numerics._stock_linear
        vae.enable_slicing() if on else vae.disable_slicing()

    results: dict[str, list[tuple[float, float]]] = {}
    engine.generate(single), engine.generate_sweep(sweep)  # warm-up
    for _ in range(args.rounds):
        for on in (False, True):
            exact(on)
            name = "row-exact" if on else "stock"
            results.setdefault(f"one image, {name}", []).append(timed(lambda: engine.generate(single), device))
            results.setdefault(f"5-cell sweep, {name}", []).append(timed(lambda: engine.generate_sweep(sweep), device))
    exact(True)
    rounds_table(f"{label}, {args.size} px, 2 steps", results,
                 {k: k.replace("row-exact", "stock") for k in results})  # fmt: skip


if __name__ == "__main__":
    main()
