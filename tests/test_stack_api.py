"""Stacked image prompts through the served app: the API keywords, 2-D comparisons, and settings that travel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines import build_request
from pipelines.images import load_reference
from pipelines.metadata import read_png_metadata
from pipelines.parameters import PARAMETERS, SETTINGS_TYPES, parameters_for
from pipelines.presets import MODES


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False, download_files=str(Path(os.environ["IMAGE_PROMPT_TINY_DIR"]) / "dl2"))


@pytest.fixture(scope="module")
def files(reference_files, tmp_path_factory):
    blue = tmp_path_factory.mktemp("stack") / "blue.png"
    Image.new("RGB", (48, 48), (20, 40, 220)).save(blue)
    return {**reference_files, "blue": str(blue)}


def gallery(*paths: str) -> list[dict]:
    return [{"image": handle_file(p)} for p in paths]


def rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_a_face_in_a_style(client, files):
    """Face + style in one image: the PNG names both prompts, their adapters and the SHA-256 of every reference."""
    path, _, _, meta, seen = client.predict(
        prompt="a portrait", reference=gallery(files["alice"]), extra_mode="style",
        extra_reference=gallery(files["gold"]), extra_strength=0.8, seed=11, api_name="/face",
    )  # fmt: skip
    stored = read_png_metadata(path)
    face, style = stored["image_prompts"]
    assert (face["mode"], style["mode"]) == ("face", "style") and style["strength"] == 0.8
    assert face["references_sha256"] == [load_reference(files["alice"]).sha256]
    assert style["references_sha256"] == [load_reference(files["gold"]).sha256]
    assert face["adapter"] and style["adapter"] and stored["adapter"] == f"{face['adapter']} + {style['adapter']}"
    assert stored["extra_mode"] == "style" and meta["image_prompts"] == stored["image_prompts"]
    assert len(seen) == 3  # the face box and crop, then what the style adapter's encoder sees
    alone, *_ = client.predict(prompt="a portrait", reference=gallery(files["alice"]), seed=11, api_name="/face")
    assert np.abs(rgb(path) - rgb(alone)).mean() > 0.5


def test_two_dimensional_comparison(client, files):
    cells, slider, grid, _, _, meta, *_ = client.predict(
        prompt="a vase", reference=gallery(files["gold"]), extra_mode="style", extra_reference=gallery(files["blue"]),
        strengths="0, 1", extra_strengths="0, 0.5, 1", seed=3, steps=2, api_name="/general_compare",
    )  # fmt: skip
    assert [c["caption"] for c in cells] == ["0 × 0", "0 × 0.5", "0 × 1", "1 × 0", "1 × 0.5", "1 × 1"]
    assert slider is None  # the A/B slider is for two cells
    width, height = Image.open(grid).size
    assert 3 * 64 < width < 3 * 64 + 120 and 2 * 64 < height < 2 * 64 + 60  # 2 rows x 3 columns, headers aside
    stored = read_png_metadata(grid)
    assert stored["strengths"] == [0.0, 1.0] and stored["extra_strengths"] == [0.0, 0.5, 1.0]
    assert meta["extra_strengths"] == [0.0, 0.5, 1.0]
    single, *_ = client.predict(
        prompt="a vase", reference=gallery(files["gold"]), extra_mode="style", extra_reference=gallery(files["blue"]),
        strength=1, extra_strength=0.5, seed=3, steps=2, api_name="/general",
    )  # fmt: skip
    assert np.abs(rgb(cells[4]["image"]) - rgb(single)).max() <= 2
    assert read_png_metadata(cells[4]["image"])["extra_strength"] == 0.5
    # The grid PNG restores the whole sweep, both axes.
    note, data = client.predict(handle_file(grid), api_name="/load_settings")
    assert data["strengths"] == [0.0, 1.0] and data["extra_strengths"] == [0.0, 0.5, 1.0]
    assert data["settings"]["extra_mode"] == "style" and data["settings"]["slots"][0]["mode"] == "style"
    assert "Strengths of the first added prompt: 0, 0.5, 1" in note


def test_settings_round_trip_restores_the_extra_prompt(client, files):
    stack = dict(extra_mode="face", extra_strength=0.6, extra_region="right", region="left", start_at=0.1,
                 extra_stop_at=0.8, extra_variant="faceid-plusv2",
                 negative_reference=gallery(files["blue"]))  # fmt: skip
    path, *_ = client.predict(prompt="two", reference=gallery(files["gold"]), extra_reference=gallery(files["alice"]),
                              seed=8, api_name="/general", **stack)  # fmt: skip
    settings = client.predict(prompt="two", seed=8, api_name="/general_settings", **stack)
    for source in (path, settings):
        _, data = client.predict(handle_file(source), api_name="/load_settings")
        values = data["settings"]
        assert values["extra_mode"] == "face" and values["extra_strength"] == 0.6
        assert values["extra_region"] == "right" and values["region"] == "left" and values["start_at"] == 0.1
        assert values["extra_stop_at"] == 0.8 and values["extra_variant"] == "faceid-plusv2"
    assert json.loads(Path(settings).read_text())["extra_mode"] == "face"


def test_bad_stacks_get_a_message(client, files):
    with pytest.raises(Exception, match="extra_strengths sweeps the first added image prompt: add one"):
        client.predict(prompt="x", strengths="0, 1", extra_strengths="0, 1", api_name="/general_compare")
    with pytest.raises(Exception, match=r"start_at \(0.5\) must be below stop_at \(0.5\)"):
        client.predict(prompt="x", start_at=0.5, stop_at=0.5, api_name="/general")


def test_one_parameter_table_drives_api_settings_and_requests(client, presets):
    """Each endpoint's parameters are the table's, in its order; every one is a keyword of `build_request`."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for mode in MODES:
        for endpoint, role in ((f"/{mode}", "single"), (f"/{mode}_compare", "compare"), (f"/{mode}_score", "score")):
            names = [p["parameter_name"] for p in api[endpoint]["parameters"]]
            assert names == parameters_for(mode, role), endpoint
    preset = presets["general"]["tiny"]
    for parameter in PARAMETERS:  # every keyword is taken (None: its default)
        build_request(preset, prompt="x", **{parameter.name: None} if parameter.name != "prompt" else {})
    with pytest.raises(TypeError, match="unexpected keywords"):
        build_request(preset, prompt="x", strenght=1)
    assert set(SETTINGS_TYPES) == {p.name for p in PARAMETERS if p.kind != "images"}


