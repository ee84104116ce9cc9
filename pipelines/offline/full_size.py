"""Full-size UNets from their published configs, and IP-Adapter state dicts with the published key names and shapes.

Used by the benchmark and the dry-run tests: nothing can be downloaded here, so the real shapes are rebuilt with
random weights and pushed through the same loading code (`load_ip_adapter`) the real checkpoints take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from ..presets import FamilySpec
from .tiny import (  # the key layouts both the tiny and the full-size files are written in
    PERSON_LABELS,
    cross_attention_hidden_sizes,
    faceid_image_proj,
    faceid_lora,
    faceid_plus_image_proj,
    ip_adapter_layers,
    plain_image_proj,
    plus_image_proj,
    write_pose_models,
)

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

# `transformer/config.json` of black-forest-labs/FLUX.1-dev.
FLUX_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip


# FLUX.2 [klein] 4B (black-forest-labs/FLUX.2-klein-4B): its transformer and its Qwen3-4B text encoder, as public
# implementations read them from the repository's config files (5 double- and 20 single-stream blocks, 24 heads of
# 128, the text width = 3 stacked Qwen3 layers of 2560).
FLUX2_KLEIN_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": False, "in_channels": 128, "joint_attention_dim": 7680,
    "num_attention_heads": 24, "num_layers": 5, "num_single_layers": 20, "patch_size": 1,
    "axes_dims_rope": [32, 32, 32, 32], "mlp_ratio": 3.0, "timestep_guidance_channels": 256,
}  # fmt: skip
QWEN3_4B = {
    "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
}  # fmt: skip

NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
TEXT_TOKENS = 77
VIT_H = {"projection_dim": 1024, "hidden_size": 1280, "image_size": 224, "tokens": 257}  # OpenCLIP ViT-H/14
POOLED_TEXT = 1280  # SDXL text_encoder_2 projection


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (no fp32 copy first: SDXL's UNet alone is 10 GB in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_unet(pipeline: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> UNet2DConditionModel:
    """A full-size UNet with random weights (seeded), in `dtype` on `device`."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(UNET_CONFIGS[pipeline])
    return unet.to(dtype=dtype).eval()


def ip_adapter_state_dict(pipeline: str, embeds: str, seed: int = 0, lora_rank: int = 128) -> dict[str, dict]:
    """A random IP-Adapter checkpoint with the published keys and shapes for a ViT-H image encoder.

    `embeds` is the adapter kind of presets/models.toml: "pooled" (plain), "hidden" (Plus, Plus-Face: a 16-query
    Resampler of width 768 or 1280), "faceid" or "faceid-plus" (with the LoRA the FaceID files carry).
    """
    gen = torch.Generator().manual_seed(seed)
    config = UNET_CONFIGS[pipeline]
    cross = config["cross_attention_dim"]
    sizes = cross_attention_hidden_sizes(config)
    if embeds == "pooled":
        proj = plain_image_proj(cross, VIT_H["projection_dim"], gen)
    elif embeds == "hidden":
        proj = plus_image_proj(cross, VIT_H["hidden_size"], 768 if pipeline == "sd15" else 1280, 16, gen)
    elif embeds == "faceid":
        proj = {"image_proj." + k: v for k, v in faceid_image_proj(cross, gen).items()}
    elif embeds == "faceid-plus":
        proj = {"image_proj." + k: v for k, v in faceid_plus_image_proj(cross, VIT_H["hidden_size"], gen).items()}
    else:
        raise ValueError(f"unknown adapter kind {embeds!r}")
    flat = {**proj, **ip_adapter_layers(sizes, cross, gen)}
    checkpoint = {
        "image_proj": {k.removeprefix("image_proj."): v for k, v in flat.items() if k.startswith("image_proj.")},
        "ip_adapter": {k.removeprefix("ip_adapter."): v for k, v in flat.items() if k.startswith("ip_adapter.")},
    }
    if embeds.startswith("faceid"):
        checkpoint["ip_adapter"].update(faceid_lora(config, gen, rank=lora_rank))
    return checkpoint


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


# Published configs of the other components. Text encoders keep their real widths (what the UNet sees) but only
# two layers each: the dry run proves the UNet and adapter shapes, not the text encoders' depth.
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
VIT_H_CONFIG = {  # models/image_encoder of h94/IP-Adapter (OpenCLIP ViT-H/14), full depth
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}


