"""Where models come from: the Hugging Face Hub (or its cache), the generated tiny family, or a local mirror.

Every loader goes through one `ModelSource`, so the real and the offline families share one code path
(`from_pretrained`, `load_ip_adapter`, insightface's `FaceAnalysis`); only the folder a repository id names differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ModelNotAvailableError
from .face import FaceSpec
from .presets import AdapterSpec, FamilySpec

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class ModelSource:
    """Resolves the repository ids of one family and loads from them with one clear error when they are absent."""

    def __init__(self, family: FamilySpec, tiny_root: Path | None = None) -> None:
        self.family = family
        self.tiny_root = tiny_root

    def resolve(self, repo: str) -> str:
        """A Hub id as is; for the tiny family its generated folder; for a local mirror `tiny_root/<repo>`."""
        if self.family.source == "tiny":
            from .offline.tiny import ensure_tiny_models  # builds models from configs: loads the model classes

            return str(ensure_tiny_models(self.tiny_root) / repo)
        if self.family.source == "local":
            return str(Path(self.tiny_root) / repo)
        return repo

    @property
    def local_only(self) -> bool:
        return self.family.source != "hub"

    def from_pretrained(self, loader: Callable[..., Any], repo: str, **kwargs: Any) -> Any:
        """`loader.from_pretrained`, turning "not cached and Hub unreachable" into one clear error."""
        try:
            return loader(self.resolve(repo), local_files_only=self.local_only, **kwargs)
        except OSError as e:
            cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelNotAvailableError(repo, self.family.name, cause) from e

    def checkpoint(self, spec: AdapterSpec) -> dict[str, dict[str, torch.Tensor]]:
        """An IP-Adapter checkpoint read as diffusers' `load_ip_adapter` reads it (FaceID: to split off its LoRA)."""
        from diffusers.models.model_loading_utils import load_state_dict
        from diffusers.utils import _get_model_file

        try:
            path = _get_model_file(
                self.resolve(spec.repo), weights_name=spec.weight_name, subfolder=spec.subfolder or None,
                local_files_only=self.local_only,
            )  # fmt: skip
        except OSError as e:
            raise ModelNotAvailableError(spec.id, self.family.name, str(e)[:200]) from e
        return load_state_dict(path)

    def lora_file(self, repo: str, weight_name: str) -> dict[str, torch.Tensor]:
        """A LoRA's safetensors file from `repo`, as a state dict (read once by the caller, then kept)."""
        from diffusers.utils import _get_model_file
        from safetensors.torch import load_file

        try:
            path = _get_model_file(self.resolve(repo), weights_name=weight_name, local_files_only=self.local_only)
        except OSError as e:
            raise ModelNotAvailableError(f"{repo}/{weight_name}", self.family.name, str(e)[:200]) from e
        return load_file(path)

    def face_spec(self) -> FaceSpec | None:
        """The family's insightface pack, its folder resolved like any other model."""
        spec = self.family.faces
        if spec is not None and self.family.source != "hub" and spec.root:
            spec = FaceSpec(spec.pack, self.resolve(spec.root))
        return spec

    def pipeline(self, base: str, dtype: torch.dtype) -> DiffusionPipeline:
        """The family's base pipeline `base` ("default" or a key of `alt_bases`), on the CPU in `dtype`."""
        from diffusers import AutoencoderKL

        from .arch import architecture

        family = self.family
        cls = architecture(family.pipeline).pipeline_class()
        repo = family.bases[base]
        kwargs: dict[str, Any] = {"dtype": dtype}
        if dtype == torch.float16 and family.vae_fp16:
            kwargs["vae"] = self.from_pretrained(AutoencoderKL.from_pretrained, family.vae_fp16, **kwargs)
        half = dtype in (torch.float16, torch.bfloat16)
        if half and family.weights_variant:
            try:
                return self.from_pretrained(cls.from_pretrained, repo, variant=family.weights_variant, **kwargs)
            except (ModelNotAvailableError, ValueError):  # a base without those files: the full-precision ones
                pass
        return self.from_pretrained(cls.from_pretrained, repo, **kwargs)
