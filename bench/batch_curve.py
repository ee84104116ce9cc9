"""The time-per-image curve that `--max-batch auto` measures, on the full-size UNet shapes: prints a table.

    python -m bench.batch_curve                          # full-size SD1.5 UNet, random weights, fp32 CPU, 256 px
    python -m bench.batch_curve --pipeline sdxl --size 1024 --dtype bf16    # on a GPU

Each batch size is one UNet call on 2 x batch rows (guidance), timed after a warm-up, median of `--repeats`; the
planner (pipelines/plan.py) then picks the split of a 5- and a 10-image sweep from the curve it would measure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipelines.offline.full_size import build_unet, unet_inputs
from pipelines.plan import CANDIDATES, BatchPlanner, predict

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max", type=int, default=8, help="largest batch measured")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    unet = build_unet(args.pipeline, dtype, device).eval()

    def measure(batch: int) -> float:
        inputs = unet_inputs(args.pipeline, 2 * batch, args.size, dtype, device)
        times = []
        with torch.inference_mode():
            for i in range(args.repeats + 1):
                start = time.perf_counter()
                unet(**inputs)
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first call is the warm-up
                    times.append(time.perf_counter() - start)
        return statistics.median(times)

    curve = {b: measure(b) for b in CANDIDATES if b <= args.max}
    planner = BatchPlanner()
    planner.curves["bench"] = dict(curve)
    print(f"\n### Time per image against batch size: {args.pipeline} UNet, {args.size} px, {args.dtype}, {device}\n")
    print("| batch (images) | UNet rows | seconds per step | seconds per image | vs batch 1 |")
    print("|---|---|---|---|---|")
    for b, t in curve.items():
        print(f"| {b} | {2 * b} | {t:.3f} | {t / b:.3f} | {t / b / curve[1]:.2f} |")
    print("\n| sweep | plan chosen | predicted s per step | one at a time | ratio |")
    print("|---|---|---|---|---|")
    for n in (5, 10):
        plan = planner.chunks("bench", n)
        cost = sum(predict(curve, b) for b in plan)
        alone = n * curve[1]
        print(f"| {n} images | {'+'.join(map(str, plan))} | {cost:.3f} | {alone:.3f} | {cost / alone:.2f} |")


if __name__ == "__main__":
    main()
