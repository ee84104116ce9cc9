"""Bad input and bad luck: every case gets a clear message or a correct image, and the engine keeps working."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import Engine, InvalidRequestError, build_request
from pipelines.errors import GenerationError
from pipelines.images import load_reference, square_for_encoder
from tests.conftest import pixels


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_80_megapixel_jpeg_is_downscaled_while_decoding():
    big = Image.new("RGB", (10000, 8000), (200, 120, 40))
    ref = load_reference(encoded(big, "JPEG", quality=50))
    assert max(ref.image.size) <= 2048 and ref.image.getpixel((10, 10))[0] > 150


def test_truncated_jpeg_is_a_clear_error(gold):
    data = encoded(gold, "JPEG")
    with pytest.raises(InvalidRequestError, match="Reference 1 is not a readable image"):
        load_reference(data[: len(data) // 2])


@pytest.mark.parametrize("mode", ["L", "P", "1", "LA", "I;16", "CMYK"])
def test_every_mode_becomes_rgb(gold, mode):
    img = gold.convert("L").convert(mode) if mode in ("I;16", "1") else gold.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert load_reference(encoded(img, fmt)).image.mode == "RGB"


def test_exif_rotated_photo_equals_the_upright_one(gold):
    upright = gold.rotate(-90, expand=True)  # what a viewer shows for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated = encoded(gold, "PNG", exif=exif.tobytes())
    assert load_reference(rotated).sha256 == load_reference(encoded(upright, "PNG")).sha256


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    assert load_reference(buf.getvalue()).image.getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("size", [(1, 1), (4000, 10)])
def test_extreme_shapes_render(engines, presets, size):
    ref = Image.new("RGB", size, (10, 200, 30))
    result = engines["tiny"].generate(build_request(presets["general"]["tiny"], prompt="x", references=[ref]))
    assert result.image.size == (64, 64)
    if size == (4000, 10):
        assert square_for_encoder(load_reference(ref).image, "center").size == (5, 5)  # a centre square, not 90k px


def test_pixel_cap(presets):
    build_request(presets["general"]["tiny"], prompt="x", width=128, height=128)  # exactly the budget
    with pytest.raises(InvalidRequestError, match=r"136x128 is 17,408 pixels; at most 16,384 for this model"):
        build_request(presets["general"]["tiny"], prompt="x", width=136, height=128)


def test_long_prompt_is_truncated_and_the_person_told(engines, presets):
    prompt = "a very long prompt " * 10  # one token per character with the tiny byte-level tokenizer
    result = engines["tiny"].generate(build_request(presets["general"]["tiny"], prompt=prompt))
    warning, no_reference = result.warnings
    assert no_reference.startswith("No reference image was given: the strength had no effect")
    assert warning.startswith("The prompt is ") and "the text encoder reads 75, so the end was ignored" in warning


def test_nan_output_is_a_clear_error_and_the_next_request_works(engines, presets, monkeypatch):
    engine = engines["tiny"]
    request = build_request(presets["general"]["tiny"], prompt="x", seed=3)
    good = pixels(engine.generate(request).image)
    real_decode = engine.pipe.vae.decode
    monkeypatch.setattr(
        engine.pipe.vae, "decode", lambda z, **k: (torch.full_like(real_decode(z, **k)[0], float("nan")),)
    )
    with pytest.raises(GenerationError, match="came out black or invalid"):
        engine.generate(request)
    monkeypatch.setattr(engine.pipe.vae, "decode", real_decode)
    assert np.array_equal(pixels(engine.generate(request).image), good)


def test_half_precision_overflow_retries_with_an_fp32_vae(families, tiny_root, presets, monkeypatch):
    engine = Engine(families["tiny-sd15"], tiny_root=tiny_root, dtype=torch.bfloat16)
    engine.load()
    real_decode = engine.pipe.vae.decode

    def overflow_in_half(z, **kwargs):
        out = real_decode(z, **kwargs)
        if engine.pipe.vae.dtype != torch.float32:
            return (torch.full_like(out[0], float("nan")),)
        return out

    monkeypatch.setattr(engine.pipe.vae, "decode", overflow_in_half)
    result = engine.generate(build_request(presets["general"]["tiny-sd15"], prompt="x"))
    assert engine.pipe.vae.dtype == torch.float32
    assert "redone with the VAE in fp32" in result.warnings[-1]
    assert pixels(result.image).std() > 0


def test_out_of_memory_frees_the_lock(engines, presets, monkeypatch):
    engine = engines["tiny"]
    request = build_request(presets["general"]["tiny"], prompt="x", seed=4)
    real_call = type(engine.pipe).__call__

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(engine.pipe), "__call__", oom)
    with pytest.raises(GenerationError, match="Out of GPU memory"):
        engine.generate(request)
    assert not engine.lock.locked()
    monkeypatch.setattr(type(engine.pipe), "__call__", real_call)
    assert engine.generate(request).image.size == (64, 64)
