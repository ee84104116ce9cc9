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


def _bench():
    """bench/decode_memory.py: the test measures what the benchmark reports."""
    from bench import decode_memory

    return decode_memory


def test_an_ico_cannot_hide_a_huge_png(monkeypatch, tmp_path):
    from PIL import IcoImagePlugin

    bench = _bench()
    huge = io.BytesIO()
    Image.new("1", (12000, 12000)).save(huge, format="PNG")  # 144 MP: Pillow only warns; the ICO claims 16 x 16
    crafted = bench.ico_with_png(huge.getvalue())
    (tmp_path / "huge.ico").write_bytes(crafted)
    frame = IcoImagePlugin.IcoFile.frame

    def no_decoding(self: object, idx: int) -> Image.Image:
        raise AssertionError("an entry over the budget was decoded")  # Image.open decodes ICOs: refused before

    monkeypatch.setattr(IcoImagePlugin.IcoFile, "frame", no_decoding)
    for source in (crafted, str(tmp_path / "huge.ico")):
        with pytest.raises(ReferenceImageError, match=r"too large \(12000x12000 pixels"):
            load_reference(source)
    monkeypatch.setattr(IcoImagePlugin.IcoFile, "frame", frame)
    small = io.BytesIO()
    Image.new("RGB", (48, 48), (0, 200, 0)).save(small, format="PNG")
    assert load_reference(bench.ico_with_png(small.getvalue(), claimed=48)).image.getpixel((5, 5)) == (0, 200, 0)


def test_formats_outside_the_list_are_never_parsed(gold):
    for fmt in ("TGA", "PCX", "SGI"):  # Pillow reads them; people do not upload them; their parsers stay shut
        with pytest.raises(ReferenceImageError, match="not a readable image"):
            load_reference(encode(gold, fmt))


def test_webp_has_half_the_pixel_budget():
    from pipelines.images import MAX_DECODE_PIXELS, _check_budget

    _check_budget((8192, 8192), "PNG", "reference 1")
    _check_budget((8192, 4096), "WEBP", "reference 1")
    with pytest.raises(ReferenceImageError, match="at most 33,554,432 pixels for WEBP"):
        _check_budget((8192, 4097), "WEBP", "reference 1")
    assert MAX_DECODE_PIXELS == 8192 * 8192


@pytest.mark.parametrize("case", ["PNG RGBA (alpha)", "PNG 16-bit grey", "ICO with an embedded PNG", "GIF"])
def test_peak_decode_memory_is_under_4x_the_rgb_size(tmp_path, case):
    """Measured in a fresh process (2048 x 2048, 12 MiB of RGB); the benchmark gives the numbers at the cap."""
    bench = _bench()
    encode_case = bench.cases(2048)[case]
    path, warm = tmp_path / "ref", tmp_path / "warm"
    path.write_bytes(encode_case(2048))
    warm.write_bytes(encode_case(64))
    kib, size = bench.peak_extra_kib(path, warm)
    assert size == (2048, 2048)
    assert kib / 1024 < 4 * 2048 * 2048 * 3 / 2**20, f"{kib / 1024:.0f} MiB"


def test_the_same_upload_is_decoded_once_per_visitor(tmp_path, gold, monkeypatch):
    from pipelines import images

    path = tmp_path / "ref.png"
    gold.save(path)
    decoded = []
    real = images._load
    monkeypatch.setattr(images, "_load", lambda *a: decoded.append(a[0]) or real(*a))
    monkeypatch.setattr(images, "_decoded", images.LRU(4))
    with images.decode_cache("visitor a"):
        first = load_reference(str(path))
        assert load_reference(str(path)).sha256 == first.sha256 and len(decoded) == 1  # kept
    with images.decode_cache("visitor b"):
        load_reference(str(path))  # another visitor: decoded again (no timing says someone sent it before)
    load_reference(str(path))  # outside a visitor's request: never kept
    assert len(decoded) == 3
    Image.new("RGB", (8, 8)).save(path)  # the file changed: decoded again
    with images.decode_cache("visitor a"):
        assert load_reference(str(path)).image.size == (8, 8) and len(decoded) == 4
