"""Settings files and PNG metadata share one schema and load back into the same request."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pipelines import InvalidRequestError, build_request
from pipelines.metadata import save_png
from pipelines.settings import parse_settings, read_settings_file, settings_of


def test_settings_round_trip(presets, gold, tmp_path):
    preset = presets["style"]["tiny"]
    request = build_request(preset, prompt="a cat", references=[gold], strength=0.8, seed=5, layout=True, crop="pad")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings_of(request)))
    mode, values = read_settings_file(path)
    assert mode == "style"
    again = build_request(preset, references=[gold], **values)
    assert again == request


def test_png_metadata_loads_as_settings(engines, presets, gold, tmp_path):
    preset = presets["general"]["tiny"]
    request = build_request(preset, prompt="vase", references=[gold], strength=0.3, seed=8, stop_at=0.5)
    result = engines["tiny"].generate(request)
    mode, values = read_settings_file(save_png(result.image, result.metadata, tmp_path / "x.png"))
    assert mode == "general" and build_request(preset, references=[gold], **values) == request


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n garbage", "This settings file is not valid: its PNG chunks cannot be read"),
        (b"garbage", "This settings file is not valid: it is neither a PNG made by this app nor a JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"mode": "video"}', "mode 'video'"),
        (b'{"mode": "general", "schema": 99}', "schema 99 is not supported"),
    ],
)
def test_bad_settings_files(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(InvalidRequestError, match=message):
        read_settings_file(path)


def test_png_without_our_metadata(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(InvalidRequestError, match="has no settings from this app"):
        read_settings_file(tmp_path / "plain.png")


def test_unknown_keys_are_ignored():
    assert parse_settings({"mode": "anime", "prompt": "x", "packages": {}}) == ("anime", {"prompt": "x"})


def _write(tmp_path, data: bytes, name: str = "crafted"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 16 levels deep"),
        (b'{"mode": "general", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than 16 levels deep"),
        (b'{"mode": "general", "seed": ' + b"9" * 5000 + b"}", "a number in it has too many digits"),
        (b'{"mode": "general", "prompt": 5}', "prompt must be text, got 5"),
        (b'{"mode": "general", "steps": "4"}', "steps must be a whole number, got '4'"),
        (b'{"mode": "general", "steps": 4.5}', "steps must be a whole number, got 4.5"),
        (b'{"mode": "general", "layout": "yes"}', "layout must be true or false"),
        (b'{"mode": "general", "strength": true}', "strength must be a number, got True"),
        (b'{"mode": ["general"]}', r"it names mode \['general'\]"),
        (b"\xff\xfe not text", "neither a PNG made by this app nor a JSON settings file"),
        (b" " * (300 * 1024), "larger than 256 KB"),
    ],
)
def test_crafted_settings_get_a_clear_message(tmp_path, data, message):
    with pytest.raises(InvalidRequestError, match=f"^This settings file is not valid: .*{message}"):
        read_settings_file(_write(tmp_path, data))


def test_crafted_png_text_chunks(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    bomb = PngInfo()
    bomb.add_text("image_prompt", "0" * (8 * 2**20), zip=True)  # 8 MB inflating from a few KB
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=bomb)
    with pytest.raises(InvalidRequestError, match="its PNG chunks cannot be read"):
        read_settings_file(_write(tmp_path, buf.getvalue(), "bomb.png"))
    good = PngInfo()
    good.add_text("image_prompt", json.dumps({"mode": "general", "prompt": "x"}))
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=good)
    data = bytearray(buf.getvalue())
    at = data.index(b"tEXt")
    data[at + 8] ^= 0xFF  # a changed byte: the chunk's CRC no longer matches
    with pytest.raises(InvalidRequestError, match="its PNG chunks cannot be read"):
        read_settings_file(_write(tmp_path, bytes(data), "broken.png"))
    assert read_settings_file(_write(tmp_path, buf.getvalue(), "good.png")) == ("general", {"prompt": "x"})


def test_validated_settings_are_what_the_controls_get(presets):
    from pipelines.settings import validated_settings

    general = presets["general"]["tiny"]
    clean = validated_settings(general, {"prompt": "a \u202ecat\u0007", "seed": 7.0, "width": 70})
    assert clean == {"prompt": "a cat", "seed": 7, "width": 64}  # control characters gone, 70 snapped to 64
    with pytest.raises(InvalidRequestError, match=r"This settings file is not valid: strength = 9\.0 is outside"):
        validated_settings(general, {"strength": 9.0})
