"""The fast PNG writer: every picture reads back pixel for pixel, with its text, in any size or mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import png
from pipelines.metadata import read_png_metadata, save_png


@pytest.mark.parametrize(("size", "mode"), [((1, 1), "RGB"), ((2000, 1), "RGB"), ((3, 777), "RGB"),
                                            ((640, 480), "RGB"), ((33, 65), "RGBA"), ((50, 40), "L")])  # fmt: skip
def test_reads_back_pixel_for_pixel(tmp_path, size, mode, monkeypatch):
    monkeypatch.setattr(png, "PIECE_BYTES", 4096)  # many deflate pieces joined into one stream
    rng = np.random.default_rng(sum(size))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode=mode)
    path = png.write_png(img, tmp_path / "x.png", {"image_prompt": '{"a": 1}', "note": "café ✓"})
    back = Image.open(path)
    expected = img.convert("RGB") if mode == "L" else img
    assert back.mode == expected.mode and np.array_equal(np.asarray(back), np.asarray(expected))
    assert back.info["image_prompt"] == '{"a": 1}' and back.info["note"] == "café ✓"


def test_results_keep_their_metadata_and_stay_small(tmp_path, gold):
    from bench.serving import photo_like

    for picture, bound in ((photo_like(512, 3), 1.15), (gold.resize((512, 512)), 2.5)):  # a photo; flat graphics
        path = save_png(picture, {"prompt": "a vase ✓", "seed": 7}, tmp_path / "r.png")
        assert read_png_metadata(path) == {"prompt": "a vase ✓", "seed": 7}
        pillow = tmp_path / "pillow.png"
        picture.save(pillow)  # Pillow's default level: several times slower (bench.serving)
        assert path.stat().st_size < bound * pillow.stat().st_size