def test_slots_through_the_api_and_back(client, files):
    """Two added image prompts by `slots` / `slot_images`; the PNG and a settings file restore both."""
    slots = [{"mode": "face", "region": "right", "strength": 0.9, "variant": "faceid-plusv2"},
             {"mode": "style", "strength": 0.7, "start_at": 0.25}]  # fmt: skip
    images = gallery(files["alice"], files["gold"])
    path, _, _, meta, seen = client.predict(prompt="two", reference=gallery(files["alice"]), region="left",
                                            slots=slots, slot_images=images, seed=5, api_name="/face")  # fmt: skip
    assert [p["mode"] for p in meta["image_prompts"]] == ["face", "face", "style"]
    assert meta["slot_images_sha256"] == [load_reference(files["alice"]).sha256, load_reference(files["gold"]).sha256]
    assert len(seen) == 5  # two faces (box and crop each), then the style image as CLIP sees it
    settings = client.predict(prompt="two", slots=slots, slot_images=images, api_name="/face_settings")
    for source in (path, settings):
        _, data = client.predict(handle_file(source), api_name="/load_settings")
        restored = data["settings"]["slots"]
        assert [(s["mode"], s["region"], s["strength"]) for s in restored] == [("face", "right", 0.9),
                                                                                ("style", "whole", 0.7)]  # fmt: skip
        assert restored[0]["variant"] == "faceid-plusv2" and restored[1]["start_at"] == 0.25
    with pytest.raises(Exception, match=r"either as slots .* or as extra_\*, not both"):
        client.predict(prompt="x", slots=slots[:1], slot_images=images[:1], extra_mode="style", api_name="/general")
    with pytest.raises(Exception, match=r"The slots take 2 images \(1 \+ 1\), but slot_images holds 1"):
        client.predict(prompt="x", slots=slots, slot_images=images[:1], api_name="/general")


