"""FLUX.2 [klein]: a Flux2 transformer denoiser, a Qwen3 text encoder (three hidden layers stacked), 32-channel latents
patchified 2 x 2 and batch-normalised, step-distilled (no guidance). Reference images enter as extra latent tokens
(in-context): `Flux2KleinPipeline(image=[...])` has no strength, so this architecture runs its own pass.

The strength of a reference prompt is image guidance against the same pass without it. With R the reference
prompts that act on a sample at a step (strength not 0) and s_k its strength of prompt k in R:

    v = v(R) + sum over k in R of (s_k - 1) * (v(R) - v(R without k))

so at every strength 1 the pass is the stock pipeline's (v(R): one call per step); a prompt at 0 is not in R (exactly
the image without it, no branch runs for it, and the other references keep the positions the stock pipeline gives
them without it); one prompt alone at s gives v(none) + s * (v(R) - v(none)), the image-guidance form seen in the
field. Each branch (a set of references) is one call per step on the samples that need it: a sweep over one prompt's
strength costs two calls per step, the calls of one image at a strength between 0 and 1, whatever the number of
cells. Outside a prompt's window of steps it acts at 0. The strengths are per sample and never stored on the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..conditioning import PassInput, ReferenceLatents
from . import Architecture

MAX_SEQUENCE_LENGTH = 512  # Qwen3 tokens, the pipeline's default
TEXT_LAYERS = (9, 18, 27)  # the hidden states the pipeline stacks into the prompt embedding
TEMPLATE_TOKENS = 12  # the chat template's own tokens around the prompt (user turn, assistant turn, empty thinking)


class Flux2(Architecture):
    """`kv`: FLUX.2 [klein] 9B-KV (`Flux2KleinKVPipeline`): the references only attend to themselves, so their keys
    and values are computed once, the first time a branch needs them, and reused at every later step and by every
    sample of the pass (they do not depend on the image, the prompt or the step)."""

    accepts = frozenset({ReferenceLatents})
    controlnet_union = False

    def __init__(self, kv: bool = False) -> None:
        self.kv = kv
        self.name = "flux2-kv" if kv else "flux2"

    def pipeline_class(self) -> type:
        from diffusers import Flux2KleinKVPipeline, Flux2KleinPipeline

        return Flux2KleinKVPipeline if self.kv else Flux2KleinPipeline

    def structure_pipeline(self, controls: bool, img2img: bool) -> str:
        raise NotImplementedError("structure slots are not offered on FLUX.2 yet")

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.transformer

    def text_encoders(self, pipe: Any) -> list[torch.nn.Module]:
        return [pipe.text_encoder]

    def stock_call(self, text: dict[str, torch.Tensor], guidance: float) -> dict[str, Any]:
        """The stock call makes the text positions itself, and reads no guidance (the KV pipeline takes none)."""
        return {"prompt_embeds": text["prompt_embeds"]}

    def notes(self, settings: Any) -> list[str]:
        if settings.negative_prompt.strip():
            return ["FLUX.2 [klein] reads no negative prompt (it is step-distilled): the negative prompt was left out."]
        return []

    def prompt_tokenizer(self, pipe: Any) -> tuple[Any, int]:
        """Qwen3 reads the chat-templated prompt up to `MAX_SEQUENCE_LENGTH` tokens."""
        return pipe.tokenizer, MAX_SEQUENCE_LENGTH - TEMPLATE_TOKENS

    def encode_text(self, pipe: Any, prompt: str, negative_prompt: str, guided: bool) -> dict[str, torch.Tensor]:
        """The same `encode_prompt` call Flux2KleinPipeline makes (a step-distilled model reads no negative)."""
        with torch.inference_mode():
            embeds, text_ids = pipe.encode_prompt(
                prompt=prompt, device=pipe._execution_device, num_images_per_prompt=1,
                max_sequence_length=MAX_SEQUENCE_LENGTH, text_encoder_out_layers=TEXT_LAYERS,
            )  # fmt: skip
        return {"prompt_embeds": embeds, "text_ids": text_ids}

    def ip_adapter_load_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError("FLUX.2 takes references in context, not through an IP-Adapter")

    def cfg_batch(self, guidance: float) -> bool:
        return False  # step-distilled: one row per image, the guidance value is not read

    def initial_latents(self, pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
        """Flux2KleinPipeline.prepare_latents' noise: (1, 4 x channels, h // 16, w // 16), packed to (1, tokens,
        4 x channels)."""
        from diffusers.utils.torch_utils import randn_tensor

        channels = pipe.transformer.config.in_channels
        h, w = 2 * (int(height) // (pipe.vae_scale_factor * 2)), 2 * (int(width) // (pipe.vae_scale_factor * 2))
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (1, channels, h // 2, w // 2)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return pipe._pack_latents(noise)

    # ------------------------------------------------------------------------------------------ references

    def reference_image(self, pipe: Any, image: Any) -> torch.Tensor:
        """A reference as Flux2KleinPipeline prepares it: down to 1024 x 1024 pixels when larger, cropped to a
        multiple of 16, as a (1, 3, h, w) tensor in [-1, 1]."""
        pipe.image_processor.check_image_input(image)
        width, height = image.size
        if width * height > 1024 * 1024:
            image = pipe.image_processor._resize_to_target_area(image, 1024 * 1024)
            width, height = image.size
        multiple = pipe.vae_scale_factor * 2
        width, height = width // multiple * multiple, height // multiple * multiple
        return pipe.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")

    def encode_reference(self, pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
        """One reference's latents (1, 4 x channels, h / 16, w / 16), as `prepare_image_latents` encodes them."""
        vae = pipe.vae
        with torch.inference_mode():
            return pipe._encode_vae_image(pixels.to(device=vae.device, dtype=vae.dtype), generator=None)

    def denoise(self, job: PassInput) -> tuple[np.ndarray, list[bool]]:
        """One batched pass: Flux2KleinPipeline's loop (same timesteps, same transformer calls, same scheduler
        steps, same decoding), with each step's velocity composed from one call per branch of references."""
        self.check(job.conditioning)
        pipe, batch = job.pipe, job.batch
        refs = next((v for v in job.conditioning if isinstance(v, ReferenceLatents)), None)
        parts = refs.parts if refs is not None else []
        latents = job.latents.to(pipe._execution_device)  # (batch, tokens, channels), packed
        h = 2 * (int(job.height) // (pipe.vae_scale_factor * 2)) // 2
        w = 2 * (int(job.width) // (pipe.vae_scale_factor * 2)) // 2
        latent_ids = pipe._prepare_latent_ids(torch.empty(batch, 1, h, w)).to(pipe._execution_device)
        branches = _Branches(self, job, [latents for latents, _, _ in parts], latent_ids)
        with torch.inference_mode():
            for i, t in enumerate(self._timesteps(pipe, job.steps, latents.shape[1])):
                strengths = [s if first <= i < stop else [0.0] * batch for _, s, (first, stop) in parts]
                plan = [_composition([row[n] for row in strengths]) for n in range(batch)]
                noise_pred = branches.velocity(plan, latents, t)
                latents_dtype = latents.dtype
                latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if latents.dtype != latents_dtype and torch.backends.mps.is_available():
                    latents = latents.to(latents_dtype)
                if job.on_step is not None:
                    job.on_step(i + 1)
            images = self._decode(pipe, latents, latent_ids, h, w)
        return images, [False] * batch

    def _timesteps(self, pipe: Any, steps: int, tokens: int) -> torch.Tensor:
        """The pass's timesteps, as Flux2KleinPipeline sets them (its sigmas, the empirical shift for the image's
        token count)."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

        sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=tokens, num_steps=steps)
        timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, pipe._execution_device, sigmas=sigmas, mu=mu)
        if hasattr(pipe.scheduler, "set_begin_index"):
            pipe.scheduler.set_begin_index(0)
        return timesteps

    def _tokens(
        self, pipe: Any, groups: Sequence[list[torch.Tensor]], device: Any
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference tokens of a branch and their positions, as `prepare_image_latents` lays them out for these
        images in this order (each image its own time coordinate: 10, 20, ...); None without references."""
        latents = [x for group in groups for x in group]
        if not latents:
            return None
        ids = pipe._prepare_image_ids(latents)
        tokens = torch.cat([pipe._pack_latents(x).squeeze(0) for x in latents], dim=0).unsqueeze(0)
        return tokens.to(device), ids.to(device)

    def _decode(self, pipe: Any, latents: torch.Tensor, ids: torch.Tensor, h: int, w: int) -> np.ndarray:
        """Flux2KleinPipeline's decoding, one image at a time (a cell decodes as its single render does)."""
        latents = pipe._unpack_latents_with_ids(latents, ids)  # (the KV pipeline takes no size)
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        std = std.to(latents.device, latents.dtype)
        latents = pipe._unpatchify_latents(latents * std + mean)
        out = []
        for row in latents.split(1):
            image = pipe.vae.decode(row.to(pipe.vae.device), return_dict=False)[0]
            out.append(pipe.image_processor.postprocess(image, output_type="np"))
        return np.concatenate(out)


class _Branches:
    """A pass's transformer calls: one per branch (a set of reference prompts) per step, on the samples that need
    it; each branch's reference tokens laid out once, and on a KV family its references' keys and values once."""

    def __init__(self, arch: Flux2, job: PassInput, parts: list[list[torch.Tensor]], latent_ids: torch.Tensor) -> None:
        self.arch, self.pipe, self.parts, self.latent_ids = arch, job.pipe, parts, latent_ids
        self.embeds = job.text["prompt_embeds"].repeat(job.batch, 1, 1)
        self.text_ids = job.text["text_ids"].repeat(job.batch, 1, 1)
        self.tokens: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.caches: dict[tuple[int, ...], Any] = {}

    def velocity(self, plan: list[tuple[tuple[int, ...], list[tuple[int, float]]]], latents: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Each sample's composed velocity (`plan`: per sample, its acting prompts and the guided ones)."""
        needed: dict[tuple[int, ...], list[int]] = {}  # each branch, and the samples that need it
        for n, (acting, guided) in enumerate(plan):
            for members in (acting, *(_without(acting, k) for k, _ in guided)):
                needed.setdefault(members, []).append(n)
        out = {members: self.call(members, rows, latents, t) for members, rows in needed.items()}
        row = {members: {n: j for j, n in enumerate(rows)} for members, rows in needed.items()}
        samples = []
        for n, (acting, guided) in enumerate(plan):
            v = full = out[acting][row[acting][n]]
            for k, strength in guided:
                rest = _without(acting, k)
                v = v + (strength - 1) * (full - out[rest][row[rest][n]])
            samples.append(v)
        return torch.stack(samples)

    def call(self, members: tuple[int, ...], rows: list[int], latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity for `rows` of the batch with the references of prompts `members`."""
        pipe, transformer = self.pipe, self.pipe.transformer
        if members not in self.tokens:
            self.tokens[members] = self.arch._tokens(pipe, [self.parts[k] for k in members], pipe._execution_device)
        n = len(rows)
        call = {"timestep": t.expand(n).to(latents.dtype) / 1000, "guidance": None,
                "encoder_hidden_states": self.embeds[rows], "txt_ids": self.text_ids[rows],
                "joint_attention_kwargs": None, "return_dict": False}  # fmt: skip
        hidden, ids = latents[rows].to(transformer.dtype), self.latent_ids[rows]
        if self.tokens[members] is None:
            return transformer(hidden_states=hidden, img_ids=ids, **call)[0]
        refs, ref_ids = self.tokens[members]
        if self.arch.kv and members in self.caches:  # the references' keys and values, without their tokens
            cache = _kv_for_rows(self.caches[members], n)
            return transformer(hidden_states=hidden, img_ids=ids, kv_cache=cache, kv_cache_mode="cached", **call)[0]
        if self.arch.kv:  # Flux2KleinKVPipeline's first step: [references, image], their keys and values kept
            hidden = torch.cat([refs.expand(n, -1, -1), latents[rows]], dim=1).to(transformer.dtype)
            ids = torch.cat([ref_ids.expand(n, -1, -1), self.latent_ids[rows]], dim=1)
            out, self.caches[members] = transformer(hidden_states=hidden, img_ids=ids, kv_cache_mode="extract",
                                                    num_ref_tokens=refs.shape[1], **call)  # fmt: skip
            return out
        hidden = torch.cat([latents[rows], refs.expand(n, -1, -1)], dim=1).to(transformer.dtype)
        ids = torch.cat([self.latent_ids[rows], ref_ids.expand(n, -1, -1)], dim=1)
        with transformer.cache_context("cond"):
            out = transformer(hidden_states=hidden, img_ids=ids, **call)[0]
        return out[:, : latents.size(1) :]


def _kv_for_rows(cache: Any, rows: int) -> Any:
    """A KV cache for `rows` samples, from one whose samples all hold the same references' keys and values."""
    from diffusers.models.transformers.transformer_flux2 import Flux2KVCache

    out = Flux2KVCache(len(cache.double_block_caches), len(cache.single_block_caches))
    out.num_ref_tokens = cache.num_ref_tokens
    for mine, theirs in zip(out.double_block_caches + out.single_block_caches,
                            cache.double_block_caches + cache.single_block_caches, strict=True):  # fmt: skip
        k, v = theirs.get()
        mine.store(k[:1].expand(rows, *k.shape[1:]), v[:1].expand(rows, *v.shape[1:]))
    return out


def _composition(strengths: Sequence[float]) -> tuple[tuple[int, ...], list[tuple[int, float]]]:
    """One sample's reference prompts at this step: those that act (strength not 0), and those of them guided
    against the image without them (strength not 1) with their strengths."""
    acting = tuple(k for k, s in enumerate(strengths) if s != 0)
    return acting, [(k, strengths[k]) for k in acting if strengths[k] != 1]


def _without(members: tuple[int, ...], k: int) -> tuple[int, ...]:
    return tuple(m for m in members if m != k)
