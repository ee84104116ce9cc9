"""The offline `tiny` model family: real checkpoint formats, random weights, fixed seeds.

Everything here is written to disk in the layout the real Hub repositories use (a diffusers pipeline folder,
IP-Adapter safetensors with `image_proj.*` / `ip_adapter.*` keys, a CLIP image encoder folder) and is then
loaded by the engine through exactly the code path real checkpoints take. Nothing is committed: the folders
are generated on first use, in about a second, into a cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    ControlNetUnionModel,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrResNetConfig,
    VitPoseBackboneConfig,
    VitPoseConfig,
    VitPoseForPoseEstimation,
)

from .faces import build_face_pack

# Bump when the layout or any config below changes, so stale caches are never reused.
TINY_VERSION = "v17"

# Repository names inside the tiny root; presets/models.toml refers to these.
SDXL_BASE = "tiny-sdxl"
SDXL_ANIME_BASE = "tiny-sdxl-anime"  # a second SDXL-shaped base (other seed), standing in for an anime fine-tune
SD15_BASE = "tiny-sd15"
IP_ADAPTER_REPO = "tiny-ip-adapter"
FACEID_REPO = "tiny-ip-adapter-faceid"  # mirrors h94/IP-Adapter-FaceID (.bin files with an embedded LoRA)
FACE_ROOT = "insightface"  # FaceAnalysis(root=...): packs live in <root>/models/<pack>
FACE_PACK = "tiny_faces"
CLIP_REPO = "tiny-clip-vit-h"  # mirrors laion/CLIP-ViT-H-14-laion2B-s32B-b79K: a whole CLIP model + tokenizer
CONTROLNET_UNION_REPO = "tiny-controlnet-union"  # mirrors xinsir/controlnet-union-sdxl-1.0 (ControlNetUnionModel)
CONTROLNET_SD15_REPOS = {  # mirror lllyasviel/control_v11* (ControlNetModel, one control type each)
    "canny": "tiny-controlnet-sd15-canny",
    "depth": "tiny-controlnet-sd15-depth",
    "pose": "tiny-controlnet-sd15-openpose",
}
DEPTH_REPO = "tiny-depth-anything"  # mirrors depth-anything/Depth-Anything-V2-Small-hf (model + DPT processor)
PERSON_REPO = "tiny-rtdetr"  # mirrors PekingU/rtdetr_r50vd_coco_o365 (RTDetrForObjectDetection + its processor)
VITPOSE_REPO = "tiny-vitpose"  # mirrors usyd-community/vitpose-base-simple (VitPoseForPoseEstimation, 17 COCO points)
FLUX_BASE = "tiny-flux"  # mirrors black-forest-labs/FLUX.1-dev: FluxPipeline (transformer, CLIP + T5, 16-channel VAE)
FLUX_IP_ADAPTER_REPO = (
    "tiny-flux-ip-adapter"  # mirrors XLabs-AI/flux-ip-adapter-v2 (XLabs keys, ip_adapter.safetensors)
)
FLUX_REDUX_REPO = "tiny-flux-redux"  # mirrors black-forest-labs/FLUX.1-Redux-dev (SigLIP + Redux image embedder)
CLIP_VIT_L_REPO = "tiny-clip-vit-large-patch14"  # mirrors openai/clip-vit-large-patch14 (a whole CLIPModel)
FLUX_JOINT_DIM = 32  # T5 width (FLUX.1: 4096)
FLUX_INNER_DIM = 32  # heads x head dim (FLUX.1: 24 x 128)
FLUX_DOUBLE_BLOCKS = 2  # FLUX.1: 19
XLABS_TOKENS = 4  # image tokens of the XLabs projection (v2: 16)
FLUX2_KLEIN_BASE = "tiny-flux2-klein"  # mirrors black-forest-labs/FLUX.2-klein-4B: Flux2KleinPipeline (Qwen3)
FLUX2_KLEIN_KV_BASE = "tiny-flux2-klein-kv"  # mirrors black-forest-labs/FLUX.2-klein-9b-kv: Flux2KleinKVPipeline
QWEN3_HIDDEN = 16  # width of the tiny Qwen3 text encoder (klein 4B: Qwen3-4B, 2560)
QWEN3_LAYERS = 27  # the pipeline stacks hidden states 9, 18 and 27, as the real one (Qwen3-4B has 36 layers)
FAST_LORA_REPO = "tiny-fast-lora"  # few-step LoRAs (as ByteDance/SDXL-Lightning and ByteDance/Hyper-SD ship them)
LORA_RANK = 4

TEXT_HIDDEN = 32  # width of each tiny CLIP text encoder
VISION_HIDDEN = 32  # width of the tiny CLIP vision tower (ViT-H has 1280)
VISION_PROJECTION = 32  # image embedding size the plain adapter projects (ViT-H: 1024)
VISION_IMAGE_SIZE = 32  # encoder input size (ViT-H: 224)
PLUS_TOKENS = 4  # Resampler queries (real Plus checkpoints: 16)
PLUS_DIM = 64  # Resampler width; diffusers derives heads as dim // 64, so it must be a multiple of 64


def default_root() -> Path:
    """Where the tiny family is generated: $IMAGE_PROMPT_TINY_DIR, else the user's cache folder."""
    env = os.environ.get("IMAGE_PROMPT_TINY_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "image-prompt-studio" / "tiny"
    return base / TINY_VERSION


def ensure_tiny_models(root: Path | None = None) -> Path:
    """Generate the tiny family under `root` unless it is already there; return the root."""
    root = Path(root) if root is not None else default_root()
    if (root / "COMPLETE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename, so a concurrent process never sees a half-written tree.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root.parent))
    try:
        write_tokenizer(staging / "tokenizer-files")
        _build_sdxl(staging / SDXL_BASE, staging / "tokenizer-files", seed=0)
        _build_sdxl(staging / SDXL_ANIME_BASE, staging / "tokenizer-files", seed=10)
        _build_sd15(staging / SD15_BASE, staging / "tokenizer-files")
        _build_ip_adapters(staging / IP_ADAPTER_REPO)
        _build_faceid(staging / FACEID_REPO)
        build_face_pack(staging / FACE_ROOT / "models" / FACE_PACK)
        _build_clip(staging / CLIP_REPO, staging / "tokenizer-files")
        _build_fast_loras(staging)
        _build_controlnets(staging)
        _build_depth(staging / DEPTH_REPO)
        _build_pose(staging / PERSON_REPO, staging / VITPOSE_REPO)
        _build_flux(staging, staging / "tokenizer-files")
        _build_flux2_klein(staging / FLUX2_KLEIN_BASE)
        _build_flux2_klein(staging / FLUX2_KLEIN_KV_BASE, kv=True)
        shutil.rmtree(staging / "tokenizer-files")
        (staging / "COMPLETE").write_text(TINY_VERSION + "\n")
        try:
            staging.rename(root)
        except OSError:
            if not (root / "COMPLETE").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE vocabulary with no merges: every byte is a token."""
    folder.mkdir(parents=True)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _tokenizer(folder: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _text_config(projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=514,  # 2 x 256 byte tokens + 2 specials
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def _vae() -> AutoencoderKL:
    # Four levels give the real downsampling factor of 8, so width/height behave as on real models.
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
    )


def _scheduler() -> EulerDiscreteScheduler:
    # The SDXL base scheduler settings.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )


def _build_sdxl(folder: Path, tokenizer_files: Path, seed: int) -> None:
    """SDXL-shaped: three UNet levels (no attention at the top level), two text encoders, text_time."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,  # as SDXL: up blocks hold 3 attentions, so `up.block_0: [0, 1, 0]` is real
        transformer_layers_per_block=(1, 1, 1),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN,  # the two text encoders' hidden states concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * 8,  # pooled text + 6 time ids x 8
        norm_num_groups=16,
        sample_size=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(TEXT_HIDDEN)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(TEXT_HIDDEN)),
        tokenizer=_tokenizer(tokenizer_files),
        tokenizer_2=_tokenizer(tokenizer_files),
        unet=unet,
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)


