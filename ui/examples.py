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

from pipelines.tiny_faces import draw_face


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


def _character() -> Image.Image:
    """A flat-colour character: pink hair, green eyes, navy outfit (tall, as character sheets are)."""
    img = Image.new("RGB", (192, 320), (250, 250, 255))
    d = ImageDraw.Draw(img)
    d.ellipse([46, 30, 146, 140], fill=(240, 130, 170))  # hair
    d.ellipse([60, 55, 132, 135], fill=(255, 225, 205))  # face
    d.ellipse([74, 85, 88, 101], fill=(40, 170, 110))  # eyes
    d.ellipse([104, 85, 118, 101], fill=(40, 170, 110))
    d.polygon([(56, 150), (136, 150), (156, 300), (36, 300)], fill=(40, 50, 110))  # outfit
    d.rectangle([86, 135, 106, 150], fill=(255, 225, 205))  # neck
    return img


def _face() -> Image.Image:
    """A face the offline (tiny) face detector finds; real detectors need a real photo."""
    img = Image.new("RGB", (640, 640), (60, 70, 80))
    draw_face(img, (320, 320), 128, (60, 90, 160))
    return img


DRAWINGS = {"gold": _gold, "painting": _painting, "character": _character, "face": _face}


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
