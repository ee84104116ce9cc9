"""Pictures of a scored comparison, drawn with Pillow: scores against strength, or a heat map per score (2-D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from .grid import label_font

COLOURS = {
    "likeness": (31, 119, 180),
    "adherence": (214, 39, 40),
    "identity": (44, 160, 44),
    "extra_likeness": (148, 103, 189),
    "extra_identity": (140, 86, 75),
}
SUGGESTED = (255, 127, 14)


def measures_of(scores: Sequence[dict[str, Any]]) -> list[str]:
    """The score names present with a value in at least one cell, in a fixed order."""
    return [k for k in COLOURS if any(s.get(k) is not None for s in scores)]


def score_plot(scores: Sequence[dict[str, Any]], suggested: dict[str, Any] | None) -> Image.Image:
    """Scores against the swept strength (1-D), or one heat map per score (2-D: rows = strength, columns = extra)."""
    columns = sorted({s["extra_strength"] for s in scores if "extra_strength" in s})
    if len(columns) > 1 and len({s["strength"] for s in scores}) > 1:
        return _heat_maps(scores, suggested, columns)
    axis = "extra_strength" if len(columns) > 1 else "strength"
    return _lines(scores, suggested, axis)


def _lines(scores: Sequence[dict[str, Any]], suggested: dict[str, Any] | None, axis: str) -> Image.Image:
    width, height, left, right, top, bottom = 560, 320, 56, 150, 24, 44
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = label_font(12)
    xs = [float(s[axis]) for s in scores]
    names = measures_of(scores)
    values = [float(s[k]) for s in scores for k in names if s.get(k) is not None] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.1, 0.01)
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - lo) / (hi - lo) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        y = lo + frac * (hi - lo)
        _, py = at(x0, y)
        draw.text((left - 6, py), f"{y:.2f}", fill="black", font=font, anchor="rm")
    for x in sorted(set(xs)):
        px, _ = at(x, lo)
        draw.text((px, height - bottom + 6), f"{x:g}", fill="black", font=font, anchor="ma")
    draw.text(((left + width - right) / 2, height - 14), axis.replace("_", " "), fill="black", font=font, anchor="mm")
    if suggested is not None and suggested.get(axis) is not None:
        px, _ = at(float(suggested[axis]), lo)
        for y in range(top, height - bottom, 8):
            draw.line([(px, y), (px, min(y + 4, height - bottom))], fill=SUGGESTED, width=2)
        draw.text((px, top - 4), f"suggested {suggested[axis]:g}", fill=SUGGESTED, font=font, anchor="md")
    for n, name in enumerate(names):
        points = [at(float(s[axis]), float(s[name])) for s in scores if s.get(name) is not None]
        if len(points) > 1:
            draw.line(points, fill=COLOURS[name], width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLOURS[name])
        ly = top + 8 + n * 18
        draw.line([(width - right + 12, ly), (width - right + 32, ly)], fill=COLOURS[name], width=3)
        draw.text((width - right + 38, ly), name.replace("_", " "), fill="black", font=font, anchor="lm")
    return img


def _heat_maps(scores: Sequence[dict[str, Any]], suggested: dict[str, Any] | None, columns: list) -> Image.Image:
    """One heat map per score, stacked (readable at the width of the page's column: about 600 px)."""
    rows = sorted({s["strength"] for s in scores})
    names = measures_of(scores)
    cell, left, top, below, gap = 72, 64, 56, 28, 16
    panel_w, panel_h = left + cell * len(columns) + gap, top + cell * len(rows) + below
    img = Image.new("RGB", (max(panel_w, 480), max(1, len(names)) * panel_h + gap), "white")
    draw = ImageDraw.Draw(img)
    font, small = label_font(15), label_font(13)
    by = {(s["strength"], s["extra_strength"]): s for s in scores}
    for n, name in enumerate(names):
        oy = gap + n * panel_h
        values = [float(s[name]) for s in scores if s.get(name) is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        draw.text((left, oy), name.replace("_", " "), fill="black", font=font, anchor="lt")
        for j, e in enumerate(columns):
            draw.text((left + j * cell + cell / 2, oy + top - 6), f"{e:g}", fill="black", font=small, anchor="md")
        for i, s in enumerate(rows):
            y = oy + top + i * cell
            draw.text((left - 8, y + cell / 2), f"{s:g}", fill="black", font=small, anchor="rm")
            for j, e in enumerate(columns):
                value = by.get((s, e), {}).get(name)
                box = [left + j * cell, y, left + (j + 1) * cell - 1, y + cell - 1]
                draw.rectangle(box, fill=_ramp(value, lo, hi), outline="white")
                if value is not None:
                    draw.text((box[0] + cell / 2, box[1] + cell / 2), f"{value:.2f}", fill="black", font=small,
                              anchor="mm")  # fmt: skip
                if suggested is not None and (suggested.get("strength"), suggested.get("extra_strength")) == (s, e):
                    draw.rectangle(box, outline=SUGGESTED, width=4)
        legend = "rows: this tab's strength · columns: the added prompt's"
        draw.text((left, oy + top + cell * len(rows) + 6), legend, fill=(90, 90, 90), font=small, anchor="lt")
    return img


def _ramp(value: float | None, lo: float, hi: float) -> tuple[int, int, int]:
    """Light blue (lowest) to yellow (highest); grey for no value."""
    if value is None:
        return (220, 220, 220)
    t = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    a, b = (198, 219, 239), (253, 208, 60)
    return tuple(round(a[k] + t * (b[k] - a[k])) for k in range(3))