def _build_sd15(folder: Path, tokenizer_files: Path) -> None:
    """SD1.5-shaped: two UNet levels, one text encoder, no safety checker."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=16,
        sample_size=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(TEXT_HIDDEN)),
        tokenizer=_tokenizer(tokenizer_files),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)


def cross_attention_hidden_sizes(unet_config: dict) -> list[int]:
    """Hidden size of every cross-attention processor, in `unet.attn_processors` order."""
    unet = UNet2DConditionModel.from_config(unet_config)
    sizes = []
    channels = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(channels[int(name[len("down_blocks.")])])
    return sizes


def ip_adapter_layers(hidden_sizes: list[int], cross_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """`ip_adapter.<id>.to_k_ip/to_v_ip.weight` with ids 1, 3, 5, ... as in the published files."""
    out = {}
    for i, hidden in enumerate(hidden_sizes):
        key_id = 2 * i + 1
        for kind in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross_dim, generator=gen) * 0.1
    return out


def plain_image_proj(cross_dim: int, image_embed_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """ImageProjection in the original key names: 4 tokens from the pooled image embedding."""
    return {
        "image_proj.proj.weight": torch.randn(4 * cross_dim, image_embed_dim, generator=gen) * 0.2,
        "image_proj.proj.bias": torch.randn(4 * cross_dim, generator=gen) * 0.1,
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }


def plus_image_proj(
    cross_dim: int, vision_hidden: int, dim: int, queries: int, gen: torch.Generator, inner: int | None = None
) -> dict[str, torch.Tensor]:
    """The Plus Resampler (depth 4) in the original key names; attention width `inner` = heads x 64 (default dim)."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.1

    inner = inner or dim  # diffusers reads heads as to_q rows // 64
    sd = {
        "image_proj.latents": rand(1, queries, dim) * 5,
        "image_proj.proj_in.weight": rand(dim, vision_hidden),
        "image_proj.proj_in.bias": rand(dim),
        "image_proj.proj_out.weight": rand(cross_dim, dim),
        "image_proj.proj_out.bias": rand(cross_dim),
        "image_proj.norm_out.weight": torch.ones(cross_dim),
        "image_proj.norm_out.bias": torch.zeros(cross_dim),
    }
    for i in range(4):
        p = f"image_proj.layers.{i}"
        for norm in ("norm1", "norm2"):
            sd[f"{p}.0.{norm}.weight"] = torch.ones(dim)
            sd[f"{p}.0.{norm}.bias"] = torch.zeros(dim)
        sd[f"{p}.0.to_q.weight"] = rand(inner, dim)
        sd[f"{p}.0.to_kv.weight"] = rand(2 * inner, dim)
        sd[f"{p}.0.to_out.weight"] = rand(dim, inner)
        sd[f"{p}.1.0.weight"] = torch.ones(dim)
        sd[f"{p}.1.0.bias"] = torch.zeros(dim)
        sd[f"{p}.1.1.weight"] = rand(4 * dim, dim)
        sd[f"{p}.1.3.weight"] = rand(dim, 4 * dim)
    return sd


