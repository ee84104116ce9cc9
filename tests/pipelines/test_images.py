"""Reference images of every shape become plain RGB, or a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines import ReferenceImageError
from pipelines.images import load_reference


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_same_picture_same_hash_across_formats(gold):
    from_png = load_reference(encode(gold))
    from_pil = load_reference(gold)
    assert from_png.sha256 == from_pil.sha256
    assert load_reference(encode(gold.rotate(90, expand=True))).sha256 != from_png.sha256


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # hidden red under alpha 0
    assert load_reference(encode(img)).image.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_white():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    out = np.asarray(load_reference(encode(Image.fromarray(arr))).image)
    assert out.mean() == pytest.approx(127.5, abs=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "reference 1 is empty"), (b"not an image at all", "Reference 1 is not a readable image")],
)
def test_unreadable_files(data, message):
    with pytest.raises(ReferenceImageError, match=message):
        load_reference(data)


def test_decompression_bomb_is_refused():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(ReferenceImageError, match="too large"):
        load_reference(buf.getvalue(), index=2)


def test_cmyk_and_palette_become_rgb(gold):
    assert load_reference(encode(gold.convert("CMYK"), "JPEG")).image.mode == "RGB"
    assert load_reference(encode(gold.convert("P"))).image.mode == "RGB"
