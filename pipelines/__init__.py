"""The image-prompt library: engine, presets, requests. Never imports gradio."""

from . import quiet  # noqa: F401 - first: it silences the loaders' known notes before the imports below trigger them
from .codec import build_request
from .errors import ImagePromptError, InvalidRequestError, ModelNotAvailableError, PresetError, ReferenceImageError
from .presets import FamilySpec, ModePreset, load_families, load_mode_presets
from .request import GenerationRequest

_LAZY = {"Engine": "engine", "GenerationResult": "result"}  # loads the model libraries: only when first used


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
