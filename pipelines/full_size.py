"""Full-size UNets from their published configs, and IP-Adapter state dicts with the published key names and shapes.

Used by the benchmark and the dry-run tests: nothing can be downloaded here, so the real shapes are rebuilt with
random weights and pushed through the same loading code (`load_ip_adapter`) the real checkpoints take.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from .tiny import cross_attention_hidden_sizes, ip_adapter_layers, plain_image_proj, plus_image_proj

# `unet/config.json` of stable-diffusion-v1-5/stable-diffusion-v1-5 (fields that differ from diffusers defaults).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}

# `unet/config.json` of stabilityai/stable-diffusion-xl-base-1.0.
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled text + 6 time ids x 256
}

UNET_CONFIGS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
TEXT_TOKENS = 77
VIT_H = {"projection_dim": 1024, "hidden_size": 1280, "image_size": 224, "tokens": 257}  # OpenCLIP ViT-H/14
POOLED_TEXT = 1280  # SDXL text_encoder_2 projection


def build_unet(pipeline: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> UNet2DConditionModel:
    """A full-size UNet with random weights (seeded), in `dtype` on `device`."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNET_CONFIGS[pipeline])
    return unet.to(dtype=dtype).eval()


def ip_adapter_state_dict(pipeline: str, variant: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter checkpoint with the published keys and shapes (`plain` or `plus`, ViT-H image encoder)."""
    gen = torch.Generator().manual_seed(seed)
    config = UNET_CONFIGS[pipeline]
    cross = config["cross_attention_dim"]
    sizes = cross_attention_hidden_sizes(config)
    if variant == "plain":
        proj = plain_image_proj(cross, VIT_H["projection_dim"], gen)
    elif variant == "plus":
        # Published Plus resamplers: 16 queries; width 768 (SD1.5, 12 heads) or 1280 (SDXL, 20 heads).
        proj = plus_image_proj(cross, VIT_H["hidden_size"], 768 if pipeline == "sd15" else 1280, 16, gen)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    flat = {**proj, **ip_adapter_layers(sizes, cross, gen)}
    return {
        "image_proj": {k.removeprefix("image_proj."): v for k, v in flat.items() if k.startswith("image_proj.")},
        "ip_adapter": {k.removeprefix("ip_adapter."): v for k, v in flat.items() if k.startswith("ip_adapter.")},
    }


def unet_inputs(pipeline: str, batch: int, size: int, dtype: torch.dtype, device: str) -> dict:
    """Random UNet inputs for `batch` rows at `size` pixels: latents, timestep, text states, SDXL extras."""
    g = torch.Generator().manual_seed(1)
    config = UNET_CONFIGS[pipeline]
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    text = torch.randn(batch, TEXT_TOKENS, config["cross_attention_dim"], generator=g)
    inputs = {"sample": latents, "timestep": torch.tensor(500), "encoder_hidden_states": text}
    if pipeline == "sdxl":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, POOLED_TEXT, generator=g),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32),
        }
    return _to(inputs, dtype, device)


def _to(value: object, dtype: torch.dtype, device: str) -> object:
    if isinstance(value, dict):
        return {k: _to(v, dtype, device) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() and value.ndim else value.dtype)
    return value
