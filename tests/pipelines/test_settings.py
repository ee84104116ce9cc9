"""Settings files and PNG metadata share one schema and load back into the same request."""

from __future__ import annotations

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
