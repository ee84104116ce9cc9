"""The comparison grid: cells with row and column headers, the suggested cell framed outside its picture.

Headers say what varies once per row and column ("general 0.25" on a row, "style 0.5" on a column) instead of a
label under every cell, so labels never overlap at small cells. A cell's picture is never drawn on: the
suggestion's frame sits in the margin around it and its mark is drawn (a star polygon), not typed (Pillow's
default font has no star glyph). Cells are scaled to at most `MAX_CELL` pixels a side: the grid is an overview
(every cell is also saved at full size), and a smaller grid encodes several times faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MAX_CELL = 512  # a grid cell's longest side, in pixels
MARGIN_RATIO = 0.04  # the margin around each cell (where the suggestion's frame goes), relative to the cell
HEADER_RATIO = 0.12  # header height (and row-label font size) relative to the cell height
MIN_HEADER = 16
HIGHLIGHT = (255, 127, 14)


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def star(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, fill: tuple[int, int, int]) -> None:
    """A five-pointed star, drawn."""
    cx, cy = centre
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    draw.polygon(points, fill=fill)


def _scaled(img: Image.Image, w: int, h: int) -> Image.Image:
    """`img` at w x h: a box average when the factor is a whole number (several times faster), else bilinear."""
    if img.size == (w, h):
        return img
    factor = img.width // w
    if factor > 1 and img.size == (w * factor, h * factor):
        return img.reduce(factor)
    return img.resize((w, h), Image.Resampling.BILINEAR)


def fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def make_grid(
    images: Sequence[Image.Image],
    column_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    highlight: int | None = None,
    max_cell: int | None = None,
) -> Image.Image:
    """`images` in rows (one row per row label; one row without them), a header over each column, a label left of
    each row; the cell at `highlight` framed in its margin with a star in its column header."""
    rows = len(row_labels) if row_labels else 1
    columns = len(column_labels)
    if not images or len(images) != rows * columns:
        raise ValueError(f"{len(images)} images for {rows} x {columns} cells")
    w, h = images[0].size
    scale = min(1.0, (max_cell or MAX_CELL) / max(w, h))
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    pad = max(3, round(min(w, h) * MARGIN_RATIO))
    header = max(MIN_HEADER, round(h * HEADER_RATIO))
    font = label_font(max(10, round(header * 0.7)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    side = 0
    if row_labels:
        side = min(w, max(round(probe.textlength(label, font=font)) for label in row_labels) + 2 * pad)
    cell_w, cell_h = w + 2 * pad, h + 2 * pad
    grid = Image.new("RGB", (side + columns * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        x = side + c * cell_w
        marked = highlight is not None and highlight % columns == c
        text = fit_text(draw, label, font, cell_w - (2 * header if marked else 2 * pad))
        draw.text((x + cell_w // 2, header // 2), text, fill="black", font=font, anchor="mm")
    for r, label in enumerate(row_labels or []):
        y = header + r * cell_h
        draw.text((pad, y + cell_h // 2), fit_text(draw, label, font, side - 2 * pad), fill="black", font=font,
                  anchor="lm")  # fmt: skip
    for i, img in enumerate(images):
        x, y = side + (i % columns) * cell_w, header + (i // columns) * cell_h
        grid.paste(_scaled(img.convert("RGB"), w, h), (x + pad, y + pad))
        if i == highlight:  # in the margin: the picture itself is untouched
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], outline=HIGHLIGHT, width=max(2, pad - 1))
            label_w = draw.textlength(fit_text(draw, column_labels[i % columns], font, cell_w - 2 * header), font=font)
            star(draw, (x + cell_w // 2 - label_w / 2 - header * 0.55, header / 2), header * 0.4, HIGHLIGHT)
    return grid
