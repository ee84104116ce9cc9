"""Consistent-face mode: insightface (the real FaceAnalysis on a generated pack) and IP-Adapter FaceID."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from pipelines import Engine, ModelNotAvailableError, build_request
from pipelines.encoder import ImagePromptEncoder
from pipelines.face import FaceAnalyzer, FaceError, FaceSpec, identity
from pipelines.images import load_reference
from pipelines.offline.faces import draw_face
from tests.conftest import pixels

BACKGROUND = (40, 40, 50)


def photo(*faces: tuple[tuple[int, int], int, tuple[int, int, int]]) -> Image.Image:
    """A 640 x 640 photo with the given faces: (centre, side, eye colour)."""
    img = Image.new("RGB", (640, 640), BACKGROUND)
    for centre, side, eyes in faces:
        draw_face(img, centre, side, eyes)
    return img


ALICE = photo(((320, 320), 64, (0, 0, 255)))
ALICE_AGAIN = photo(((192, 256), 128, (0, 0, 250)))
BOB = photo(((320, 320), 64, (255, 255, 0)))


@pytest.fixture
def analyzer(engines):
    return engines["tiny"].face_analyzer()


def test_one_face(analyzer):
    results, warnings = analyzer.analyze([load_reference(ALICE)])
    (face,) = results
    assert warnings == [] and face.faces_found == 1
    assert face.bbox == pytest.approx((288, 288, 352, 352), abs=1)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert face.aligned.size == (224, 224)


def test_largest_face_wins_with_a_warning(analyzer):
    crowd = photo(((128, 128), 32, (255, 0, 0)), ((384, 384), 128, (0, 0, 255)), ((512, 96), 64, (0, 255, 0)))
    (face,), warnings = analyzer.analyze([load_reference(crowd)])
    assert face.faces_found == 3
    assert face.bbox == pytest.approx((320, 320, 448, 448), abs=1)
    assert warnings == ["Reference 1 shows 3 faces; the largest one (in the middle) is used."]


def test_two_faces_of_one_size_say_which_was_taken(analyzer):
    pair = photo(((160, 320), 64, (255, 0, 0)), ((480, 320), 64, (0, 0, 255)))
    (face,), warnings = analyzer.analyze([load_reference(pair)], label="slot 1 image")
    assert re.fullmatch(r"Slot 1 image 1 shows 2 faces; they are the same size; the clearest one \(on the "
                        r"(left|right)\) is used\.", warnings[0])  # fmt: skip
    side = "left" if face.bbox[0] < 320 else "right"
    assert f"on the {side}" in warnings[0]  # the words name the face that was taken


def test_a_face_missing_from_another_input_names_that_input(engines, presets):
    blank = Image.new("RGB", (640, 640), BACKGROUND)
    face = presets["face"]["tiny"]
    for values, name in [({"negative_reference": [blank]}, "negative image 1"),
                         ({"slots": [{"mode": "face"}], "slot_images": [blank]}, "slot 1 image 1")]:  # fmt: skip
        request = build_request(face, prompt="x", reference=[ALICE], seed=1, **values)
        with pytest.raises(FaceError, match=f"No face found in {name}\\."):
            engines["tiny"].generate(request)


@pytest.mark.parametrize(
    "image",
    [Image.new("RGB", (640, 640), BACKGROUND), photo(((320, 320), 20, (0, 0, 255)))],  # no face; a tiny face
    ids=["no face", "tiny face"],
)
def test_no_face_is_a_clear_error(analyzer, image):
    real = FaceAnalyzer(analyzer.spec, "tiny", use_cuda=False)  # as the real pack words it
    with pytest.raises(FaceError, match=r"No face found in reference 2\. Use a photo where one face is clearly"):
        real.analyze([load_reference(ALICE), load_reference(image)])
    # The offline pack finds drawn faces only: it never blames the person's photo.
    with pytest.raises(FaceError, match=r"reference 2\. The offline face model only finds drawn faces like the"):
        analyzer.analyze([load_reference(ALICE), load_reference(image)])


def test_several_photos_average_into_one_identity(analyzer):
    results, _ = analyzer.analyze([load_reference(ALICE), load_reference(BOB)])
    a, b = results[0].embedding, results[1].embedding
    assert not np.allclose(a, b)
    mean = identity(results)
    expected = (a + b) / np.linalg.norm(a + b)
    assert np.allclose(mean, expected, atol=1e-6) and np.linalg.norm(mean) == pytest.approx(1.0)


def test_cached_by_content_no_second_detection(engines):
    analyzer = FaceAnalyzer(engines["tiny"].face_analyzer().spec, "tiny", use_cuda=False)
    analyzer.analyze([load_reference(ALICE)])
    analyzer.analyze([load_reference(ALICE.copy())])  # same pixels, another object
    assert (analyzer.counters["detections"], analyzer.counters["cache_hits"]) == (1, 1)


def test_missing_real_pack_fails_fast_with_a_clear_message(tmp_path):
    analyzer = FaceAnalyzer(FaceSpec("buffalo_l", str(tmp_path)), "sdxl", use_cuda=False)
    with pytest.raises(ModelNotAvailableError, match=r"insightface model pack 'buffalo_l'.*--models tiny"):
        analyzer.load()


def test_faceid_strength_zero_equals_no_image_prompt(engines, presets, family):
    face = presets["face"][family]
    zero = engines[family].generate(build_request(face, prompt="x", seed=1, references=[ALICE], strength=0.0))
    none = engines[family].generate(build_request(face, prompt="x", seed=1))
    assert np.array_equal(pixels(zero.image), pixels(none.image))
    held = engines[family].generate(build_request(face, prompt="x", seed=1, references=[ALICE], strength=1.0))
    assert np.abs(pixels(held.image) - pixels(none.image)).mean() > 1.0
    assert held.metadata["adapter"].endswith(f"ip-adapter-faceid_{'sdxl' if family == 'tiny' else 'sd15'}.bin")


def test_identity_decides_the_image(engines, presets):
    face = presets["face"]["tiny"]
    render = lambda refs: pixels(  # noqa: E731 - a local shorthand
        engines["tiny"].generate(build_request(face, prompt="x", seed=1, references=refs, strength=1.0)).image
    )
    assert np.abs(render([ALICE]) - render([BOB])).mean() > 0.5
    assert not np.array_equal(render([ALICE, BOB]), render([ALICE]))


def test_faceid_plus_v2_structure_changes_the_output(engines, presets, family):
    face = presets["face"][family]

    def render(structure: float) -> np.ndarray:
        request = build_request(
            face, prompt="x", seed=1, references=[ALICE, ALICE_AGAIN], variant="faceid-plusv2", structure=structure
        )
        return pixels(engines[family].generate(request).image)

    low, high = render(0.0), render(2.5)
    assert np.abs(low - high).mean() > 0.5
    assert np.array_equal(render(2.5), high)  # nothing of one request stays on the model


def test_faceid_lora_is_on_in_face_mode_only(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    general = build_request(presets["general"]["tiny"], prompt="x", seed=1, negative_prompt="lowres")
    before = pixels(engine.generate(general).image)
    face = presets["face"]["tiny"]
    plus = build_request(face, prompt="x", seed=1, references=[ALICE], variant="faceid-plusv2", strength=0.0)
    with_lora = pixels(engine.generate(plus).image)  # strength 0: only the checkpoint's LoRA acts
    assert [(c.lora, c.spec.lora_weight) for c in engine.bank.loaded("faceid-plusv2").loras] == [
        ("faceid_faceid_plusv2", 1.0)
    ]
    assert np.abs(with_lora - before).max() > 0
    assert np.array_equal(pixels(engine.generate(general).image), before)  # leaving the mode removes it
    plain = build_request(face, prompt="x", seed=1, references=[ALICE], strength=0.0)  # FaceID: lora_weight 0
    assert np.array_equal(pixels(engine.generate(plain).image), before)


def test_sweep_cells_equal_single_renders(engines, presets):
    face = presets["face"]["tiny"]
    request = build_request(face, prompt="x", seed=2, references=[ALICE], variant="faceid-plusv2")
    sweep = engines["tiny"].generate_sweep(request.swept([0.3, 1.1]))
    assert sweep.diagnostics["face_detections"] == 0 or sweep.diagnostics["face_detections"] == 1
    for strength, cell in zip(sweep.strengths, sweep.images, strict=True):
        single = build_request(face, prompt="x", seed=2, references=[ALICE], variant="faceid-plusv2", strength=strength)
        assert np.abs(pixels(engines["tiny"].generate(single).image) - pixels(cell)).max() <= 2


def test_previews_show_the_face_box_and_crop(engines, presets):
    face = presets["face"]["tiny"]
    result = engines["tiny"].generate(build_request(face, prompt="x", references=[ALICE]))
    boxed, aligned = result.previews
    assert boxed.size == (640, 640) and aligned.size == (224, 224)
    assert boxed.getpixel((288, 320)) == (0, 255, 0)  # the box is drawn on the chosen face


def test_faceid_lora_follows_a_base_swap(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    face = presets["face"]["tiny"]
    kwargs = {"prompt": "x", "seed": 1, "references": [ALICE], "variant": "faceid-plusv2", "strength": 0.7}
    request = build_request(face, **kwargs)
    first = pixels(engine.generate(request).image)
    on_anime = engine.generate(build_request(face, **kwargs, base="anime"))
    assert on_anime.metadata["base"] == "anime" and engine.base_name == "anime"
    assert pixels(on_anime.image).shape == first.shape  # LoRA re-loaded into the new UNet
    assert np.array_equal(pixels(engine.generate(request).image), first)


def test_face_detections_are_kept_apart_per_visitor(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    request = build_request(presets["face"]["tiny"], prompt="x", seed=1, references=[ALICE], steps=1)
    counts = [engine.generate(request, scope=s).diagnostics["face_detections"] for s in ("a", "b", "a")]
    assert counts == [1, 1, 0]  # visitor b's run detects again: nothing tells it that a used this photo


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_faceid_plus_gets_the_crop_in_the_channel_order_its_weights_expect(families, tiny_root, presets, order,
                                                                          monkeypatch):  # fmt: skip
    """The released FaceID Plus weights were demonstrated with insightface's BGR crop (see presets/models.toml)."""
    import dataclasses

    family = families["tiny"]
    assert family.adapters["faceid-plusv2"].face_crop_channels == "bgr"  # preset data, for every family
    spec = dataclasses.replace(family.adapters["faceid-plusv2"], face_crop_channels=order)
    engine = Engine(dataclasses.replace(family, adapters={**family.adapters, "faceid-plusv2": spec}),
                    tiny_root=tiny_root)  # fmt: skip
    seen = []
    real = ImagePromptEncoder.pixels
    monkeypatch.setattr(
        ImagePromptEncoder, "pixels", lambda self, c, imgs, crop: seen.extend(imgs) or real(self, c, imgs, crop)
    )
    request = build_request(presets["face"]["tiny"], prompt="x", references=[ALICE], variant="faceid-plusv2", steps=1)
    result = engine.generate(request)
    aligned = np.asarray(result.previews[-1])  # the preview shows the crop as a person sees it (RGB)
    fed = np.asarray(seen[0].image)
    assert np.array_equal(fed, aligned[:, :, ::-1] if order == "bgr" else aligned)
    assert not np.array_equal(aligned, aligned[:, :, ::-1])  # the drawn face is not grey: the test can fail
