"""A labelled grid of comparison cells, each captioned with its strength."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

CAPTION_HEIGHT_RATIO = 0.12  # caption strip height relative to the cell height
MIN_CAPTION_HEIGHT = 14


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def make_grid(
    images: Sequence[Image.Image], captions: Sequence[str], columns: int | None = None, highlight: int | None = None
) -> Image.Image:
    """Cells left to right, a caption strip under each; all cells share the first image's size. The cell at
    `highlight` (a suggested strength) gets an orange frame."""
    if not images or len(images) != len(captions):
        raise ValueError("need one caption per image and at least one image")
    w, h = images[0].size
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    strip = max(MIN_CAPTION_HEIGHT, int(h * CAPTION_HEIGHT_RATIO))
    grid = Image.new("RGB", (columns * w, rows * (h + strip)), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(max(10, int(strip * 0.75)))
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * w, (i // columns) * (h + strip)
        grid.paste(img.convert("RGB").resize((w, h)), (x, y))
        draw.text((x + w // 2, y + h + strip // 2), caption, fill="black", font=font, anchor="mm")
        if i == highlight:
            draw.rectangle([x, y, x + w - 1, y + h + strip - 1], outline=(255, 127, 14), width=max(2, w // 32))
    return grid