def _build_ip_adapters(repo: Path) -> None:
    """Mirror `h94/IP-Adapter`: `models/` (SD1.5), `sdxl_models/` (SDXL), `models/image_encoder`."""
    torch.manual_seed(2)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=VISION_HIDDEN,
            intermediate_size=37,
            projection_dim=VISION_PROJECTION,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=VISION_IMAGE_SIZE,
            patch_size=4,
        )
    )
    encoder.save_pretrained(str(repo / "models" / "image_encoder"), safe_serialization=True)

    gen = torch.Generator().manual_seed(3)
    families = {
        "sdxl_models": ("sdxl", repo.parent / SDXL_BASE / "unet" / "config.json"),
        "models": ("sd15", repo.parent / SD15_BASE / "unet" / "config.json"),
    }
    for subfolder, (suffix, unet_config_path) in families.items():
        unet_config = json.loads(unet_config_path.read_text())
        cross_dim = unet_config["cross_attention_dim"]
        sizes = cross_attention_hidden_sizes(unet_config)
        plain = {**plain_image_proj(cross_dim, VISION_PROJECTION, gen), **ip_adapter_layers(sizes, cross_dim, gen)}
        plus = {
            **plus_image_proj(cross_dim, VISION_HIDDEN, PLUS_DIM, PLUS_TOKENS, gen),
            **ip_adapter_layers(sizes, cross_dim, gen),
        }
        (repo / subfolder).mkdir(parents=True, exist_ok=True)
        save_file(plain, str(repo / subfolder / f"ip-adapter_{suffix}.safetensors"))
        save_file(plus, str(repo / subfolder / f"ip-adapter-plus_{suffix}.safetensors"))
        plus_face = {
            **plus_image_proj(cross_dim, VISION_HIDDEN, PLUS_DIM, PLUS_TOKENS, gen),
            **ip_adapter_layers(sizes, cross_dim, gen),
        }
        save_file(plus_face, str(repo / subfolder / f"ip-adapter-plus-face_{suffix}.safetensors"))


