"""The image-prompt library: engine, presets, requests. Never imports gradio."""

from . import quiet  # noqa: F401 - first: it silences the loaders' known notes before the imports below trigger them
from .engine import Engine, GenerationResult
from .errors import ImagePromptError, InvalidRequestError, ModelNotAvailableError, PresetError, ReferenceImageError
from .presets import FamilySpec, ModePreset, load_families, load_mode_presets
from .request import GenerationRequest, build_request

__all__ = [
    "Engine",
    "FamilySpec",
    "GenerationRequest",
    "GenerationResult",
    "ImagePromptError",
    "InvalidRequestError",
    "ModePreset",
    "ModelNotAvailableError",
    "PresetError",
    "ReferenceImageError",
    "build_request",
    "load_families",
    "load_mode_presets",
]
