"""A tiny stand-in for the insightface `buffalo_l` pack: an SCRFD-shaped detector and an ArcFace-shaped recognizer.

Both are ONNX files with the signatures insightface routes on (a detector has 5 or more outputs, a recognizer one
output and a square input), loaded by the real `FaceAnalysis`. The detector is built by hand, not trained, so
tests can draw faces it will find: a "face" is a square of `SKIN` colour whose side is 32, 64 or 128 px (4 strides
at stride 8, 16 or 32) on a 640 x 640 image, centred on a multiple of its stride. Squares of other sizes or colours
are not faces. Coloured "eyes" inside the square change the recognizer's embedding, so different drawn people get
different identities.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..images import SKIN, draw_face

STRIDES = (8, 16, 32)
FACE_SIDE = {s: 4 * s for s in STRIDES}  # a face found at stride s is 4s pixels wide
DET_SIZE = 640
# Five landmarks (eyes, nose, mouth corners) in strides from the box centre.
KEYPOINTS = ((-0.8, -0.5), (0.8, -0.5), (0.0, 0.3), (-0.6, 1.0), (0.6, 1.0))


class TinyDetector(nn.Module):
    """Scores each anchor by "a skin-coloured square of side 4 strides here, none around it"."""

    def __init__(self) -> None:
        super().__init__()
        skin = (torch.tensor(SKIN, dtype=torch.float32) - 127.5) / 128.0  # SCRFD preprocessing
        self.register_buffer("skin", skin.view(1, 3, 1, 1))
        self.register_buffer("kps", torch.tensor(KEYPOINTS, dtype=torch.float32).reshape(1, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        distance = (x - self.skin).abs().mean(dim=1, keepdim=True)  # (1, 1, H, W)
        mask = torch.sigmoid(40.0 * (0.12 - distance))
        scores, boxes, kpss = [], [], []
        for s in STRIDES:
            # Means over a 4s window and a 6s window centred on each anchor (anchor centres at multiples of s).
            inner = F.avg_pool2d(mask, 4 * s, stride=s, padding=2 * s, count_include_pad=True)[..., :-1, :-1]
            outer = F.avg_pool2d(mask, 6 * s, stride=s, padding=3 * s, count_include_pad=True)[..., :-1, :-1]
            ring = (outer * 36.0 - inner * 16.0) / 20.0
            score = (inner - 3.0 * ring).clamp(0.0, 1.0).permute(0, 2, 3, 1).reshape(-1, 1)  # (h*w, 1)
            score = score.repeat(1, 2).reshape(-1, 1)  # 2 anchors per location: (h*w*2, 1)
            ones = torch.ones_like(score)
            scores.append(score)
            boxes.append(ones.repeat(1, 4) * 2.0)  # l, t, r, b: 2 strides each way
            kpss.append(ones * self.kps)
        return (*scores, *boxes, *kpss)


class TinyRecognizer(nn.Module):
    """112 x 112 aligned face -> 512-d embedding (a fixed random projection of an 8x8-pooled image)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(4)
        self.proj = nn.Linear(3 * 14 * 14, 512)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(512, 3 * 14 * 14, generator=gen) / 24)
            self.proj.bias.copy_(torch.randn(512, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.avg_pool2d(x, 8).flatten(1))


def build_face_pack(folder: Path) -> None:
    """Write `det_tiny.onnx` and `w600k_tiny.onnx` into `folder` (the layout of `~/.insightface/models/<pack>`)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"score_{s}" for s in STRIDES] + [f"bbox_{s}" for s in STRIDES] + [f"kps_{s}" for s in STRIDES]
    torch.onnx.export(
        TinyDetector().eval(),
        (torch.zeros(1, 3, DET_SIZE, DET_SIZE),),
        str(folder / "det_tiny.onnx"),
        input_names=["input"],
        output_names=names,
        dynamic_axes={"input": {2: "height", 3: "width"}, **{n: {0: "anchors"} for n in names}},
        dynamo=False,
    )
    torch.onnx.export(
        TinyRecognizer().eval(),
        (torch.zeros(1, 3, 112, 112),),
        str(folder / "w600k_tiny.onnx"),
        input_names=["face"],
        output_names=["embedding"],
        dynamo=False,
    )


def drawn_face_photo(eyes: tuple[int, int, int] = (0, 0, 255), side: int = 64) -> object:
    """A 640 x 640 picture with one face the offline (tiny) detector finds: try the Face tab without a real model."""
    from PIL import Image

    img = Image.new("RGB", (640, 640), (40, 40, 50))
    draw_face(img, (320, 320), side, eyes)
    return img


if __name__ == "__main__":  # python -m pipelines.offline.faces face.png [face2.png ...]: one drawn person per file
    import sys

    palette = [(0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    for n, target in enumerate(sys.argv[1:] or ["face.png"]):
        drawn_face_photo(palette[n % len(palette)]).save(target)
        print(f"{target}: a drawn face the offline detector finds (eyes {palette[n % len(palette)]})")
