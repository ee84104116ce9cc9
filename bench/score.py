"""What scoring a comparison costs, at the full-size SD1.5 shapes (random weights). Prints tables.

    python -m bench.score                         # CPU: 256 px, 4 steps interleaved; the 512 px, 30-step share
    python -m bench.score --size 512 --steps 30   # a GPU: the preset's own size and steps, measured directly

Every checkpoint the sd15 family names (the base, the adapters, the ViT-H image encoder, the scorer's CLIP checkpoint)
is rebuilt at full size with random weights in the Hub's layout and loaded by the engine, as in the dry run.
Sections:
- a 5-strength comparison without and with scoring, interleaved rounds (wall time; encoder calls);
- the share of scoring in a comparison at the preset's 512 x 512 and 30 steps: one and two denoising steps of the
  sweep are measured (the fixed part and the per-step part), the 30-step sweep is their extrapolation, and scoring
  is measured on 512 px cells;
- the scorer's text tower at its real depth (24 layers; the mirror's has 2): one prompt.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch

from bench.mirrored import full_size_setup
from bench.versus import rounds_table, timed

STRENGTHS = "0, 0.25, 0.5, 0.75, 1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--family", default="sd15", help="sd15 (full size, random weights) or tiny (a smoke run)")
    parser.add_argument("--share-only", action="store_true", help="only the share at the preset's size and steps")
    args = parser.parse_args()

    from pipelines import load_families, load_mode_presets

    families = load_families()
    presets = load_mode_presets(families)
    from pipelines import build_request

    engine, preset, reference, device, label = full_size_setup(args.family, "score-mirror-")

    def sweep_request(size: int, steps: int):
        return build_request(preset, prompt="a vase on a table", reference=[reference], seed=1, steps=steps,
                             width=size, height=size, strengths=STRENGTHS)  # fmt: skip

    request = sweep_request(args.size, args.steps)
    calls = {}

    def run(score: bool) -> None:
        calls[score] = engine.generate_sweep(request, score=score).diagnostics["encoder_calls"]

    if not args.share_only:
        runs = {"5-strength sweep": [], "5-strength sweep, scored": []}
        run(False), run(True)  # load and warm every model (the text tower too)
        for _ in range(args.rounds):
            runs["5-strength sweep"].append(timed(lambda: run(False), device))
            runs["5-strength sweep, scored"].append(timed(lambda: run(True), device))
        rounds_table(
            f"Scoring a comparison, {label}, {args.size} px, {args.steps} steps",
            runs,
            {"5-strength sweep, scored": "5-strength sweep"},
        )
        counts = f"{calls[False]} unscored, {calls[True]} scored"
        print(f"\nencoder calls per sweep (embeddings cached after the first): {counts}")

    # The share at the preset's size and steps, from one- and two-step sweeps (CPU cannot run 30 steps in minutes).
    engine.generate_sweep(sweep_request(64, 1), score=True)  # every model loaded before anything is timed
    full, default_steps = preset.width.default, presets["general"][args.family].steps.default
    one = statistics.median(
        engine.generate_sweep(sweep_request(full, 1)).diagnostics["seconds"] for _ in range(args.rounds)
    )
    two = statistics.median(
        engine.generate_sweep(sweep_request(full, 2)).diagnostics["seconds"] for _ in range(args.rounds)
    )
    scored = [engine.generate_sweep(sweep_request(full, 1), score=True).diagnostics for _ in range(args.rounds)]
    score_s = statistics.median(d["score_seconds"] for d in scored)
    per_step, fixed = two - one, 2 * one - two
    total = fixed + default_steps * per_step
    print(f"\n### Share of scoring at {full} px, {default_steps} steps ({device})\n")
    print("| part | seconds |\n|---|---|")
    print(f"| one denoising step of the 5-sweep (batch 10 under guidance) | {per_step:.3f} |")
    print(f"| fixed part of the sweep (text, noise, VAE decode) | {fixed:.3f} |")
    print(f"| the sweep at {default_steps} steps (fixed + {default_steps} steps) | {total:.1f} |")
    print(f"| scoring its 5 cells (one image-encoder call, one text call) | {score_s:.3f} |")
    print(f"| scoring / sweep | {score_s / total:.2%} |")

    if engine.family.source == "local":  # the text tower at its real depth: the mirror keeps 2 of its 24 layers
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        config = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                projection_dim=1024, vocab_size=49408, max_position_embeddings=77)  # fmt: skip
        tower = CLIPTextModelWithProjection(config).to(device, engine.dtype).eval()
        ids = torch.randint(0, 49408, (1, 77), device=device)
        with torch.inference_mode():
            tower(input_ids=ids)
            times = [timed(lambda: tower(input_ids=ids), device)[0] for _ in range(args.rounds)]
        print(f"\ntext tower at its real depth (24 layers), one prompt: {statistics.median(times):.3f} s "
              f"(the mirror's 2-layer tower is in the rows above; add the difference to the scoring time)")  # fmt: skip


if __name__ == "__main__":
    main()
