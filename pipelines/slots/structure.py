"""Structure slots: ControlNets fed an edge map, a depth map or a ready control map, and a start image (img2img).

`StructureBank` owns what they need: the control maps (Canny edges with OpenCV, depth with a transformers depth
model, cached per visitor like face detections), the ControlNets (loaded on first use, kept in memory whatever the
base), and the diffusers pipeline that runs a request, made from the base's own modules (as `from_pipe` would, without
its dtype cast): no second UNet. Each ControlNet's residuals are scaled per sample (`ScaledControlNets`), so a sweep
over a ControlNet slot's strength is one batched pass whose cells equal single renders.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..conditioning import ControlResiduals, StartImage
from ..errors import InvalidRequestError
from ..images import ReferenceImage
from ..lru import LRU
from ..presets import ControlNetSpec, FamilySpec, preset_for
from ..request import ImagePrompt
from ..sources import ModelSource

if TYPE_CHECKING:
    from ..controlnets import ScaledControlNets


def share_modules(cls: type, base: Any, **extra: Any) -> Any:
    """`cls.from_pipe(base, **extra)` without its cast: diffusers' `from_pipe` moves the new pipeline to one dtype
    (float32 unless told) in place, so the base's own shared modules change with it (a bf16 UNet becomes float32,
    doubling its memory and changing every later image; a VAE kept in float32 would become half). Here the modules are
    handed over as they are, with the base's config values the class takes."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in base.components.items() if k in params}
    kwargs |= {k: v for k, v in base.config.items() if k in params and k not in kwargs and not k.startswith("_")}
    kwargs |= extra
    for key, param in params.items():  # optional components the base does not have (e.g. its image encoder)
        if key not in kwargs and key != "self" and param.default is inspect.Parameter.empty:
            kwargs[key] = None
    return cls(**kwargs)


def fit(image: Image.Image, width: int, height: int, crop: str) -> Image.Image:
    """The slot's image at the output size: "center" covers and crops, "pad" fits and pads black, "squash" resizes."""
    image = image.convert("RGB")
    if crop == "squash":
        return image.resize((width, height), Image.Resampling.BICUBIC)
    if crop == "pad":
        # A strip thinner than one output pixel once fitted (100000 x 1 into 64 x 64) is first padded black to one
        # pixel's worth: Pillow would resize it to a height (or width) of 0 and fail.
        w, h = image.size
        thick = (max(h, math.ceil(w / width)), max(w, math.ceil(h / height)))
        if thick != (h, w):
            image = ImageOps.pad(image, (thick[1], thick[0]), color=(0, 0, 0))
        return ImageOps.pad(image, (width, height), Image.Resampling.BICUBIC, color=(0, 0, 0))
    return ImageOps.fit(image, (width, height), Image.Resampling.BICUBIC)