def faceid_image_proj(cross_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """FaceID's MLP (512-d insightface embedding -> 4 tokens) in the original key names."""
    return {
        "proj.0.weight": torch.randn(1024, 512, generator=gen) * 0.05,
        "proj.0.bias": torch.zeros(1024),
        "proj.2.weight": torch.randn(4 * cross_dim, 1024, generator=gen) * 0.05,
        "proj.2.bias": torch.zeros(4 * cross_dim),
        "norm.weight": torch.ones(cross_dim),
        "norm.bias": torch.zeros(cross_dim),
    }


def faceid_plus_image_proj(cross_dim: int, vision_hidden: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """FaceID Plus (v2): the ID MLP to cross-attention-wide tokens, then a Perceiver over CLIP face-crop features.

    As published, the token width equals `cross_dim` (the v2 shortcut adds ID tokens to the output).
    """
    dim = cross_dim
    sd = faceid_image_proj(dim, gen)  # the same ID MLP as FaceID
    resampler = plus_image_proj(cross_dim, vision_hidden, dim, 4, gen, inner=max(64, dim // 64 * 64))
    for key, value in resampler.items():
        if key != "image_proj.latents":  # FaceID Plus starts from the ID tokens, not learned latents
            sd["perceiver_resampler." + key.removeprefix("image_proj.")] = value
    return sd


def faceid_lora(unet_config: dict, gen: torch.Generator, rank: int = LORA_RANK) -> dict[str, torch.Tensor]:
    """The LoRA inside a FaceID checkpoint: `<id>.to_{q,k,v,out}_lora.{down,up}.weight` for every processor."""
    unet = UNet2DConditionModel.from_config(unet_config)
    channels = list(unet.config.block_out_channels)
    cross = unet.config.cross_attention_dim
    out = {}
    for key_id, name in enumerate(unet.attn_processors):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        context = hidden if name.endswith("attn1.processor") else cross
        for proj, width_in in (("to_q", hidden), ("to_k", context), ("to_v", context), ("to_out", hidden)):
            out[f"{key_id}.{proj}_lora.down.weight"] = torch.randn(rank, width_in, generator=gen) * 0.1
            out[f"{key_id}.{proj}_lora.up.weight"] = torch.randn(hidden, rank, generator=gen) * 0.1
    return out


def _build_faceid(repo: Path) -> None:
    """Mirror `h94/IP-Adapter-FaceID`: FaceID and FaceID Plus v2 for both shapes, as torch `.bin` files."""
    gen = torch.Generator().manual_seed(5)
    repo.mkdir(parents=True)
    for suffix, base in (("sdxl", SDXL_BASE), ("sd15", SD15_BASE)):
        unet_config = json.loads((repo.parent / base / "unet" / "config.json").read_text())
        cross = unet_config["cross_attention_dim"]
        sizes = cross_attention_hidden_sizes(unet_config)
        for name, proj in (
            (f"ip-adapter-faceid_{suffix}.bin", faceid_image_proj(cross, gen)),
            (f"ip-adapter-faceid-plusv2_{suffix}.bin", faceid_plus_image_proj(cross, VISION_HIDDEN, gen)),
        ):
            layers = {k.removeprefix("ip_adapter."): v for k, v in ip_adapter_layers(sizes, cross, gen).items()}
            checkpoint = {"image_proj": proj, "ip_adapter": {**layers, **faceid_lora(unet_config, gen)}}
            torch.save(checkpoint, repo / name)


def _build_clip(repo: Path, tokenizer_files: Path) -> None:
    """Mirror the OpenCLIP ViT-H/14 checkpoint in transformers' format: a `CLIPModel` (text and vision towers with
    their projections into one space) and its tokenizer; the scorer reads the text tower from it."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(6)
    vision = dict(hidden_size=VISION_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=VISION_IMAGE_SIZE, patch_size=4)  # fmt: skip
    config = CLIPConfig(
        text_config=_text_config(VISION_PROJECTION).to_dict(), vision_config=vision, projection_dim=VISION_PROJECTION
    )
    CLIPModel(config).save_pretrained(str(repo), safe_serialization=True)
    _tokenizer(tokenizer_files).save_pretrained(str(repo))


def few_step_lora(unet: torch.nn.Module, rank: int, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A LoRA over every linear layer of the UNet's transformer blocks, in the kohya key format the few-step LoRAs
    are published in: `lora_unet_<module path with _>.lora_down.weight` (rank x in), `.lora_up.weight` (out x rank)
    and `.alpha`."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".attentions." not in f".{name}":
            continue
        key = "lora_unet_" + name.replace(".", "_")
        dtype = module.weight.dtype
        out[f"{key}.lora_down.weight"] = (torch.randn(rank, module.in_features, generator=gen) * scale).to(dtype)
        out[f"{key}.lora_up.weight"] = (torch.randn(module.out_features, rank, generator=gen) * scale).to(dtype)
        out[f"{key}.alpha"] = torch.tensor(float(rank)).to(dtype)
    return out


def _build_fast_loras(root: Path) -> None:
    """One few-step LoRA per tiny base shape (presets/models.toml, `[tiny.fast]` and `[tiny-sd15.fast]`)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    folder = root / FAST_LORA_REPO
    folder.mkdir(parents=True)
    for base, name in (
        (SDXL_BASE, "tiny_sdxl_4step_lora.safetensors"),
        (SD15_BASE, "tiny_sd15_8step_lora.safetensors"),
    ):
        unet = UNet2DConditionModel.from_pretrained(str(root / base / "unet"))
        save_file(few_step_lora(unet, LORA_RANK, seed=7), str(folder / name))


def _random_zero_convs(model: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """A fresh ControlNet's output convolutions start at zero (it would change nothing): give them random weights so
    strength, windows and sweeps have something to act on, and make its map matter."""
    gen = torch.Generator().manual_seed(seed)
    outputs = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
    if isinstance(model, ControlNetUnionModel):
        outputs.append(model.spatial_ch_projs)
    for layer in outputs:
        layer.weight.data = torch.randn(layer.weight.shape, generator=gen) * std
        layer.bias.data.zero_()
    # Its conditioning embedding at the default init reads the map so faintly that another map moved a 64 px image by
    # 0.002 levels on average (a wrong map would pass every test): scaled up, another map moves it by several levels.
    embedding = model.controlnet_cond_embedding
    for layer in (embedding.conv_in, *embedding.blocks):
        layer.weight.data *= 4.0


def _controlnet_from_unet(cls: type, unet: UNet2DConditionModel, **config: object) -> torch.nn.Module:
    """`cls.from_unet` with the tiny conditioning embedding (and, for the union model, its transformer width set
    to the UNet's first channel count, which `from_unet` leaves at SDXL's 320)."""
    made = cls.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 16, 16), load_weights_from_unet=False)
    options = {k: v for k, v in made.config.items() if not k.startswith("_")} | config
    model = cls(**options)
    model.conv_in.load_state_dict(unet.conv_in.state_dict())
    model.time_embedding.load_state_dict(unet.time_embedding.state_dict())
    model.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=False)
    model.mid_block.load_state_dict(unet.mid_block.state_dict(), strict=False)
    return model


def _build_controlnets(root: Path) -> None:
    """ControlNets made from each tiny UNet, as the real ones were (weights copied from the UNet, then trained)."""
    sdxl = UNet2DConditionModel.from_pretrained(str(root / SDXL_BASE / "unet"))
    width = sdxl.config.block_out_channels[0]
    union = _controlnet_from_unet(ControlNetUnionModel, sdxl, num_trans_channel=width, num_trans_head=2,
                                  num_proj_channel=width)  # fmt: skip
    _random_zero_convs(union, seed=20)
    union.save_pretrained(str(root / CONTROLNET_UNION_REPO), safe_serialization=True)
    sd15 = UNet2DConditionModel.from_pretrained(str(root / SD15_BASE / "unet"))
    for n, (_, repo) in enumerate(sorted(CONTROLNET_SD15_REPOS.items())):
        model = _controlnet_from_unet(ControlNetModel, sd15)
        _random_zero_convs(model, seed=30 + n)
        model.save_pretrained(str(root / repo), safe_serialization=True)


def _build_depth(folder: Path) -> None:
    """Depth Anything V2's layout (a DINOv2 backbone, DPT neck and head, its DPT image processor) at a tiny width."""
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[16, 16, 16, 16],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
        depth_estimation_type="relative",
    )
    torch.manual_seed(40)
    model = DepthAnythingForDepthEstimation(config)
    gen = torch.Generator().manual_seed(41)
    for param in model.parameters():  # default init gives a flat map: spread it so a depth map has contrast
        if param.ndim > 1:
            param.data = torch.randn(param.shape, generator=gen) * 1.5 / param.shape[1] ** 0.5
    model.save_pretrained(str(folder), safe_serialization=True)
    processor = {  # Depth-Anything-V2-Small-hf's preprocessor_config.json, at the tiny input size
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 56, "width": 56},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_pad": False,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    AutoImageProcessor.from_pretrained(str(folder))  # fails here, not in a request, if the format drifts


PERSON_LABELS = {0: "person", **{i: f"object {i}" for i in range(1, 80)}}  # COCO's 80 labels in RT-DETR's order


def write_pose_models(person: Path, pose: Path, detector: Any, keypoints: Any, sizes: tuple) -> None:
    """Save the pose slot's detector and keypoint model with the image processors of rtdetr_r50vd_coco_o365 and
    vitpose-base-simple at input `sizes` ((height, width) each). Random weights find no person: the detector's
    "person" logits are first raised in every class head (about 0.97 after the sigmoid), so its queries come out as
    people at boxes that follow the picture, and the keypoint model then runs on them."""
    with torch.no_grad():
        for name, param in detector.named_parameters():
            if name.endswith("enc_score_head.bias") or ("class_embed" in name and name.endswith(".bias")):
                param[0] += 8.0
    (detector_size, pose_size) = ({"height": h, "width": w} for h, w in sizes)
    processors = (
        {"image_processor_type": "RTDetrImageProcessor", "do_resize": True, "size": detector_size, "resample": 2,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False, "do_pad": False,
         "format": "coco_detection"},
        {"image_processor_type": "VitPoseImageProcessor", "do_affine_transform": True, "size": pose_size,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "normalize_factor": 200.0,
         "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    )  # fmt: skip
    for folder, model, processor in zip((person, pose), (detector, keypoints), processors, strict=True):
        model.save_pretrained(str(folder), safe_serialization=True)
        (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def _build_pose(person: Path, pose: Path) -> None:
    """The pose slot's two models in their real layouts at a tiny width: an RT-DETR person detector (COCO's 80
    labels, 0 = person) and a ViTPose keypoint model (17 COCO keypoints), each with its image processor.

    """
    torch.manual_seed(50)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])  # fmt: skip
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[16, 32, 64], encoder_hidden_dim=16, d_model=16,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        decoder_layers=1, num_queries=8, decoder_in_channels=[16, 16, 16], num_labels=80, id2label=PERSON_LABELS,
        label2id={v: k for k, v in PERSON_LABELS.items()},
    )  # fmt: skip
    detector = RTDetrForObjectDetection(config)
    torch.manual_seed(51)
    points = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, mlp_ratio=2, out_indices=[1])  # fmt: skip
    keypoints = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=points, num_labels=17))
    write_pose_models(person, pose, detector, keypoints, ((64, 64), (64, 48)))
    for folder in (person, pose):
        AutoImageProcessor.from_pretrained(str(folder), backend="pil")  # fails here if the format drifts


