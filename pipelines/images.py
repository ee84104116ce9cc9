"""Reference images: open anything a person may upload and turn it into a plain RGB image with a content hash.

Decoding is bounded: only a list of formats is parsed, the pixel budget is checked on the size that will really
be decoded (read from the header, before any pixel is decoded; JPEG's draft mode shrinks that size first), one frame
is decoded, and high-bit-depth images are converted in strips without full-size float copies. bench/decode_memory.py
measures the peak memory of a worst-case reference of every format.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ReferenceImageError
from .lru import LRU

MAX_DECODE_PIXELS = 64 * 2**20  # 8192 x 8192: the most pixels one reference may decode to (checked from the header)
# Pillow's WebP decoder holds two full RGBA canvases besides the image (measured: 5x the RGB size, not 2.3-3x as
# the other formats), so a WebP may declare half the pixels: its peak stays within that of the other formats.
DECODE_COST = {"WEBP": 2}
MAX_REFERENCE_SIDE = 2048  # larger images are downscaled to this before anything else
MAX_ASPECT = 4  # a centre crop of a longer strip is taken before resizing (CLIP would crop it anyway)
# Formats parsed at all: what people upload (JPEG includes the MPO photos of many phones). Pillow's other
# plugins (PSD, EPS, DDS, FITS, ...) never see the bytes.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "ICO", "CUR", "PPM", "AVIF")
STRIP_ROWS = 256  # rows converted at a time from 16/32-bit samples to 8 bits
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ICO_MAGIC = b"\x00\x00\x01\x00"
# EXIF orientation -> the transposes that show the picture upright (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


@dataclass(frozen=True)
class ReferenceImage:
    """An RGB reference and the SHA-256 of its RGB pixels (so the same picture hashes alike in any format).

    Two references are equal when their pixels are: equality and hashing use `sha256` only.
    """

    image: Image.Image = field(compare=False)
    sha256: str


def decode_size(img: Image.Image) -> tuple[int, int]:
    """The size `img.load()` will decode to, from headers only (an ICO's embedded PNG can claim another size)."""
    ico = getattr(img, "ico", None)
    if ico is not None:  # ICO: the chosen entry may hold a PNG whose own header is what gets decoded
        entry = ico.entry[ico.getentryindex(img.size)]
        ico.buf.seek(entry.offset)
        head = ico.buf.read(24)
        if head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
    return img.size


def ico_entry_sizes(fp: IO[bytes]) -> list[tuple[int, int]]:
    """The sizes an ICO's entries decode to, from their own headers; [] for any other file. Leaves `fp` at 0.

    Pillow decodes an ICO's largest entry inside `Image.open` (IcoImageFile._open calls load), so an ICO must be
    judged before it is opened: each entry is an embedded PNG (its IHDR gives the size) or a DIB (its header gives
    width and twice the height, image plus mask).
    """
    try:
        head = fp.read(6)
        if len(head) < 6 or head[:4] != _ICO_MAGIC:
            return []
        count = struct.unpack("<H", head[4:6])[0]
        directory = fp.read(16 * count)
        sizes = []
        for i in range(len(directory) // 16):
            offset = struct.unpack("<I", directory[16 * i + 12 : 16 * i + 16])[0]
            fp.seek(offset)
            entry = fp.read(24)
            if entry[:8] == _PNG_MAGIC and entry[12:16] == b"IHDR":
                sizes.append(struct.unpack(">II", entry[16:24]))
            elif len(entry) >= 12:
                width, height = struct.unpack("<ii", entry[4:12])
                sizes.append((abs(width), abs(height) // 2))
        return sizes
    finally:
        fp.seek(0)


def _check_budget(size: tuple[int, int], fmt: str | None, label: str) -> None:
    w, h = size
    budget = MAX_DECODE_PIXELS // DECODE_COST.get(fmt or "", 1)
    if w * h > budget:
        raise ReferenceImageError(
            f"{label.capitalize()} is too large ({w}x{h} pixels; at most {budget:,} pixels for {fmt}). "
            "Use a smaller image."
        )


def _to_8_bit(img: Image.Image) -> Image.Image:
    """16/32-bit single-channel samples to "L", a strip at a time (no full-size float64 copy).

    Values above 255 are read as 16-bit (0..65535 -> 0..255); images whose values all fit 8 bits keep them.
    """
    _, high = img.getextrema()
    top = 65535 if high > 255 else 255
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for y in range(0, img.height, STRIP_ROWS):
        strip = np.asarray(img.crop((0, y, img.width, min(y + STRIP_ROWS, img.height))))
        strip = np.clip(strip, 0, top).astype(np.uint32)  # (rows, width): 4 bytes a pixel, strip-sized only
        out[y : y + strip.shape[0]] = strip * 255 // top if top != 255 else strip
    return Image.fromarray(out, mode="L")


def _flatten(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency composited on white, 16-bit scaled down, CMYK converted."""
    if img.mode in _HIGH_BIT_MODES:
        img = _to_8_bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img)  # in place, reading the alpha band where it is: no second copy
        return white
    return img.convert("RGB")


DECODED_KEPT = 16  # decoded references kept for the visitor who sent them (at most 2048 px a side: 12 MB each)
_decoded = LRU(DECODED_KEPT)
_decoded_lock = threading.Lock()
_decode_scope: ContextVar[str | None] = ContextVar("decode_scope", default=None)


@contextmanager
def decode_cache(scope: str | None) -> Iterator[None]:
    """Within this block, a file decoded for visitor `scope` is kept: the same upload again (same path, size and
    modification time) is not decoded a second time. Kept per visitor: a faster answer says nothing about anyone
    else's uploads (Gradio names uploads by their content). No scope: nothing is kept."""
    token = _decode_scope.set(scope or None)
    try:
        yield
    finally:
        _decode_scope.reset(token)


def load_reference(
    source: str | Path | bytes | Image.Image, index: int = 1, label: str = "reference"
) -> ReferenceImage:
    """Open a reference (path, bytes or PIL image); errors name it by `label` and its 1-based `index`."""
    scope = _decode_scope.get()
    if scope is None or not isinstance(source, (str, Path)):
        return _load(source, index, label)
    try:
        info = os.stat(source)
    except OSError:
        return _load(source, index, label)  # the decoder words the error
    key = (scope, os.path.realpath(source), info.st_size, info.st_mtime_ns)
    with _decoded_lock:
        kept = _decoded.get(key)
    if kept is None:
        kept = _load(source, index, label)
        with _decoded_lock:
            _decoded.put(key, kept)
    return kept


def _load(source: str | Path | bytes | Image.Image, index: int, label: str) -> ReferenceImage:
    label = f"{label} {index}"
    opened: Image.Image | None = None
    stack = ExitStack()  # the file we open ourselves
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            if isinstance(source, bytes):
                if not source:
                    raise ReferenceImageError(f"The file for {label} is empty. Upload an image file.")
                fp: IO[bytes] = io.BytesIO(source)
            else:
                if Path(source).stat().st_size == 0:
                    raise ReferenceImageError(f"The file for {label} is empty. Upload an image file.")
                fp = stack.enter_context(open(source, "rb"))  # noqa: SIM115 - closed by the stack
            for size in ico_entry_sizes(fp):  # before Image.open, which decodes an ICO's largest entry
                _check_budget(size, "ICO", label)
            img = opened = Image.open(fp, formats=FORMATS)  # reads the header only
            if img.format in ("JPEG", "MPO"):
                img.draft("RGB", (MAX_REFERENCE_SIDE, MAX_REFERENCE_SIDE))  # decode at 1/2..1/8 scale
            _check_budget(decode_size(img), img.format, label)
        orientation = img.getexif().get(0x0112, 1)
        img.load()  # the first frame only
        if img is opened and img.format == "WEBP":
            img.fp = None  # Pillow keeps the decoder's whole RGBA buffer as the file object of a loaded WebP
        img = _flatten(img)
        if opened is not None and img is not opened:
            opened.close()  # frees the decoded original before resizing the flattened copy
        if max(img.size) > MAX_REFERENCE_SIDE:
            img.thumbnail((MAX_REFERENCE_SIDE, MAX_REFERENCE_SIDE), Image.Resampling.LANCZOS)
        for transpose in _ORIENTATION.get(orientation, ()):
            img = img.transpose(transpose)
    except ReferenceImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ReferenceImageError(f"{label.capitalize()} is too large to open safely.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise ReferenceImageError(
            f"{label.capitalize()} is not a readable image. Upload a PNG, JPEG or WebP file."
        ) from e
    finally:
        if opened is not None:
            opened.close()  # animated formats keep their file open until closed
        stack.close()
    return ReferenceImage(image=img, sha256=pixel_hash(img))


def pixel_hash(img: Image.Image) -> str:
    """SHA-256 of the size and RGB bytes, hashed a strip at a time (no full-size copy of the pixels)."""
    digest = hashlib.sha256(f"{img.width}x{img.height}:".encode())
    for y in range(0, img.height, STRIP_ROWS):
        digest.update(img.crop((0, y, img.width, min(y + STRIP_ROWS, img.height))).tobytes())
    return digest.hexdigest()


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


SKIN = (230, 180, 150)  # RGB of a face the tiny detector finds (pipelines/offline/faces.py)


def draw_face(canvas: Image.Image, centre: tuple[int, int], side: int, eyes: tuple[int, int, int]) -> None:
    """Draw a face the tiny detector finds: a SKIN square of `side` (32, 64 or 128) with two `eyes` dots (the
    examples' drawn person, and the tests' people)."""
    from PIL import ImageDraw

    cx, cy = centre
    half = side // 2
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([cx - half, cy - half, cx + half - 1, cy + half - 1], fill=SKIN)
    dot = max(2, side // 16)
    for ex in (cx - side // 5, cx + side // 5):
        ey = cy - side // 8
        draw.rectangle([ex - dot, ey - dot, ex + dot, ey + dot], fill=eyes)
