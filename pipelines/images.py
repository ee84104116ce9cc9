"""Reference images: open anything a person may upload and turn it into a plain RGB image with a content hash."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ReferenceImageError

MAX_REFERENCE_PIXELS = 100_000_000  # larger images are refused from their header, before decoding (bombs)
MAX_REFERENCE_SIDE = 2048  # legal but huge images are downscaled to this before anything else
MAX_ASPECT = 4  # a centre crop of a longer strip is taken before resizing (CLIP would crop it anyway)


@dataclass(frozen=True)
class ReferenceImage:
    """An RGB reference and the SHA-256 of its RGB pixels (so the same picture hashes alike in any format).

    Two references are equal when their pixels are: equality and hashing use `sha256` only.
    """

    image: Image.Image = field(compare=False)
    sha256: str


def _flatten(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency composited on white, 16-bit scaled down, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or img.mode == "LA" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def load_reference(
    source: str | Path | bytes | Image.Image, index: int = 1, label: str = "reference"
) -> ReferenceImage:
    """Open a reference (path, bytes or PIL image); errors name it by `label` and its 1-based `index`."""
    label = f"{label} {index}"
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            if not data:
                raise ReferenceImageError(f"The file for {label} is empty. Upload an image file.")
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_REFERENCE_PIXELS:
            raise ReferenceImageError(
                f"{label.capitalize()} is too large ({w}x{h} pixels; at most {MAX_REFERENCE_PIXELS:,} pixels)."
            )
        img.seek(0)  # animated images: the first frame
        if img.format == "JPEG":
            img.draft("RGB", (MAX_REFERENCE_SIDE, MAX_REFERENCE_SIDE))  # decode at 1/2..1/8 scale: bounded memory
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _flatten(img)
    except ReferenceImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ReferenceImageError(f"{label.capitalize()} is too large to open safely ({e}).") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ReferenceImageError(
            f"{label.capitalize()} is not a readable image ({type(e).__name__}). Upload a PNG, JPEG or WebP file."
        ) from e
    if max(img.size) > MAX_REFERENCE_SIDE:
        img.thumbnail((MAX_REFERENCE_SIDE, MAX_REFERENCE_SIDE), Image.Resampling.LANCZOS)
    digest = hashlib.sha256(f"{img.width}x{img.height}:".encode() + img.tobytes()).hexdigest()
    return ReferenceImage(image=img, sha256=digest)


PAD_COLOUR = (128, 128, 128)  # neutral grey: padding adds as little colour to the image prompt as possible


def square_for_encoder(img: Image.Image, crop: str) -> Image.Image:
    """How a reference becomes square: "center" leaves it to the encoder's centre crop, "pad" pads, "squash" resizes."""
    w, h = img.size
    if crop == "center" and max(w, h) > MAX_ASPECT * min(w, h):
        side = min(w, h)  # what CLIP's resize + centre crop keeps, without resizing a strip to 90000 px first
        return img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if crop == "center" or w == h:
        return img
    side = max(w, h)
    if crop == "pad":
        out = Image.new("RGB", (side, side), PAD_COLOUR)
        out.paste(img, ((side - w) // 2, (side - h) // 2))
        return out
    if crop == "squash":
        return img.resize((side, side), Image.Resampling.BICUBIC)
    raise ValueError(f"unknown crop mode {crop!r}")