def canny_map(image: Image.Image, thresholds: tuple[int, int]) -> Image.Image:
    """OpenCV's Canny edges of an RGB picture, white on black, as three channels (what canny ControlNets take)."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), *thresholds)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


# OpenPose's body drawing (the map its ControlNets were trained on): 18 points, COCO's 17 plus the neck between the
# shoulders, in OpenPose's order; limbs as (from, to) in that order, each drawn in its colour at 60 %, then the points.
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)  # None: the neck
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))  # fmt: skip
OPENPOSE_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
                    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255),
                    (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))  # fmt: skip


def openpose_points(keypoints: np.ndarray, seen: np.ndarray) -> list[tuple[float, float] | None]:
    """A person's 18 OpenPose points from COCO's 17 (None where not seen; the neck needs both shoulders)."""
    out: list[tuple[float, float] | None] = []
    for coco in OPENPOSE_FROM_COCO:
        if coco is None:
            out.append(tuple((keypoints[5] + keypoints[6]) / 2) if seen[5] and seen[6] else None)
        else:
            out.append(tuple(keypoints[coco]) if seen[coco] else None)
    return out


def openpose_map(size: tuple[int, int], people: Sequence[tuple[np.ndarray, np.ndarray]]) -> Image.Image:
    """The people's poses on black, as OpenPose draws a body (controlnet_aux's `draw_bodypose`), one person after
    another: each limb an ellipse 4 px thick in its colour at 60 %, then each point a 4 px disc in its colour."""
    import cv2

    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for keypoints, seen in people:
        points = openpose_points(keypoints, seen)
        for (a, b), colour in zip(OPENPOSE_LIMBS, OPENPOSE_COLOURS, strict=False):
            if points[a] is None or points[b] is None:
                continue
            (xa, ya), (xb, yb) = points[a], points[b]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in colour])
        for point, colour in zip(points, OPENPOSE_COLOURS, strict=True):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), 4, colour, thickness=-1)
    return Image.fromarray(canvas)


@dataclass
class StructureInputs:
    """A request's structure slots, ready to run: control maps per ControlNet slot, the fitted start image."""

    controls: list[tuple[int, ImagePrompt, Image.Image]]  # (index in request.image_prompts, slot, control map)
    start: tuple[int, ImagePrompt, Image.Image] | None  # (index, slot, start image at the output size)

    @property
    def maps(self) -> list[Image.Image]:
        """What the ControlNets see, in slot order (previews and the result's diagnostics view)."""
        return [image for _, _, image in self.controls]