def _t5_tokenizer(folder: Path) -> Any:
    """A T5 tokenizer in the real `tokenizer.json` form: a unigram model over printable characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(chr(c), -1.0) for c in range(32, 127)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0, model_max_length=512)  # fmt: skip


def _build_flux(root: Path, tokenizer_files: Path) -> None:
    """FLUX.1's layout at a tiny width: FluxPipeline (double- and single-stream blocks, rotary axes, guidance
    embedding, CLIP + T5 text encoders, a 16-channel VAE, its flow-matching scheduler), an XLabs-format IP-Adapter
    for its double-stream blocks, and the CLIP ViT-L image encoder that adapter reads."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPConfig, CLIPModel, T5Config, T5EncoderModel

    torch.manual_seed(50)
    t5_tokenizer = _t5_tokenizer(root / "t5-tokenizer-files")
    t5_config = T5Config(vocab_size=len(t5_tokenizer), d_model=FLUX_JOINT_DIM, d_kv=8, d_ff=64, num_layers=2,
                         num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")  # fmt: skip
    t5 = T5EncoderModel(t5_config)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16 * 4, num_layers=FLUX_DOUBLE_BLOCKS, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=FLUX_INNER_DIM // 16, joint_attention_dim=FLUX_JOINT_DIM, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=16, layers_per_block=1, norm_num_groups=16, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)  # fmt: skip
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=CLIPTextModel(_text_config(TEXT_HIDDEN)),
                        tokenizer=_tokenizer(tokenizer_files), text_encoder_2=t5, tokenizer_2=t5_tokenizer,
                        transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(root / FLUX_BASE), safe_serialization=True)
    shutil.rmtree(root / "t5-tokenizer-files")

    gen = torch.Generator().manual_seed(51)
    weights = {}  # XLabs' key names and layout (`xlabs_shapes`), at the tiny sizes
    shapes = xlabs_shapes(FLUX_DOUBLE_BLOCKS, FLUX_JOINT_DIM, FLUX_INNER_DIM, VISION_PROJECTION, XLABS_TOKENS)
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            weights[key] = torch.ones(shape)
        elif key.endswith("bias"):
            weights[key] = torch.zeros(shape)
        else:
            weights[key] = torch.randn(shape, generator=gen) * (0.2 if "proj_model" in key else 0.3)
    (root / FLUX_IP_ADAPTER_REPO).mkdir(parents=True)
    save_file(weights, str(root / FLUX_IP_ADAPTER_REPO / "ip_adapter.safetensors"))

    vision = {"hidden_size": VISION_HIDDEN, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": VISION_IMAGE_SIZE, "patch_size": 8, "projection_dim": VISION_PROJECTION}  # fmt: skip
    text = _text_config(VISION_PROJECTION).to_dict()
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=VISION_PROJECTION)
    CLIPModel(config).save_pretrained(str(root / CLIP_VIT_L_REPO), safe_serialization=True)
    _tokenizer(tokenizer_files).save_pretrained(str(root / CLIP_VIT_L_REPO))  # the repository holds its tokenizer
    _build_redux(root / FLUX_REDUX_REPO)


