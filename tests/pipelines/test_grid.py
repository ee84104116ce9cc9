"""The comparison grid: headers per row and column, the suggestion framed outside its picture."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines import grid as grids


def cells(n: int, size: int = 64) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (40 * i % 256, 90, 200 - 30 * i)) for i in range(n)]


def test_the_suggested_cell_is_framed_outside_its_picture():
    images = cells(6)
    plain = grids.make_grid(images, ["style 0", "style 0.5", "style 1"], ["general 0.25", "general 0.75"])
    marked = grids.make_grid(images, ["style 0", "style 0.5", "style 1"], ["general 0.25", "general 0.75"],
                             highlight=4)  # fmt: skip
    assert plain.size == marked.size
    diff = np.argwhere(np.any(np.asarray(plain) != np.asarray(marked), axis=2))
    # Find cell 4's picture: it is the only place where the picture's own colour sits, unchanged in both.
    colour = np.array(images[4].getpixel((0, 0)))
    where = np.argwhere(np.all(np.asarray(marked) == colour, axis=2))
    top, left = where.min(axis=0)
    bottom, right = where.max(axis=0)
    assert (bottom - top + 1, right - left + 1) == (64, 64)  # the whole picture, not drawn over
    inside = (diff[:, 0] >= top) & (diff[:, 0] <= bottom) & (diff[:, 1] >= left) & (diff[:, 1] <= right)
    assert len(diff) > 0 and not inside.any()  # the frame and the star differ; the picture does not


def test_headers_are_short_enough_and_cells_capped():
    big = cells(2, size=1024)
    out = grids.make_grid(big, ["anime 0.75 · general 0.25 · a long label indeed", "x"])
    assert out.height < 1024 and out.width < 2 * 600  # cells at most MAX_CELL = 512 px
    draw = grids.ImageDraw.Draw(out)
    font = grids.label_font(20)
    assert grids.fit_text(draw, "a" * 200, font, 100).endswith("…")
    assert draw.textlength(grids.fit_text(draw, "a" * 200, font, 100), font=font) <= 100
