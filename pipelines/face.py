"""Face analysis for the Consistent-face mode: insightface detection + ArcFace embeddings, created once, cached.

The largest face of each reference is used; several faces give a warning, no face a clear error. Several photos
of one person average into one identity (the mean of their unit embeddings, renormalised).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .errors import InvalidRequestError, ModelNotAvailableError
from .images import ReferenceImage
from .lru import LRU
from .presets import FaceSpec

log = logging.getLogger(__name__)
ALIGNED_SIZE = 224  # aligned face crop fed to the CLIP image encoder (FaceID Plus)


@dataclass(frozen=True)
class FaceResult:
    """The face used from one reference."""

    embedding: np.ndarray  # (512,) unit-length ArcFace embedding
    bbox: tuple[float, float, float, float]
    aligned: Image.Image  # ALIGNED_SIZE x ALIGNED_SIZE crop aligned on the 5 landmarks
    faces_found: int


class FaceError(InvalidRequestError):
    """A reference has no usable face."""

    def __init__(self, message: str) -> None:
        super().__init__("reference", message)


class FaceAnalyzer:
    """One insightface `FaceAnalysis`, loaded on first use and shared; results cached by image content."""

    def __init__(
        self, spec: FaceSpec, family: str, use_cuda: bool, cache_size: int = 256, drawn_only: bool = False
    ) -> None:
        self.spec = spec
        self.drawn_only = drawn_only  # the offline (tiny) pack: it finds drawn faces only, never a real photo
        self.family = family
        self.use_cuda = use_cuda
        self.counters: Counter[str] = Counter()  # detections, cache_hits
        self._app = None
        self._lock = threading.Lock()
        self._cache = LRU(cache_size)  # (scope, pixel hash) -> faces

    def load(self) -> object:
        """Load the pack now (start-up warm-up); raises ModelNotAvailableError when it cannot be had."""
        with self._lock:
            return self._load()

    def _load(self) -> object:
        if self._app is not None:
            return self._app
        from insightface.app import FaceAnalysis  # imported late: it prints and imports cv2/onnxruntime

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.use_cuda else ["CPUExecutionProvider"]
        kwargs = {"root": self.spec.root} if self.spec.root else {}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # insightface prints every model it finds
                app = FaceAnalysis(
                    name=self.spec.pack, allowed_modules=["detection", "recognition"], providers=providers, **kwargs
                )
                app.prepare(ctx_id=0 if self.use_cuda else -1, det_size=(640, 640))
        except (OSError, AssertionError, ValueError, RuntimeError) as e:
            # A missing pack is downloaded from GitHub releases; without a network that fails at once.
            where = Path(self.spec.root or "~/.insightface").expanduser() / "models" / self.spec.pack
            raise ModelNotAvailableError(
                f"insightface model pack '{self.spec.pack}' (expected in {where})",
                self.family,
                f"{type(e).__name__}: {str(e)[:160]}",
                source="GitHub (insightface releases)",
            ) from e
        self._app = app
        return app

    def _detect(self, ref: ReferenceImage, scope: str) -> list:
        """insightface faces of one reference, cached by `scope` (one visitor) and pixel hash (no second detection)."""
        key = (scope, ref.sha256)
        with self._lock:
            faces = self._cache.get(key)
            if faces is not None:
                self.counters["cache_hits"] += 1
                return faces
            faces = self._load().get(bgr(ref.image))
            self.counters["detections"] += 1
            self._cache.put(key, faces)
            return faces

    def largest_embedding(self, image: Image.Image) -> np.ndarray | None:
        """The unit ArcFace embedding of the largest face in `image` (a generated image: not cached), or None."""
        with self._lock:
            faces = self._load().get(bgr(image.convert("RGB")))
            self.counters["detections"] += 1
        if not faces:
            return None
        return np.asarray(largest(faces)[0].normed_embedding, dtype=np.float32)

    def analyze(
        self, refs: Sequence[ReferenceImage], label: str = "reference", scope: str = ""
    ) -> tuple[list[FaceResult], list[str]]:
        """The largest face of each reference, and warnings for references with several faces.

        Detections are cached per `scope`: one visitor's cache hits say nothing about another's photos.
        """
        from insightface.utils import face_align

        results, warnings = [], []
        for i, ref in enumerate(refs, 1):
            faces = self._detect(ref, scope)
            if not faces and self.drawn_only:
                raise FaceError(
                    f"No face found in {label} {i}. The offline face model only finds drawn faces like the example; "
                    "real photos need the real insightface pack (run without --models tiny)."
                )
            if not faces:
                raise FaceError(f"No face found in {label} {i}. Use a photo where one face is clearly visible.")
            face, why = largest(faces)
            if len(faces) > 1:
                warnings.append(f"{label.capitalize()} {i} shows {len(faces)} faces; {why} ({_where(face, ref)}) is "
                                "used.")  # fmt: skip
            aligned = face_align.norm_crop(bgr(ref.image), landmark=face.kps, image_size=ALIGNED_SIZE)[:, :, ::-1]
            results.append(
                FaceResult(
                    embedding=np.asarray(face.normed_embedding, dtype=np.float32),
                    bbox=tuple(float(v) for v in face.bbox),
                    aligned=Image.fromarray(np.ascontiguousarray(aligned)),
                    faces_found=len(faces),
                )
            )
        return results, warnings


def bgr(image: Image.Image) -> np.ndarray:
    """An RGB picture as the BGR array insightface (OpenCV) takes."""
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def flip_channels(image: Image.Image) -> Image.Image:
    """RGB <-> BGR as a picture (FaceID Plus checkpoints were trained on BGR crops: see models.toml)."""
    return Image.fromarray(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))


def largest(faces: Sequence[Any]) -> tuple[Any, str]:
    """The face FaceID uses: the largest box; among boxes of the same size (within 5 %), the clearest detection.
    Also says which rule chose it, for the person."""
    areas = [float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])) for f in faces]
    top = max(areas)
    tied = [f for f, a in zip(faces, areas, strict=True) if a >= 0.95 * top]
    if len(tied) == 1:
        return tied[0], "the largest one"
    return max(tied, key=lambda f: float(getattr(f, "det_score", 0.0))), "they are the same size; the clearest one"


def _where(face: Any, ref: ReferenceImage) -> str:
    """Where a face is in its picture, in words: "on the left", "in the middle", "on the right"."""
    centre = (face.bbox[0] + face.bbox[2]) / 2 / max(ref.image.width, 1)
    return "on the left" if centre < 1 / 3 else "on the right" if centre > 2 / 3 else "in the middle"


def identity(results: Sequence[FaceResult]) -> np.ndarray:
    """One identity from several photos: the mean of the unit embeddings, renormalised to unit length."""
    mean = np.mean([r.embedding for r in results], axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def annotate(ref: ReferenceImage, result: FaceResult) -> Image.Image:
    """The reference with the chosen face's box drawn on it."""
    img = ref.image.copy()
    width = max(2, round(max(img.size) / 200))
    ImageDraw.Draw(img).rectangle(result.bbox, outline=(0, 255, 0), width=width)
    return img


def face_views(refs: Sequence[ReferenceImage], results: Sequence[FaceResult]) -> list[Image.Image]:
    """What FaceID sees: each reference with its chosen face box, then each aligned crop."""
    return [annotate(ref, res) for ref, res in zip(refs, results, strict=True)] + [r.aligned for r in results]