QWEN_CHAT_TEMPLATE = (  # Qwen3's chat template, the parts Flux2KleinPipeline uses (a user turn, no thinking)
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def _qwen_tokenizer(folder: Path) -> Any:
    """A Qwen2 tokenizer in the real form (byte-level BPE `vocab.json` + `merges.txt`, the chat specials, a chat
    template), with no merges: every byte is a token."""
    from transformers import Qwen2TokenizerFast

    write_tokenizer(folder)
    vocab = {k: v for k, v in json.loads((folder / "vocab.json").read_text()).items() if len(k) == 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Qwen2TokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                                   unk_token=None, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    shutil.rmtree(folder)
    return tokenizer


def _build_flux2_klein(folder: Path, kv: bool = False) -> None:
    """FLUX.2 [klein]'s layout at a tiny width: Flux2KleinPipeline (a Flux2 transformer without guidance
    embedding, a Qwen3 causal LM whose hidden states 9, 18 and 27 are stacked into the prompt, the 32-channel
    AutoencoderKLFlux2 with its batch-norm statistics, the flow-matching scheduler), step-distilled as the 4B.

    Random weights hardly read their inputs: the attention is sharpened (query/key norms x4) and its values
    amplified (x6), and the VAE's latent statistics narrowed, so that a reference moves the image by a few levels
    and another reference moves it again (tests/pipelines/test_flux2.py checks both). `kv`: the 9B-KV's layout
    (Flux2KleinKVPipeline: the same folders, its pipeline class in model_index.json), other weights."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinKVPipeline,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(63 if kv else 60)
    tokenizer = _qwen_tokenizer(folder.parent / "qwen-tokenizer-files")
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=QWEN3_HIDDEN, intermediate_size=32, num_hidden_layers=QWEN3_LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True,
    ))  # fmt: skip
    heads, head_dim = 2, 16
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=3 * QWEN3_HIDDEN, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    inner = heads * head_dim
    with torch.no_grad():
        for name, weight in transformer.named_parameters():
            if ".norm_q." in name or ".norm_k." in name or "norm_added_q" in name or "norm_added_k" in name:
                weight.mul_(4.0)
            elif any(k in name for k in ("to_v.", "add_v_proj", "to_out.0", "to_add_out")):
                weight.mul_(6.0)
            elif "to_qkv_mlp_proj" in name:  # the fused projection: q, k, v, then the MLP's
                weight[2 * inner : 3 * inner].mul_(6.0)
            elif "single_transformer_blocks" in name and "attn.to_out" in name:  # attention output, then MLP's
                weight[:, :inner].mul_(6.0)
    vae = AutoencoderKLFlux2(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                             latent_channels=32)  # fmt: skip
    gen = torch.Generator().manual_seed(64 if kv else 61)
    vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=gen) * 0.1)
    vae.bn.running_var.copy_((torch.rand(vae.bn.running_var.shape, generator=gen) + 0.5) * 0.02)
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True,
                                                time_shift_type="exponential")  # fmt: skip
    parts = {"scheduler": scheduler, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
             "transformer": transformer}  # fmt: skip
    pipe = Flux2KleinKVPipeline(**parts) if kv else Flux2KleinPipeline(**parts, is_distilled=True)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def _build_redux(folder: Path) -> None:
    """FLUX.1-Redux-dev's layout: a FluxPriorReduxPipeline folder with a SigLIP vision tower (`image_encoder`), its
    processor (`feature_extractor`) and the Redux embedder (`image_embedder`: SigLIP width -> T5 width)."""
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(52)
    # 576 image tokens against 512 T5 tokens, as Redux's 729 against 512: the image holds its share of attention.
    config = SiglipVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=37, num_attention_heads=4,
                                num_hidden_layers=2, image_size=48, patch_size=2)  # fmt: skip
    processor = SiglipImageProcessor(size={"height": 48, "width": 48})
    embedder = ReduxImageEncoder(redux_dim=VISION_HIDDEN, txt_in_features=FLUX_JOINT_DIM)
    for layer in (embedder.redux_up, embedder.redux_down):  # default init: tokens far smaller than text's
        layer.weight.data *= 4
    FluxPriorReduxPipeline(image_encoder=SiglipVisionModel(config), feature_extractor=processor,
                           image_embedder=embedder).save_pretrained(str(folder), safe_serialization=True)  # fmt: skip


def xlabs_shapes(double_blocks: int = 19, joint: int = 4096, inner: int = 3072, clip: int = 768, tokens: int = 16):
    """Every key of XLabs-AI/flux-ip-adapter-v2's ip_adapter.safetensors with its shape (FLUX.1 and CLIP ViT-L/14
    sizes by default): the image projection, then each double-stream block's k and v projections."""
    proj = "ip_adapter_proj_model"
    shapes = {
        f"{proj}.proj.weight": (tokens * joint, clip), f"{proj}.proj.bias": (tokens * joint,),
        f"{proj}.norm.weight": (joint,), f"{proj}.norm.bias": (joint,),
    }  # fmt: skip
    for block in range(double_blocks):
        for kv in ("k", "v"):
            key = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kv}_proj"
            shapes |= {f"{key}.weight": (inner, joint), f"{key}.bias": (inner,)}
    return shapes
