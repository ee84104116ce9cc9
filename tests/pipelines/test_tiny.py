"""The tiny family is written in the real checkpoint formats and generated once."""

from __future__ import annotations

import json

from safetensors import safe_open

from pipelines.offline.tiny import IP_ADAPTER_REPO, SDXL_BASE, ensure_tiny_models


def test_real_formats(tiny_root):
    index = json.loads((tiny_root / SDXL_BASE / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert (tiny_root / SDXL_BASE / "unet" / "diffusion_pytorch_model.safetensors").exists()
    with safe_open(str(tiny_root / IP_ADAPTER_REPO / "sdxl_models" / "ip-adapter_sdxl.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"image_proj.proj.weight", "image_proj.norm.weight", "ip_adapter.1.to_k_ip.weight"} <= keys
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in keys)
    assert (tiny_root / IP_ADAPTER_REPO / "models" / "image_encoder" / "config.json").exists()


def test_sdxl_shaped_unet_has_real_block_names(engines):
    names = set(engines["tiny"].pipe.unet.attn_processors)
    # InstantStyle addresses up_blocks.0 attentions 0..2 and down_blocks.2: they exist here as on SDXL.
    assert "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor" in names
    assert "down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor" in names
    assert not any(n.startswith("down_blocks.0.attentions") for n in names)


def test_generated_once(tiny_root):
    marker = (tiny_root / "COMPLETE").stat().st_mtime_ns
    assert ensure_tiny_models(tiny_root) == tiny_root
    assert (tiny_root / "COMPLETE").stat().st_mtime_ns == marker
