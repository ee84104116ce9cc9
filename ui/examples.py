"""Example references drawn by code (free to ship, nothing downloaded), one small set per mode."""

from __future__ import annotations

import atexit
import functools
import math
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from pipelines.images import draw_face


def _gold() -> Image.Image:
    """A brushed-gold texture: warm gradient, fine streaks."""
    img = Image.new("RGB", (256, 256))
    px = img.load()
    rnd = random.Random(1)
    streak = [rnd.random() * 40 for _ in range(256)]
    for y in range(256):
        for x in range(256):
            t = (x + y) / 510
            v = 0.75 + 0.25 * math.sin(6 * t * math.pi)
            px[x, y] = (int(200 * v + streak[y] * 0.5), int(160 * v + streak[y] * 0.3), int(40 * v))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _painting() -> Image.Image:
    """Thick coloured brush strokes on canvas, for the Style tab."""
    rnd = random.Random(2)
    img = Image.new("RGB", (256, 256), (240, 230, 210))
    draw = ImageDraw.Draw(img)
    palette = [(30, 60, 140), (240, 180, 40), (200, 60, 50), (40, 130, 90), (250, 250, 240)]
    for _ in range(140):
        x, y = rnd.randrange(256), rnd.randrange(256)
        angle = rnd.random() * math.pi
        length = rnd.randrange(15, 60)
        end = (x + length * math.cos(angle), y + length * math.sin(angle))
        draw.line([(x, y), end], fill=rnd.choice(palette), width=rnd.randrange(4, 12))
    return img.filter(ImageFilter.SMOOTH)


def _tiles() -> Image.Image:
    """Blue and white ceramic tiles with a glaze highlight, for the General tab."""
    img = Image.new("RGB", (256, 256), (245, 245, 240))
    d = ImageDraw.Draw(img)
    for i in range(4):
        for j in range(4):
            x, y = 64 * i, 64 * j
            d.rectangle([x + 2, y + 2, x + 61, y + 61], fill=(30, 70, 160) if (i + j) % 2 else (235, 240, 250))
            d.ellipse([x + 16, y + 16, x + 47, y + 47], outline=(200, 170, 60), width=3)
    return img.filter(ImageFilter.GaussianBlur(0.8))


def _sunset() -> Image.Image:
    """A sunset sky: orange to violet bands over a dark sea, for the General tab."""
    img = Image.new("RGB", (256, 256))
    d = ImageDraw.Draw(img)
    for y in range(160):
        t = y / 160
        d.line([(0, y), (255, y)], fill=(int(250 - 120 * t), int(150 - 110 * t), int(60 + 120 * t)))
    d.rectangle([0, 160, 255, 255], fill=(20, 30, 60))
    d.ellipse([100, 120, 156, 176], fill=(255, 210, 90))
    return img


def _ink() -> Image.Image:
    """Black ink washes and dry-brush strokes on rice paper, for the Style tab."""
    rnd = random.Random(3)
    img = Image.new("RGB", (256, 256), (236, 228, 208))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, r = rnd.randrange(256), rnd.randrange(256), rnd.randrange(6, 30)
        grey = rnd.randrange(20, 120)
        draw.ellipse([x - r, y - r // 3, x + r, y + r // 3], fill=(grey, grey, grey))
    return img.filter(ImageFilter.GaussianBlur(2))


def _mosaic() -> Image.Image:
    """Irregular coloured glass pieces with dark leading, for the Style tab."""
    rnd = random.Random(4)
    img = Image.new("RGB", (256, 256), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    palette = [(200, 40, 60), (250, 190, 40), (40, 120, 200), (60, 170, 90), (150, 60, 170)]
    for i in range(8):
        for j in range(8):
            x, y = 32 * i + rnd.randrange(-4, 5), 32 * j + rnd.randrange(-4, 5)
            draw.polygon([(x, y), (x + 30, y + 2), (x + 28, y + 30), (x + 1, y + 28)], fill=rnd.choice(palette))
    return img


def _character(
    hair: tuple = (240, 130, 170), eyes: tuple = (40, 170, 110), outfit: tuple = (40, 50, 110)
) -> Image.Image:
    """A flat-colour character (tall, as character sheets are); the defaults: pink hair, green eyes, navy outfit."""
    img = Image.new("RGB", (192, 320), (250, 250, 255))
    d = ImageDraw.Draw(img)
    d.ellipse([46, 30, 146, 140], fill=hair)
    d.ellipse([60, 55, 132, 135], fill=(255, 225, 205))  # face
    d.ellipse([74, 85, 88, 101], fill=eyes)
    d.ellipse([104, 85, 118, 101], fill=eyes)
    d.polygon([(56, 150), (136, 150), (156, 300), (36, 300)], fill=outfit)
    d.rectangle([86, 135, 106, 150], fill=(255, 225, 205))  # neck
    return img


def _face(side: int = 128, eyes: tuple = (60, 90, 160), background: tuple = (60, 70, 80)) -> Image.Image:
    """A face the offline (tiny) face detector finds; real detectors need a real photo."""
    img = Image.new("RGB", (640, 640), background)
    draw_face(img, (320, 320), side, eyes)
    return img


DRAWINGS = {
    "gold": _gold,
    "tiles": _tiles,
    "sunset": _sunset,
    "painting": _painting,
    "ink": _ink,
    "mosaic": _mosaic,
    "character": _character,
    "character-blue": lambda: _character(hair=(60, 110, 220), eyes=(200, 60, 60), outfit=(230, 230, 235)),
    "character-red": lambda: _character(hair=(200, 40, 40), eyes=(240, 190, 40), outfit=(30, 30, 30)),
    "face": _face,
    "face-green-eyes": lambda: _face(eyes=(40, 160, 70), background=(90, 60, 50)),
    "face-small": lambda: _face(side=64, eyes=(150, 40, 40), background=(40, 80, 70)),
}


@functools.cache
def _folder() -> Path:
    """The examples' own folder (the results folder is pruned; examples must stay), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="image-prompt-studio-examples-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def reference_path(name: str) -> str:
    """The drawing `name` saved once per process as a PNG in the examples' folder."""
    path = _folder() / f"example-{name}.png"
    DRAWINGS[name]().save(path)
    return str(path)