def write_mirror(root: Path, family: FamilySpec, tokenizer_files: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write every checkpoint `family` names, with random weights, into `root/<repo>/<subfolder>/<file>`.

    The engine then loads them with `source = "local"` through exactly the calls it uses for the Hub.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_files), model_max_length=77)

    def text(width: int, projection: int, cls: type) -> torch.nn.Module:
        cfg = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                             num_attention_heads=width // 64, projection_dim=projection, max_position_embeddings=77,
                             vocab_size=49408, bos_token_id=512, eos_token_id=513, pad_token_id=513)  # fmt: skip
        return cls(cfg)

    kind = family.pipeline
    unet = build_unet(kind, dtype)
    with default_dtype(dtype):
        vae = AutoencoderKL(**SD_VAE)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)  # fmt: skip
    with default_dtype(dtype):
        encoders = (text(768, 768, CLIPTextModel), text(1280, 1280, CLIPTextModelWithProjection))
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer,
            text_encoder=encoders[0], text_encoder_2=encoders[1],
        )  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=encoders[0],
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.to(dtype=dtype).save_pretrained(str(root / family.base), safe_serialization=True)
    if family.fast is not None:  # the few-step LoRA over this UNet's attention layers, in its published key form
        from .tiny import few_step_lora

        folder = root / family.fast.repo
        folder.mkdir(parents=True, exist_ok=True)
        save_file(few_step_lora(unet, rank=8, seed=9, scale=0.01), str(folder / family.fast.weight_name))
    del pipe, unet

    written = set()
    for spec in family.adapters.values():
        if spec.image_encoder is not None and spec.image_encoder not in written:
            with default_dtype(dtype):
                encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_CONFIG))
            encoder.save_pretrained(str(root / spec.image_encoder.repo / spec.image_encoder.subfolder))
            written.add(spec.image_encoder)
            del encoder
        with default_dtype(dtype):
            checkpoint = ip_adapter_state_dict(kind, spec.embeds)
        folder = root / spec.repo / spec.subfolder
        folder.mkdir(parents=True, exist_ok=True)
        if spec.weight_name.endswith(".safetensors"):
            flat = {f"{part}.{k}": v.contiguous() for part, tensors in checkpoint.items() for k, v in tensors.items()}
            save_file(flat, str(folder / spec.weight_name))
        else:
            torch.save(checkpoint, folder / spec.weight_name)
    if family.scoring is not None:
        write_scoring_clip(root / family.scoring.text_encoder, tokenizer, dtype)
    write_structure(root, family, dtype)


# `config.json` of depth-anything/Depth-Anything-V2-Small-hf (a DINOv2-small backbone, DPT neck and head) and its
# `preprocessor_config.json`.
DEPTH_ANYTHING_V2_SMALL = {
    "backbone_config": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12, "image_size": 518,
                        "patch_size": 14, "out_indices": [3, 6, 9, 12], "reshape_hidden_states": False},
    "fusion_hidden_size": 64, "head_hidden_size": 32, "neck_hidden_sizes": [48, 96, 192, 384],
    "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": 384, "patch_size": 14,
    "depth_estimation_type": "relative",
}  # fmt: skip
DEPTH_PROCESSOR = {
    "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 518, "width": 518},
    "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_pad": False,
}  # fmt: skip


def write_pose(person: Path, pose: Path, dtype: torch.dtype) -> None:
    """The pose slot's detector and keypoint model at their published shapes: transformers' defaults are
    rtdetr_r50vd (80 COCO labels) and ViTPose-B (17 points), at their input sizes 640 x 640 and 256 x 192 (random
    weights, written as the tiny twin writes its own)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, VitPoseConfig, VitPoseForPoseEstimation

    ids = {v: k for k, v in PERSON_LABELS.items()}
    with default_dtype(dtype):
        detector = RTDetrForObjectDetection(RTDetrConfig(num_labels=80, id2label=PERSON_LABELS, label2id=ids))
        keypoints = VitPoseForPoseEstimation(VitPoseConfig(num_labels=17))
    write_pose_models(person, pose, detector, keypoints, ((640, 640), (256, 192)))


def write_structure(root: Path, family: FamilySpec, dtype: torch.dtype) -> None:
    """The family's ControlNets at their published shapes (SD1.5: ControlNet v1.1 from the UNet's config, its
    conditioning embedding (16, 32, 96, 256); SDXL: ControlNet-Union with 6 control types, transformer width 320), and
    its depth and pose models. One random ControlNet per class is written and hard-linked into each repository that
    uses it."""
    import json
    import os

    from diffusers import ControlNetModel, ControlNetUnionModel
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    written: dict[str, Path] = {}
    for spec in family.controlnets.values():
        folder = root / spec.repo / spec.subfolder
        if folder.exists():
            continue
        cls = ControlNetUnionModel if spec.union_mode is not None else ControlNetModel
        if cls.__name__ not in written:
            with torch.device("meta"):  # the UNet only lends its config: no second full-size UNet in memory
                unet = UNet2DConditionModel.from_config(UNET_CONFIGS[family.pipeline])
            with default_dtype(dtype):
                net = cls.from_unet(unet, load_weights_from_unet=False)
            net.to(dtype=dtype).save_pretrained(str(folder), safe_serialization=True)
            written[cls.__name__] = folder
            del net
            continue
        folder.mkdir(parents=True)
        for file in written[cls.__name__].iterdir():
            os.link(file, folder / file.name)
    if family.depth_model:
        config = dict(DEPTH_ANYTHING_V2_SMALL)
        config["backbone_config"] = Dinov2Config(**config["backbone_config"])
        with default_dtype(dtype):
            model = DepthAnythingForDepthEstimation(DepthAnythingConfig(**config))
        folder = root / family.depth_model
        model.save_pretrained(str(folder), safe_serialization=True)
        (folder / "preprocessor_config.json").write_text(json.dumps(DEPTH_PROCESSOR, indent=2))
    if "pose" in family.preprocessors:
        write_pose(*(root / repo for repo in family.preprocessors["pose"]), dtype)


def write_scoring_clip(folder: Path, tokenizer: object, dtype: torch.dtype) -> None:
    """The scorer's CLIP checkpoint as laion/CLIP-ViT-H-14-laion2B-s32B-b79K holds it: a whole `CLIPModel` (text and
    vision towers, projections to 1024) and its tokenizer. Like the base pipelines' text encoders here, both towers
    keep their real widths with two layers each; the scorer reads the text tower from it."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                max_position_embeddings=77, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=1)  # fmt: skip
    vision = {**VIT_H_CONFIG, "num_hidden_layers": 2}
    vision.pop("projection_dim")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=VIT_H_CONFIG["projection_dim"])
    with default_dtype(dtype):
        model = CLIPModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