class StructureBank:
    """Control maps, ControlNets and the structure pipelines of one family."""

    def __init__(
        self, source: ModelSource, arch: Any, device: str, dtype: torch.dtype, counters: Any, cache_size: int
    ) -> None:
        self.source, self.arch = source, arch
        self.family: FamilySpec = source.family
        self.device, self.dtype, self.counters = device, dtype, counters
        self._nets: dict[str, torch.nn.Module] = {}  # repo/subfolder -> ControlNet (one union model serves all types)
        self._depth: tuple[Any, Any] | None = None
        self._pose: tuple[Any, Any, Any, Any] | None = None  # person detector and keypoint model, with processors
        self._maps = LRU(cache_size)  # (scope, kind, image hash, size, crop, thresholds) -> control map
        self._pipes: dict[tuple, tuple[Any, Any]] = {}  # the structure pipelines made on `_pipes_base`
        self._pipes_base: Any = None

    # ------------------------------------------------------------------------------------------ control maps

    def inputs(self, prompts: Sequence[ImagePrompt], width: int, height: int, scope: str) -> StructureInputs:
        """The control maps and the start image of a request's structure slots that have an image."""
        controls, start = [], None
        for index, prompt in enumerate(prompts):
            if not prompt.is_structure or not prompt.references:
                continue
            if prompt.mode == "start":
                start = (index, prompt, fit(prompt.references[0].image, width, height, prompt.crop))
            else:
                controls.append((index, prompt, self.control_map(prompt, width, height, scope)))
        return StructureInputs(controls, start)

    def control_map(self, prompt: ImagePrompt, width: int, height: int, scope: str) -> Image.Image:
        """What a ControlNet slot's net sees: Canny edges, estimated depth, or the given map, at the output size."""
        reference: ReferenceImage = prompt.references[0]
        thresholds = preset_for("canny", self.family.name).canny_thresholds if prompt.mode == "canny" else None
        key = (scope, prompt.mode, reference.sha256, width, height, prompt.crop, thresholds)
        cached = self._maps.get(key)
        if cached is not None:
            self.counters["control_map_hits"] += 1
            return cached
        fitted = fit(reference.image, width, height, prompt.crop)
        if prompt.mode == "canny":
            out = canny_map(fitted, thresholds)
        elif prompt.mode == "depth":
            out = self.depth_map(fitted)
        elif prompt.mode == "pose":
            out = openpose_map(fitted.size, self.people(fitted, preset_for("pose", self.family.name).settings))
        else:
            out = fitted
        self._maps.put(key, out)
        return out

    def depth_map(self, image: Image.Image) -> Image.Image:
        """Relative depth (near = white), estimated at the model's input size and resized to the picture's."""
        if self._depth is None:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            repo = self.family.depth_model
            processor = self.source.from_pretrained(AutoImageProcessor.from_pretrained, repo)
            model = self.source.from_pretrained(AutoModelForDepthEstimation.from_pretrained, repo)
            self._depth = (processor, model.to(self.device).eval())
        processor, model = self._depth
        inputs = processor(images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            depth = model(**inputs).predicted_depth  # (1, h, w)
        self.counters["depth_estimations"] += 1
        depth = torch.nn.functional.interpolate(
            depth[:, None].float(), size=(image.height, image.width), mode="bicubic", align_corners=False
        )[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))

    def people(self, image: Image.Image, settings: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each person found in `image` (the family's detector, at most `max_people`, best first) and their 17 COCO
        keypoints in pixels with their scores (ViTPose, one box at a time as its processor crops them)."""
        if self._pose is None:
            from transformers import AutoImageProcessor, AutoModelForObjectDetection, VitPoseForPoseEstimation

            load = self.source.from_pretrained
            detector_repo, pose_repo = self.family.preprocessors["pose"]
            # The PIL processors: the same pixels whether or not torchvision is installed; both models in fp32 (small,
            # and the keypoints do not depend on the engine's dtype or on the checkpoint's).
            full = {"dtype": torch.float32}
            self._pose = (
                load(AutoImageProcessor.from_pretrained, detector_repo, backend="pil"),
                load(AutoModelForObjectDetection.from_pretrained, detector_repo, **full).to(self.device).eval(),
                load(AutoImageProcessor.from_pretrained, pose_repo, backend="pil"),
                load(VitPoseForPoseEstimation.from_pretrained, pose_repo, **full).to(self.device).eval(),
            )
        find, detector, read, model = self._pose
        with torch.inference_mode():
            found = detector(**find(images=image, return_tensors="pt").to(self.device))
        size = torch.tensor([(image.height, image.width)])
        hits = find.post_process_object_detection(found, threshold=settings["person_threshold"], target_sizes=size)[0]
        person = detector.config.label2id.get("person", 0)
        keep = (hits["labels"] == person).nonzero().flatten()
        keep = keep[hits["scores"][keep].argsort(descending=True, stable=True)][: int(settings["max_people"])]
        boxes = hits["boxes"][keep].float().cpu().numpy()
        self.counters["pose_estimations"] += 1
        if not len(boxes):
            return []
        boxes[:, 2:] -= boxes[:, :2]  # (x0, y0, x1, y1) -> COCO's (x, y, width, height), as ViTPose takes them
        with torch.inference_mode():
            heatmaps = model(**read(image, boxes=[boxes], return_tensors="pt").to(self.device))
        poses = read.post_process_pose_estimation(heatmaps, boxes=[boxes])[0]
        low = settings["keypoint_threshold"]
        return [(p["keypoints"].float().cpu().numpy(), p["scores"].float().cpu().numpy() >= low) for p in poses]

    # ------------------------------------------------------------------------------------------- ControlNets

    def spec(self, prompt: ImagePrompt) -> ControlNetSpec:
        spec = self.family.controlnets.get(prompt.control_type or "")
        if spec is None:
            raise InvalidRequestError(
                "slots", f"The {self.family.name} family has no ControlNet for {prompt.control_type!r} maps."
            )
        return spec

    def net(self, spec: ControlNetSpec) -> torch.nn.Module:
        """The ControlNet of `spec`, loaded on first use and kept (it does not depend on the base)."""
        if spec.id not in self._nets:
            from diffusers import ControlNetModel, ControlNetUnionModel

            cls = ControlNetUnionModel if spec.union_mode is not None else ControlNetModel
            kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}
            net = self.source.from_pretrained(cls.from_pretrained, spec.repo, torch_dtype=self.dtype, **kwargs)
            self._nets[spec.id] = net.to(self.device).eval()
            net.register_forward_pre_hook(self._count_call)
            self.counters["controlnet_loads"] += 1
        return self._nets[spec.id]

    def _count_call(self, module: torch.nn.Module, args: Any) -> None:
        self.counters["controlnet_calls"] += 1

    def pipeline(self, base: Any, inputs: StructureInputs) -> tuple[Any, ScaledControlNets | None]:
        """The pipeline that runs these structure slots on `base`'s modules (the base itself when none act)."""
        import diffusers

        controls, img2img = bool(inputs.controls), inputs.start is not None
        if not controls and not img2img:
            return base, None
        name = self.arch.structure_pipeline(controls, img2img)
        specs = [self.spec(prompt) for _, prompt, _ in inputs.controls]
        if self._pipes_base is not base:  # made on another base (or none yet): those hold its modules
            self._pipes, self._pipes_base = {}, base
        key = (name, tuple(s.id for s in specs))
        if key not in self._pipes:
            extra: dict[str, Any] = {}
            per_sample = None
            if controls:
                union = self.arch.controlnet_union
                if union != all(s.union_mode is not None for s in specs):
                    raise InvalidRequestError("slots", "This family's ControlNets do not fit its pipeline (presets).")
                nets = [self.net(s) for s in specs]
                from ..controlnets import ScaledMultiControlNet, ScaledMultiControlNetUnion  # with the first ControlNet

                multi = (ScaledMultiControlNetUnion if union else ScaledMultiControlNet)(nets)
                per_sample = multi.per_sample
                extra["controlnet"] = multi
            pipe = share_modules(getattr(diffusers, name), base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = (pipe, per_sample)
        pipe, per_sample = self._pipes[key]
        pipe.scheduler = base.scheduler  # the base's sampler of this call (fast mode swaps it)
        return pipe, per_sample


class StructureShare:
    """A request's structure slots (ControlNet maps, a start image), ready for its passes."""

    def __init__(self, bank: StructureBank, prompts: Sequence[ImagePrompt], inputs: StructureInputs) -> None:
        self.bank, self.inputs = bank, inputs
        self.previews = inputs.maps + ([inputs.start[2]] if inputs.start is not None else [])
        # the ControlNet that reads each ControlNet slot's map (declared ones too: a missing net is an error)
        self.ids = {index: bank.spec(prompt).id for index, prompt in enumerate(prompts) if prompt.is_controlnet}
        self.notes = [
            f"Slot {index} (pose): no person was found in its photo, so its map is empty; the ControlNet still reads "
            "it (an empty pose map pulls towards no person)."
            for index, prompt, image in inputs.controls
            if prompt.mode == "pose" and image.getbbox() is None
        ]

    def start_of(self, cell: tuple[float, ...]) -> float | None:
        """Where a cell's pass starts: its start image's strength (None without a start image)."""
        return cell[self.inputs.start[0]] if self.inputs.start is not None else None

    def for_pass(self, pipe: Any, cells: Sequence[tuple[float, ...]], start: float | None) -> tuple[Any, list]:
        """The pipeline that runs a pass on `pipe`'s modules and the pass's values. ControlNet slots at 0 in every
        cell of the pass are left out (exactly the image without them); a start strength of 0 runs without it."""
        controls = [c for c in self.inputs.controls if any(cell[c[0]] for cell in cells)]
        acting = StructureInputs(controls, self.inputs.start if start else None)
        pipe, per_sample = self.bank.pipeline(pipe, acting)
        values: list = []
        if controls:
            values.append(
                ControlResiduals(
                    per_sample,
                    [[cell[index] for cell in cells] for index, _, _ in controls],
                    acting.maps,
                    [self.bank.spec(prompt).union_mode for _, prompt, _ in controls],
                    [(prompt.start_at, prompt.stop_at) for _, prompt, _ in controls],
                )
            )
        if acting.start is not None:
            values.append(StartImage(acting.start[2], start))
        return pipe, values

    def diagnostics(self, used: Any) -> dict[str, Any]:
        if not self.inputs.controls:
            return {}
        return {
            "controlnet_calls": used["controlnet_calls"],
            "control_maps": [prompt.control_type for _, prompt, _ in self.inputs.controls],
        }
