"""Typed errors. Each message is written for the person who can fix the problem."""

from __future__ import annotations


class ImagePromptError(Exception):
    """Base class: the message is shown to the user as is."""


class PresetError(ImagePromptError):
    """A preset file is invalid; the message names the file, key, value and what is allowed."""


class InvalidRequestError(ImagePromptError):
    """A request parameter is invalid; `field` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ReferenceImageError(InvalidRequestError):
    """A reference image cannot be used (unreadable, too large, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__("reference", message)


class ModelNotAvailableError(ImagePromptError):
    """A checkpoint is neither reachable on the Hub nor in the local cache."""

    def __init__(self, repo: str, family: str, cause: str, source: str = "the Hugging Face Hub") -> None:
        super().__init__(
            f"Cannot load '{repo}' (model family '{family}'): it is not on this machine and {source} could not "
            f"be reached ({cause}). Connect to the internet once to download it, or run offline with "
            "`python app.py --models tiny`."
        )
        self.repo = repo
        self.family = family


class BlockMapError(PresetError):
    """An InstantStyle block map names a block or layer count the UNet does not have."""


class GenerationError(ImagePromptError):
    """A run failed in a way the person can act on (out of memory, numerical overflow)."""


class StoppedError(ImagePromptError):
    """The person (or their client) stopped the job between two denoising steps: nothing of it was kept."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"Stopped after step {done} of {total}.")
        self.done, self.total = done, total


def shown(value: object, limit: int = 60) -> str:
    """A value quoted in a message: its repr, cut to `limit` characters (a message never echoes a whole payload)."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's digit limit for printing
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[: limit - 1] + "…"
