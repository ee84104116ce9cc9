"""A fast PNG writer for results: per-row filters chosen in numpy, then deflate in parallel pieces.

Pillow encodes a PNG on one thread; on the 2-core machine a 1024x1024 photo-like result took 430 ms at its default
level (73 ms at level 1 with the run-length strategy). Here each row gets the filter (None, Sub, Up or Average)
whose bytes are smallest as signed values, Pillow's own heuristic without Paeth, vectorised over the whole image,
and the filtered bytes are deflated (level 1, run-length strategy) in pieces on several threads (zlib releases the
GIL), joined into one valid zlib stream: each piece but the last ends with a sync flush, which leaves the bit stream
byte-aligned, and the Adler-32 of the whole is written at the end (as pigz does). Measured: about 45 ms and 1.57 MB
for that image (Pillow's default: 1.48 MB); a flat 512x512 gradient 22 KB (Pillow's default: 13 KB). Pillow reads
the result back pixel for pixel (tested); text chunks carry the metadata.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PIECE_BYTES = 1 << 20  # filtered bytes per deflate piece (about 340 rows of a 1024-pixel RGB image)
THREADS = 2  # deflate pieces at once (the machine has 2 cores; more threads only queue)
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COST = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)  # |byte as a signed value|


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def filtered(pixels: np.ndarray) -> bytes:
    """Every scanline of an (H, W, C) uint8 array, each led by its filter type: the one of None (0), Sub (1), Up (2)
    and Average (3) whose bytes, read as signed values, sum smallest in absolute value (judged on every 4th byte).

    uint8 arithmetic wraps modulo 256, which is exactly PNG's: the filters need no wider copies.
    """
    height = pixels.shape[0]
    x = pixels.reshape(height, -1)  # (rows, bytes)
    step = pixels.shape[2] if pixels.ndim == 3 else 1
    left = np.zeros_like(x)
    left[:, step:] = x[:, :-step]  # the same channel of the previous pixel (0 before the first)
    up = np.zeros_like(x)
    up[1:] = x[:-1]  # the row above (0 above the first)
    average = (left >> 1) + (up >> 1) + (left & up & 1)  # floor((left + up) / 2) without overflow
    options = np.stack([x, x - left, x - up, x - average])  # (filter, rows, bytes), wrapped modulo 256
    best = _COST[options[:, :, ::4]].sum(axis=2, dtype=np.int32).argmin(axis=0)  # (rows,)
    out = np.empty((height, x.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = best
    out[:, 1:] = options[best, np.arange(height)]
    return out.tobytes()


def deflate(data: bytes, threads: int = THREADS) -> bytes:
    """One zlib stream of `data`, its pieces compressed at once (level 1, run-length strategy)."""
    pieces = [data[i : i + PIECE_BYTES] for i in range(0, len(data), PIECE_BYTES)] or [b""]

    def compress(index: int) -> bytes:
        c = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)  # raw deflate: the zlib frame is ours
        last = index == len(pieces) - 1
        return c.compress(pieces[index]) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    if threads > 1 and len(pieces) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            bodies = list(pool.map(compress, range(len(pieces))))
    else:
        bodies = [compress(i) for i in range(len(pieces))]
    return b"\x78\x01" + b"".join(bodies) + struct.pack(">I", zlib.adler32(data) & 0xFFFFFFFF)


def write_png(image: Image.Image, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """`image` (RGB or RGBA; anything else is converted to RGB) as a PNG with `text` as tEXt/iTXt chunks."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    color_type = 2 if image.mode == "RGB" else 6
    parts = [_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        try:
            parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
            parts.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    parts.append(_chunk(b"IDAT", deflate(filtered(pixels))))
    parts.append(_chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(b"".join(parts))
    return path


MAX_CHUNKS_BEFORE_DATA = 256  # chunks read before the image data when looking for text (a PNG made here has ~4)
MAX_TEXT_BYTES = 1 << 20  # the largest text chunk read (Pillow's own cap for text chunks)


class PngChunkError(ValueError):
    """A PNG whose chunks cannot be read within the budget (the message says why)."""


def read_text(path: str | Path, key: str) -> str | None:
    """The text stored under `key` in a PNG's tEXt, iTXt or zTXt chunks before the image data, or None.

    Reads chunk headers and skips their data by seeking, at most `MAX_CHUNKS_BEFORE_DATA` of them (a file of
    millions of empty chunks answers at once), and reads only text chunks of at most `MAX_TEXT_BYTES`; no pixel is
    decoded. Compressed text is inflated to at most `MAX_TEXT_BYTES`.
    """
    wanted = key.encode("latin-1")
    with open(path, "rb") as f:
        if f.read(len(_SIGNATURE)) != _SIGNATURE:
            raise PngChunkError("it is not a PNG")
        for _ in range(MAX_CHUNKS_BEFORE_DATA):
            head = f.read(8)
            if len(head) < 8:
                raise PngChunkError("it ends before its image data")
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind not in (b"tEXt", b"iTXt", b"zTXt") or length > MAX_TEXT_BYTES:
                f.seek(length + 4, 1)  # its data and CRC, unread
                continue
            data, crc = f.read(length), f.read(4)
            if len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + data) & 0xFFFFFFFF:
                raise PngChunkError(f"its {kind.decode()} chunk is broken")
            name, _, rest = data.partition(b"\0")
            if name == wanted:
                return _text_of(kind, rest)
        raise PngChunkError(f"it has more than {MAX_CHUNKS_BEFORE_DATA} chunks before its image data")


def _text_of(kind: bytes, rest: bytes) -> str:
    """A text chunk's value after its keyword and separator."""
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\1"  # iTXt: compression flag, method, language tag \0, translated keyword \0, text
    text = rest[2:].split(b"\0", 2)[-1]
    return (_inflate(text) if compressed else text).decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as e:
        raise PngChunkError("its compressed text is broken") from e
    if inflater.unconsumed_tail:
        raise PngChunkError(f"its text is over {MAX_TEXT_BYTES // 2**20} MB")
    return out
