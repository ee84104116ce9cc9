"""The setup the full-size benchmarks share: an engine on a family's full-size shapes (random weights, every
checkpoint rebuilt in the Hub's layout, as in the dry run), a General preset that allows any size, a reference."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def full_size_setup(name: str, prefix: str) -> tuple:
    """(engine, preset, reference, device, label) for family `name`; a Hub family is mirrored at full size."""
    from pipelines import load_families, load_mode_presets

    families = load_families()
    presets = load_mode_presets(families)
    from pipelines import Engine
    from pipelines.offline.full_size import write_mirror
    from pipelines.offline.tiny import write_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    family, mirror = families[name], None
    if family.source == "hub":
        mirror = Path(tempfile.mkdtemp(prefix=prefix))
        start = time.perf_counter()
        write_tokenizer(mirror / "tokenizer-files")
        write_mirror(mirror, family, mirror / "tokenizer-files", dtype=dtype)
        family = replace(family, source="local", faces=None)
        print(f"built the full-size mirror in {time.perf_counter() - start:.0f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, gpu: "
          f"{torch.cuda.get_device_name() if device == 'cuda' else None}, torch {torch.__version__}")  # fmt: skip
    engine = Engine(family, device=device, dtype=dtype, tiny_root=mirror, max_batch=8)
    preset = presets["general"][name]
    preset = replace(preset, width=replace(preset.width, min=64, max=2048),
                     height=replace(preset.height, min=64, max=2048), max_pixels=2048 * 2048)  # fmt: skip
    reference = Image.fromarray((np.random.default_rng(0).random((160, 128, 3)) * 255).astype(np.uint8))
    label = (
        f"{name} ({'full size, random weights' if mirror else 'tiny'}), {device} {str(dtype).removeprefix('torch.')}"
    )
    return engine, preset, reference, device, label
