"""The pose slot ("Pose of a photo"): the people in a photo found and their keypoints estimated with transformers'
own models (RT-DETR, ViTPose), drawn as an OpenPose map for the family's pose ControlNet. Its map equals the keypoints
drawn by hand from the models' output; it moves the image only through that map; a sweep over it is one pass."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import build_request
from pipelines.presets import preset_for, slot_kinds, structure_texts
from pipelines.slots.structure import fit
from tests.conftest import pixels
from tests.pipelines.test_sweep import CELL_TOLERANCE

PROMPT = "a dancer on a stage"

# controlnet_aux's draw_bodypose, transcribed: OpenPose's limbs (1-based) and colours.
LIMB_SEQ = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
            [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]  # fmt: skip
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
          [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
          [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]  # fmt: skip
# OpenPose's 18 body points by name, and COCO's 17 (what ViTPose estimates) in their order.
OPENPOSE = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
            "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
            "left_eye", "right_ear", "left_ear"]  # fmt: skip
COCO = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
        "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
        "right_ankle"]  # fmt: skip


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    out = []
    for shift in (0, 40):
        a = (rng.random((112, 96, 3)) * 90).astype(np.uint8)
        a[20 + shift // 2 : 90, 30:60] = (200, 150, 120)  # a standing figure
        a[10:30, 38 + shift // 4 : 52 + shift // 4] = (220, 180, 150)  # its head
        out.append(Image.fromarray(a))
    return out


@pytest.fixture(scope="module")
def dancer():
    return photos()[0]


def request(presets, family, **kwargs):
    return build_request(presets["general"][family], **{"prompt": PROMPT, "seed": 4, **kwargs})


def pose_slot(**kwargs) -> dict:
    return {"mode": "pose", **kwargs}


def hand_drawn(engine, picture: Image.Image) -> Image.Image:
    """The people and keypoints straight from the two models (as their model cards call them), drawn as
    controlnet_aux draws a body."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, VitPoseForPoseEstimation

    settings = preset_for("pose", engine.family.name).settings
    detector_repo, pose_repo = (engine.source.resolve(r) for r in engine.family.preprocessors["pose"])
    processor = AutoImageProcessor.from_pretrained(detector_repo, backend="pil")
    detector = AutoModelForObjectDetection.from_pretrained(detector_repo).eval()
    with torch.no_grad():
        outputs = detector(**processor(images=picture, return_tensors="pt"))
    result = processor.post_process_object_detection(
        outputs, target_sizes=torch.tensor([(picture.height, picture.width)]), threshold=settings["person_threshold"]
    )[0]
    people = [(s, b) for s, b, label in zip(result["scores"], result["boxes"], result["labels"], strict=True)
              if label == 0]  # fmt: skip
    people = sorted(people, key=lambda p: -float(p[0]))[: settings["max_people"]]
    canvas = np.zeros((picture.height, picture.width, 3), dtype=np.uint8)
    if not people:
        return Image.fromarray(canvas)
    boxes = np.array([b.numpy() for _, b in people])
    boxes[:, 2] = boxes[:, 2] - boxes[:, 0]
    boxes[:, 3] = boxes[:, 3] - boxes[:, 1]
    keypointer = AutoImageProcessor.from_pretrained(pose_repo, backend="pil")
    model = VitPoseForPoseEstimation.from_pretrained(pose_repo).eval()
    with torch.no_grad():
        heatmaps = model(**keypointer(picture, boxes=[boxes], return_tensors="pt"))
    for person in keypointer.post_process_pose_estimation(heatmaps, boxes=[boxes])[0]:
        low, points = settings["keypoint_threshold"], zip(COCO, person["keypoints"], person["scores"], strict=True)
        seen = {name: (float(x), float(y)) for name, (x, y), s in points if s >= low}
        if "left_shoulder" in seen and "right_shoulder" in seen:
            (lx, ly), (rx, ry) = seen["left_shoulder"], seen["right_shoulder"]
            seen["neck"] = ((lx + rx) / 2, (ly + ry) / 2)
        keypoints = [seen.get(name) for name in OPENPOSE]
        for (k1, k2), color in zip(LIMB_SEQ, COLORS, strict=False):
            p1, p2 = keypoints[k1 - 1], keypoints[k2 - 1]
            if p1 is None or p2 is None:
                continue
            Y = np.array([p1[0], p2[0]])
            X = np.array([p1[1], p2[1]])
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(Y)), int(np.mean(X))), (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
        for keypoint, color in zip(keypoints, COLORS, strict=True):
            if keypoint is not None:
                cv2.circle(canvas, (int(keypoint[0]), int(keypoint[1])), 4, color, thickness=-1)
    return Image.fromarray(canvas)


def test_the_pose_kind_is_offered_where_its_models_and_controlnet_are():
    assert structure_texts("label")["pose"] == "Pose of a photo"
    assert "pose" in slot_kinds("tiny") and "pose" in slot_kinds("tiny-sd15")
    assert "pose" in slot_kinds("sdxl") and "pose" in slot_kinds("sd15")
    assert "pose" not in slot_kinds("tiny-flux")  # no ControlNet on FLUX yet
    assert preset_for("pose", "sd15").map_type == "pose" and preset_for("pose", "sd15").control_types == ("pose",)


def test_its_map_is_the_models_keypoints_drawn_by_hand(engines, presets, family, dancer):
    engine = engines[family]
    req = request(presets, family, slots=[pose_slot()], slot_images=[dancer])
    size = (req.settings.width, req.settings.height)
    ours = engine.slots.structure.control_map(req.slots[0], *size, "")
    expected = hand_drawn(engine, fit(dancer, *size, req.slots[0].crop))
    assert np.array_equal(np.asarray(ours), np.asarray(expected))
    assert np.asarray(ours).any()  # the tiny twin finds people: the test compares drawn skeletons, not black


def test_the_pose_steers_the_image_only_through_its_map(engines, presets, family, gold):
    """Strength 0 is exactly no slot; another photo (another pose) moves the image; the result shows the map."""
    first, second = photos()
    renders = {}
    for name, picture, strength in (("first", first, 0.9), ("second", second, 0.9), ("zero", first, 0.0)):
        req = request(presets, family, reference=[gold], slots=[pose_slot(strength=strength)], slot_images=[picture])
        renders[name] = engines[family].generate(req)
    without = engines[family].generate(request(presets, family, reference=[gold]))
    assert np.array_equal(pixels(renders["zero"].image), pixels(without.image))
    assert np.abs(pixels(renders["first"].image) - pixels(without.image)).mean() > 1.0
    assert np.abs(pixels(renders["first"].image) - pixels(renders["second"].image)).mean() > 1.0  # another pose
    maps = [r.previews[-1] for r in (renders["first"], renders["second"])]  # the map, after what the adapter sees
    assert not np.array_equal(np.asarray(maps[0]), np.asarray(maps[1]))
    meta = renders["first"].metadata["slots"][0]
    assert meta["mode"] == "pose" and meta["control_type"] == "pose"
    assert renders["first"].diagnostics["control_maps"] == ["pose"]


def test_a_pose_strength_sweep_is_one_pass_of_single_renders(engines, presets, family, dancer):
    engine = engines[family]
    strengths = [0.0, 0.5, 1.0]
    req = request(presets, family, slots=[pose_slot(strength=0.5)], slot_images=[dancer])
    sweep = engine.generate_sweep(req.swept([req.primary.strength], strengths))
    assert sweep.diagnostics["batches"] == 1 and sweep.diagnostics["unet_calls"] == req.settings.steps
    assert engine.counters["pose_estimations"] >= 1
    for strength, cell in zip(strengths, sweep.images, strict=True):
        single = engine.generate(request(presets, family, slots=[pose_slot(strength=strength)], slot_images=[dancer]))
        assert np.abs(pixels(single.image) - pixels(cell)).max() <= CELL_TOLERANCE


def test_a_photo_without_people_says_so(engines, presets, monkeypatch):
    engine = engines["tiny"]
    empty = Image.new("RGB", (64, 64), (10, 10, 10))
    monkeypatch.setattr(engine.slots.structure, "people", lambda image, settings: [])
    result = engine.generate(request(presets, "tiny", slots=[pose_slot()], slot_images=[empty], seed=5))
    assert any("no person was found" in w for w in result.warnings), result.warnings
