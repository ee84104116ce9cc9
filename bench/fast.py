"""Fast mode against quality: time per image and per 5-strength comparison, and how strong the image prompt is in
each. Prints tables.

    python -m bench.fast                          # CPU: the full-size SD1.5 shapes (random weights), 128 px
    python -m bench.fast --family sdxl --size 1024 --rounds 3     # a GPU: SDXL-Lightning's shapes at its size

Every checkpoint the family names (base, adapters, image encoder, the few-step LoRA in its published key form) is
rebuilt at full size with random weights in the Hub's layout and loaded by the engine, as in the dry run.
Sections:
- time: quality (the preset's steps and guidance) vs fast (the LoRA's steps, no guidance), one image and a
  5-strength comparison, interleaved rounds;
- image-prompt strength: at the same strength, (a) the mean size of what the image prompt adds in cross-attention
  relative to the text attention's output (every layer and step; pipelines/attention `attention_stats`), and (b)
  how far the image prompt moves the picture (mean absolute pixel change from strength 0), in quality and in fast.
  Their fast / quality ratios say how much stronger or weaker a strength is in fast mode; `strength_scale` in
  presets/models.toml corrects it.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np

from bench.mirrored import full_size_setup
from bench.versus import rounds_table, timed

STRENGTHS = "0, 0.25, 0.5, 0.75, 1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", help="sd15 / sdxl (full size, random weights) or tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5, help="the strength compared in both modes")
    args = parser.parse_args()

    from pipelines import build_request
    from pipelines.attention import attention_stats

    engine, preset, reference, device, label = full_size_setup(args.family, "fast-mirror-")
    family = engine.family

    def req(speed: str, **kwargs):
        return build_request(preset, prompt="a vase on a table", reference=[reference], seed=1, width=args.size,
                             height=args.size, speed=speed, **kwargs)  # fmt: skip

    variants = {
        f"quality, 1 image ({preset.steps.default} steps, guidance {preset.guidance.default:g})":
            lambda: engine.generate(req("quality", strength=args.strength)),
        f"fast, 1 image ({family.fast.steps} steps, guidance {family.fast.guidance:g})":
            lambda: engine.generate(req("fast", strength=args.strength)),
        "quality, 5-strength comparison": lambda: engine.generate_sweep(req("quality", strengths=STRENGTHS)),
        "fast, 5-strength comparison": lambda: engine.generate_sweep(req("fast", strengths=STRENGTHS)),
    }  # fmt: skip
    for fn in variants.values():
        fn()  # load and warm
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            runs[name].append(timed(fn, device))
    names = list(variants)
    rounds_table(
        f"Fast vs quality, {label}, {args.size} px",
        runs,
        {names[1]: names[0], names[3]: names[2]},
    )

    print(f"\n### Image-prompt strength at strength {args.strength:g}: quality vs fast\n")
    print("| mode | image branch / text branch (cross-attention, mean) | pixel change from strength 0 |")
    print("|---|---|---|")
    measured = {}
    for speed in ("quality", "fast"):
        with attention_stats() as records:
            image = engine.generate(req(speed, strength=args.strength)).image
        zero = engine.generate(req(speed, strength=0.0)).image
        ratio = statistics.mean(a / t for _, a, t in records if t > 0)
        change = float(np.abs(np.asarray(image, np.float32) - np.asarray(zero, np.float32)).mean())
        measured[speed] = (ratio, change)
        print(f"| {speed} | {ratio:.4f} | {change:.2f} / 255 |")
    (rq, cq), (rf, cf) = measured["quality"], measured["fast"]
    print(f"\nfast / quality: attention {rf / rq:.3f}, pixels {cf / cq if cq else float('nan'):.3f} "
          f"(strength_scale in presets/models.toml: {family.fast.strength_scale:g})")  # fmt: skip


if __name__ == "__main__":
    main()
