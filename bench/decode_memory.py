"""Peak memory of decoding one worst-case reference of every format: prints a markdown table.

    python -m bench.decode_memory                 # references at the decode cap (8192 x 8192; about 2 minutes)
    python -m bench.decode_memory --side 2048     # smaller and faster

Each case runs `load_reference` in a fresh Python process and reports its peak resident memory above what the
process held just before the call (imports done, the same format decoded once at a small size). "x RGB" divides
that by the decoded RGB size of the image (3 bytes a pixel of the size the header declares); "x side² RGB" by that
of a side x side image (at the default side: the largest image the budget lets through). The target is under 4.
"""

from __future__ import annotations

import argparse
import io
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: the peak resident memory (KiB) added by decoding `path`. A child's peak starts at its parent's
# resident size (fork), so the peak is reset first (Linux's /proc/self/clear_refs) and read from /proc/self/status.
CHILD = """
import sys, types
# The package without its __init__ (which loads the models' libraries): only images and errors are needed.
package = types.ModuleType("pipelines")
package.__path__ = [{root!r} + "/pipelines"]
sys.modules["pipelines"] = package
from pipelines.images import load_reference

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

load_reference({warm!r})  # codecs and first-use allocations: not the reference's cost
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
ref = load_reference({path!r})
print(status("VmHWM") - before, ref.image.size[0], ref.image.size[1])
"""


def peak_extra_kib(path: Path, warm: Path) -> tuple[int, tuple[int, int]]:
    """(peak KiB added by decoding `path` in a fresh process, size of the resulting reference)."""
    code = CHILD.format(root=str(ROOT), warm=str(warm), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    out = proc.stdout.split()
    return int(out[0]), (int(out[1]), int(out[2]))


def _noise(side: int, channels: int, dtype: type = np.uint8, top: int = 255) -> np.ndarray:
    """Cheap incompressible-ish content: a gradient plus stripes (decoders do the same work on any content)."""
    x = np.arange(side, dtype=np.uint32)
    grid = (x[:, None] * 7 + x[None, :] * 13) % (top + 1)
    arr = np.repeat(grid[:, :, None], channels, axis=2) if channels > 1 else grid
    return arr.astype(dtype)


def ico_with_png(png: bytes, claimed: int = 16) -> bytes:
    """An ICO whose directory claims a `claimed`-pixel icon while its embedded PNG declares its own (larger) size."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", claimed, claimed, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def cases(side: int) -> dict[str, Callable[[int], bytes]]:
    """Format name -> a function that encodes a worst-case reference of that format at `n` x `n` pixels."""
    return {
        "PNG RGBA (alpha)": lambda n: _save(Image.fromarray(_noise(n, 4), "RGBA"), "PNG", compress_level=1),
        "PNG 16-bit grey": lambda n: _save(Image.fromarray(_noise(n, 1, np.uint16, 65535)), "PNG", compress_level=1),
        "PNG palette + transparency": lambda n: _save(
            Image.fromarray(_noise(n, 1)).convert("P"), "PNG", transparency=0, compress_level=1
        ),
        "GIF": lambda n: _save(Image.fromarray(_noise(n, 1)).convert("P"), "GIF"),
        "TIFF 16-bit grey": lambda n: _save(Image.fromarray(_noise(n, 1, np.uint16, 65535)), "TIFF"),
        "TIFF CMYK": lambda n: _save(Image.fromarray(_noise(n, 4), "CMYK"), "TIFF"),
        # WebP may declare half the pixels of the others (its decoder holds two extra canvases): n x n/2.
        "WebP RGBA, n x n/2": lambda n: _save(Image.fromarray(_noise(n, 4)[: n // 2], "RGBA"), "WEBP", quality=50),
        "BMP RGB": lambda n: _save(Image.fromarray(_noise(n, 3), "RGB"), "BMP"),
        "PPM 16-bit grey": lambda n: _save(Image.fromarray(_noise(n, 1, np.uint16, 65535)), "PPM"),
        "ICO with an embedded PNG": lambda n: ico_with_png(
            _save(Image.fromarray(_noise(n, 4), "RGBA"), "PNG", compress_level=1)
        ),
        # 1.5x the side: past the decode cap, but under Pillow's own limit (179 MP) that refuses it at open.
        "JPEG (draft decode), 1.5x the side": lambda n: _save(Image.fromarray(_noise(n * 3 // 2, 3), "RGB"), "JPEG"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192, help="side of the square references (8192: the cap)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, encode in cases(args.side).items():
            if args.only and args.only.lower() not in name.lower():
                continue
            path, warm = Path(tmp) / "ref", Path(tmp) / "warm"
            path.write_bytes(encode(args.side))
            warm.write_bytes(encode(64))
            declared = Image.open(path).size if not name.startswith("ICO") else (args.side, args.side)
            rgb_mib = declared[0] * declared[1] * 3 / 2**20
            try:
                kib, size = peak_extra_kib(path, warm)
            except RuntimeError as e:  # refused (over a budget) or failed: say which, keep going
                print(f"{name}: {e}", file=sys.stderr)
                kib, size = 0, (0, 0)
            rows.append((name, f"{declared[0]}x{declared[1]}", path.stat().st_size / 2**20, rgb_mib, kib / 1024, size))
    print(f"\n### Peak memory of one reference decode ({args.side} px side)\n")
    capped_mib = args.side * args.side * 3 / 2**20
    print("| format | declared size | file MiB | decoded RGB MiB | peak extra MiB | x RGB | x side² RGB | reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, declared, file_mib, rgb_mib, extra_mib, size in rows:
        print(
            f"| {name} | {declared} | {file_mib:.1f} | {rgb_mib:.0f} | {extra_mib:.0f} | {extra_mib / rgb_mib:.2f} "
            f"| {extra_mib / capped_mib:.2f} | {size[0]}x{size[1]} |"
        )


if __name__ == "__main__":
    main()
