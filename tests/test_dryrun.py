"""Real checkpoints proven without downloading them: every checkpoint a preset names is rebuilt at full size with
random weights and the published key names and shapes, written in the Hub's layout, and loaded by the app's own
engine (same `from_pretrained` / `load_ip_adapter` calls), which then runs one denoising step at 64 x 64.

Slow: `python -m pytest -m slow -k sd15` (about 2 minutes, run by CI) and `-k sdxl` (bf16, about 10 GB).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines import Engine, build_request
from pipelines.face import FaceSpec
from pipelines.offline.full_size import write_mirror
from pipelines.offline.tiny import write_tokenizer
from pipelines.presets import Range
from tests.pipelines.test_face import ALICE

SMALL = Range(default=64, min=64, max=2048, step=8)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def mirrored(request, families, tiny_root, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"mirror-{name}")
    write_tokenizer(root / "tokenizer-files")
    write_mirror(root, families[name], root / "tokenizer-files")
    shutil.copytree(tiny_root / "insightface", root / "insightface")  # a face pack that runs offline
    family = replace(families[name], source="local", faces=FaceSpec("tiny_faces", "insightface"))
    # SDXL runs in bf16 (its fp32 UNet alone is 10 GB; this machine has 24 GB); SD1.5 in fp32.
    engine = Engine(family, device="cpu", dtype=torch.bfloat16 if name == "sdxl" else None, tiny_root=root)
    engine.load()
    return name, engine


CASES = [  # (mode, variant, uses a face photo)
    ("general", "plain", False),
    ("general", "plus", False),
    ("anime", "plus+plus-face", False),
    ("style", "plain", False),
    ("face", "faceid", True),
    ("face", "faceid-plusv2", True),
]


@pytest.mark.slow
def test_every_named_checkpoint_loads_and_steps(mirrored, presets, gold):
    name, engine = mirrored
    for mode, variant, face in CASES:
        preset = replace(presets[mode][name], width=SMALL, height=SMALL)
        refs = [ALICE] if face else [gold]
        request = build_request(
            preset, prompt="a test", seed=0, steps=1, references=refs, variant=variant,
            face_references=[gold] if "plus-face" in variant else (), layout=mode == "style",
        )  # fmt: skip
        result = engine.generate(request)
        assert result.image.size == (64, 64), (mode, variant)
        assert np.isfinite(np.asarray(result.image, dtype=np.float32)).all()
        assert result.diagnostics["unet_calls"] == 1
        if mode == "style":
            weights = engine.block_weights(request.primary.block_map)  # the preset maps address the real UNet's layers
            # style + layout: one attention of each block, 1 transformer layer (SD1.5) or 10 (SDXL) each
            assert sum(1 for w in weights.values() if w) == {"sd15": 2, "sdxl": 20}[name]
    # Stacked at the real shapes: a face (FaceID Plus v2, its LoRA on) on the left, a style on the right, with a
    # negative image, as one combination of the loaded adapters.
    preset = replace(presets["face"][name], width=SMALL, height=SMALL)
    stacked = build_request(
        preset, prompt="a test", seed=0, steps=1, reference=[ALICE], variant="faceid-plusv2", region="left",
        negative_reference=[ALICE], extra_mode="style", extra_reference=[gold], extra_region="right",
    )  # fmt: skip
    loads = engine.counters["adapter_loads"]
    result = engine.generate(stacked)
    assert np.isfinite(np.asarray(result.image, dtype=np.float32)).all() and result.diagnostics["image_prompts"] == 2
    assert engine.counters["adapter_loads"] == loads  # combined from memory
    # A scored comparison at the real shapes: the ViT-H image encoder and the text tower of the same CLIP model.
    preset = replace(presets["general"][name], width=SMALL, height=SMALL)
    sweep = engine.generate_sweep(
        build_request(preset, prompt="a test", seed=0, steps=1, reference=[gold], strengths="0, 1"), score=True
    )
    assert [s["strength"] for s in sweep.scores] == [0.0, 1.0] and sweep.suggested is not None
    assert all(-1 <= s["likeness"] <= 1 and -1 <= s["adherence"] <= 1 for s in sweep.scores)
    # Fast mode at the real shapes: the few-step LoRA over every attention layer, its scheduler and steps.
    fast = engine.generate(build_request(preset, prompt="a test", seed=0, reference=[gold], speed="fast"))
    assert fast.diagnostics["unet_calls"] == engine.family.fast.steps and fast.metadata["fast_lora"]
    assert np.isfinite(np.asarray(fast.image, dtype=np.float32)).all()
    # Structure at the real shapes: each ControlNet kind (SD1.5's three v1.1 models, SDXL's union model), the depth
    # model and the pose models (RT-DETR R50, ViTPose-B) at their published input sizes, and a start image (img2img),
    # beside an image prompt.
    slots = [{"mode": "canny"}, {"mode": "depth"}, {"mode": "pose"}, {"mode": "control", "control_type": "pose"}]
    for structure in [[s] for s in slots] + [[{"mode": "start", "strength": 0.5}]]:
        request = build_request(preset, prompt="a test", seed=0, steps=2, reference=[gold], slots=structure,
                                slot_images=[gold])  # fmt: skip
        result = engine.generate(request)
        assert np.isfinite(np.asarray(result.image, dtype=np.float32)).all() and result.image.size == (64, 64)
        assert result.diagnostics.get("controlnet_calls", 1) == (2 if structure[0]["mode"] != "start" else 1)
    nets = {spec.id: engine.slots.structure.net(spec) for spec in engine.family.controlnets.values()}
    union = name == "sdxl"
    assert len(nets) == (1 if union else 3)  # one union model serves every type
    for net in nets.values():
        assert net.config.block_out_channels == engine.pipe.unet.config.block_out_channels
        assert tuple(net.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
        if union:
            assert (net.config.num_control_type, net.config.num_trans_channel) == (6, 320)
    model, _ = engine.scorer.text_tower()
    assert model.config.hidden_size == 1024 and model.config.projection_dim == 1024
    assert engine.counters["base_loads"] == 1


def test_flux_and_xlabs_at_their_published_shapes_on_the_meta_device(tmp_path, monkeypatch):
    """FLUX.1-dev's transformer (its published config, 11.9 B parameters, no memory) takes the XLabs v2 file's key
    names and shapes through stock `FluxPipeline.load_ip_adapter` (its file reader fed meta tensors); the app wraps
    all 19 double-stream processors and ramps their weights 0.3 -> 0.92."""
    import diffusers.loaders.ip_adapter as ip_adapter
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from pipelines.adapters import ramp_weights
    from pipelines.arch.flux_attention import ScaledFluxIPAdapterAttnProcessor
    from pipelines.attention import wrap_ip_processors
    from pipelines.offline.full_size import FLUX_TRANSFORMER
    from pipelines.offline.tiny import xlabs_shapes
    from pipelines.presets import load_families

    shapes = xlabs_shapes()

    class MetaFile:  # safetensors' safe_open, reading the published keys as meta tensors
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> MetaFile:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def keys(self) -> list[str]:
            return list(shapes)

        def get_tensor(self, key: str) -> torch.Tensor:
            return torch.empty(shapes[key], device="meta", dtype=torch.bfloat16)

    monkeypatch.setattr(ip_adapter, "safe_open", MetaFile)
    spec = load_families()["flux"].adapters["xlabs"]
    (tmp_path / spec.weight_name).write_bytes(b"")
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(FLUX_TRANSFORMER)
    assert round(sum(p.numel() for p in transformer.parameters()) / 1e9, 1) == 11.9
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)  # fmt: skip
    pipe.load_ip_adapter(str(tmp_path), weight_name=spec.weight_name, image_encoder_pretrained_model_name_or_path=None,
                         local_files_only=True)  # fmt: skip
    wrapped = wrap_ip_processors(transformer.attn_processors)
    scaled = [n for n, p in wrapped.items() if isinstance(p, ScaledFluxIPAdapterAttnProcessor)]
    assert scaled == [f"transformer_blocks.{i}.attn.processor" for i in range(19)]
    assert wrapped[scaled[0]].to_k_ip[0].weight.shape == (3072, 4096)
    assert transformer.encoder_hid_proj.image_projection_layers[0].num_image_text_embeds == 16
    weights = ramp_weights(wrapped, spec.layer_ramp)
    assert (weights[scaled[0]], round(weights[scaled[-1]], 6)) == (0.3, 0.92)


def test_klein_at_its_published_shapes_on_the_meta_device():
    """FLUX.2 [klein] 4B's transformer (3.88 B parameters) and Qwen3-4B (4.02 B), no memory: the hidden states the
    pipeline stacks (9, 18, 27) exist, their width is the transformer's text width, and a pass with four 1024²
    references at 1024² lays the tokens out as the architecture does (image first, then each reference)."""
    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipelines.arch.flux2 import TEXT_LAYERS
    from pipelines.offline.full_size import FLUX2_KLEIN_TRANSFORMER, QWEN3_4B

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel.from_config(FLUX2_KLEIN_TRANSFORMER)
        text = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
    assert round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2) == 3.88
    assert round(sum(p.numel() for p in text.parameters()) / 1e9, 2) == 4.02
    assert max(TEXT_LAYERS) <= text.config.num_hidden_layers
    assert len(TEXT_LAYERS) * text.config.hidden_size == transformer.config.joint_attention_dim
    image, refs = 64 * 64, 4 * 64 * 64  # 1024² at 16 pixels a token
    with torch.device("meta"):
        tokens, text = torch.empty(1, image + refs, 128), torch.empty(1, 512, 7680)
        out = transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.empty(1),
                          img_ids=torch.zeros(1, image + refs, 4), txt_ids=torch.zeros(1, 512, 4),
                          return_dict=False)[0]  # fmt: skip
    assert out[:, :image].shape == (1, image, 128)
