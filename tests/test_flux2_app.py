"""The app on FLUX.2 [klein] (`tiny-flux2-klein`): General and Anime draw, compare and score through the API and MCP
with real images; the tabs it does not offer answer in one line; the family's licence notice is on the page."""

from __future__ import annotations

import asyncio
import json

import pytest
from gradio_client import Client, handle_file

from pipelines import Engine, build_request
from pipelines.metadata import read_png_metadata
from tests.test_mcp import call, data_url, metadata_of, texts

FAMILY = "tiny-flux2-klein"


@pytest.fixture(scope="module")
def served(families, tiny_root):
    import app

    demo = app.create_app(Engine(families[FAMILY], tiny_root=tiny_root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True,
                            **app.launch_options())  # fmt: skip
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    return Client(served, verbose=False, download_files=str(tmp_path_factory.mktemp("klein-dl")))


def test_the_general_tab_draws_compares_and_scores_on_klein(client, reference_files):
    reference = [{"image": handle_file(reference_files["gold"])}]
    path, seed, _, meta, seen = client.predict(prompt="a vase", reference=reference, strength=1.5, seed=3,
                                               api_name="/general")  # fmt: skip
    stored = read_png_metadata(path)
    assert stored["model_family"] == FAMILY and stored["adapter"] == "tiny-flux2-klein/transformer"
    assert stored["image_prompts"][0]["strength"] == 1.5 and stored["image_prompts"][0]["variant"] == "reference"
    assert meta["diagnostics"]["denoiser_calls"] == 8  # 4 steps, two branches (with and without the reference)
    assert seed == 3 and len(seen) == 1 and seen[0]["image"]  # what the model reads of the reference
    out = client.predict(prompt="a vase", reference=reference, strengths="0, 1, 2", api_name="/general_compare")
    cells, meta, scores = out[0], out[5], out[6]
    assert [c["caption"] for c in cells] == ["0", "1", "2"]
    assert meta["diagnostics"]["denoiser_calls"] == 8 and meta["diagnostics"]["batches"] == 1
    assert [s["strength"] for s in scores] == [0, 1, 2] and all("likeness" in s for s in scores)


def test_the_anime_tab_draws_on_klein(client, reference_files):
    reference = [{"image": handle_file(reference_files["gold"])}]
    path, *_ = client.predict(prompt="on a beach", reference=reference, seed=2, api_name="/anime")
    stored = read_png_metadata(path)
    assert stored["mode"] == "anime" and "the character of the reference" in json.dumps(stored)


@pytest.mark.parametrize(("endpoint", "title"), [("/face", "Consistent face"), ("/style_compare", "Style")])
def test_tabs_klein_does_not_offer_answer_in_one_line(client, endpoint, title):
    message = rf"The {title} tab is not available with the {FAMILY} family \(FLUX2\): it offers General, Anime"
    with pytest.raises(Exception, match=message + r" character\. Start the app with another family"):
        client.predict(prompt="x", api_name=endpoint)


def test_the_page_shows_the_family_licence(served):
    import httpx

    page = httpx.get(served, timeout=30).text
    assert "Apache-2.0" in page and "FLUX.2 [klein] reads the reference images themselves" in page


def test_klein_through_mcp_with_a_data_url_image(served, reference_files):
    gold = data_url(reference_files["gold"])
    arguments = {"prompt": "a vase", "steps": 2, "seed": 4, "strength": 0.5, "reference": [{"image": gold}]}
    error, content = asyncio.run(call(served, "general", arguments))
    assert not error, texts(content)
    meta = metadata_of(content)
    assert meta["model_family"] == FAMILY and meta["image_prompts"][0]["strength"] == 0.5
    error, content = asyncio.run(call(served, "general_compare", {"prompt": "a vase", "steps": 1, "strengths": "0, 1",
                                                                  "reference": [{"image": gold}]}))  # fmt: skip
    assert not error, texts(content)
    scores = next(json.loads(t) for t in texts(content) if t.startswith("[") and "likeness" in t)
    assert [s["strength"] for s in scores] == [0, 1]


def test_the_kv_family_draws_and_says_its_licence(families, tiny_root, reference_files):
    import httpx

    import app

    demo = app.create_app(Engine(families["tiny-flux2-klein-kv"], tiny_root=tiny_root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    try:
        assert "non-commercial" in httpx.get(url, timeout=30).text
        reference = [{"image": handle_file(reference_files["gold"])}]
        path, *_ = Client(url, verbose=False).predict(prompt="a vase", reference=reference, strength=0.5, seed=1,
                                                      api_name="/general")  # fmt: skip
        stored = read_png_metadata(path)
        assert stored["model_family"] == "tiny-flux2-klein-kv"
        assert stored["adapter"] == "tiny-flux2-klein-kv/transformer"
    finally:
        demo.close()


@pytest.mark.parametrize("family", [FAMILY, "tiny-flux2-klein-kv"])
def test_the_warm_up_readies_klein(families, tiny_root, family):
    """`python app.py --models flux2-klein` warms up as every family does: the base loads, the default variant (the
    base itself reads the references: no adapter to load) and the default comparison's batch curve."""
    import app

    engine = Engine(families[family], tiny_root=tiny_root, max_batch=None)
    assert app.warm_up(engine) == []
    preset = app.PRESETS["general"][family]
    key = engine._plan_key(build_request(preset, prompt="", seed=0))
    assert engine.loaded and engine.planner.calibrated(key, len(preset.compare))  # the default comparison's curve