def test_a_face_on_a_depth_map_through_the_api(client, files):
    """Face tab + a depth slot by `slots`: the PNG names the ControlNet and its control type, the preview shows the
    face box and crop then the depth map, and strength 0 is exactly the face alone."""
    slots = [{"mode": "depth", "strength": 1.0, "stop_at": 0.75}]
    path, _, _, meta, seen = client.predict(prompt="a portrait", reference=gallery(files["alice"]), slots=slots,
                                            slot_images=gallery(files["gold"]), seed=4, api_name="/face")  # fmt: skip
    stored = read_png_metadata(path)
    face, depth = stored["image_prompts"]
    assert (face["mode"], depth["mode"], depth["control_type"]) == ("face", "depth", "depth")
    assert depth["adapter"] == "tiny-controlnet-union" and depth["stop_at"] == 0.75
    assert stored["slots"][0]["control_type"] == "depth" and meta["diagnostics"]["control_maps"] == ["depth"]
    assert len(seen) == 3  # the face box, its aligned crop, then the depth map
    zero, *_ = client.predict(
        prompt="a portrait", reference=gallery(files["alice"]), slot_images=gallery(files["gold"]),
        slots=[{**slots[0], "strength": 0}], seed=4, api_name="/face",
    )  # fmt: skip
    alone, *_ = client.predict(prompt="a portrait", reference=gallery(files["alice"]), seed=4, api_name="/face")
    assert np.array_equal(rgb(zero), rgb(alone)) and np.abs(rgb(path) - rgb(alone)).mean() > 0.5
    with pytest.raises(Exception, match=r"A control slot needs 'control_type'"):
        client.predict(prompt="x", slots=[{"mode": "control"}], slot_images=gallery(files["gold"]), api_name="/face")


def test_a_pose_slot_through_the_api(client, files):
    """ "Pose of a photo" by gradio_client with a real image: the map is previewed, the metadata names the pose
    ControlNet, and a sweep over the slot's strength is one pass whose cells equal single renders."""
    slots = [{"mode": "pose", "strength": 0.9}]
    _, _, _, meta, seen = client.predict(prompt="a dancer", slots=slots, slot_images=gallery(files["alice"]),
                                                 seed=6, steps=2, api_name="/general")  # fmt: skip
    assert meta["slots"][0]["mode"] == "pose" and meta["image_prompts"][1]["control_type"] == "pose"
    assert meta["image_prompts"][1]["adapter"] == "tiny-controlnet-union"
    assert len(seen) == 1 and rgb(seen[0]["image"]).any()  # the pose map (no reference: nothing for CLIP)
    cells, *_ = client.predict(prompt="a dancer", slots=slots, slot_images=gallery(files["alice"]), seed=6, steps=2,
                               strengths="0.5", extra_strengths="0, 0.9", api_name="/general_compare")  # fmt: skip
    assert [c["caption"] for c in cells] == ["0.5 × 0", "0.5 × 0.9"]
    single, *_ = client.predict(prompt="a dancer", slots=slots, slot_images=gallery(files["alice"]), seed=6, steps=2,
                                strength=0.5, api_name="/general")  # fmt: skip
    assert np.abs(rgb(cells[1]["image"]) - rgb(single)).max() <= 2
