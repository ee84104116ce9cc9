"""Scored comparisons through the served app: scores, suggestion, plot, sweep settings, and `<mode>_score`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.metadata import read_png_metadata


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False, download_files=str(Path(os.environ["IMAGE_PROMPT_TINY_DIR"]) / "dl3"))


def gallery(*paths: str) -> list[dict]:
    return [{"image": handle_file(p)} for p in paths]


def test_a_scored_comparison(client, reference_files):
    gold = reference_files["gold"]
    cells, _, grid, _, _, meta, scores, suggested, plot, sweep_json = client.predict(
        prompt="a gold vase", reference=gallery(gold), strengths="0, 0.5, 1", seed=21, steps=2,
        api_name="/general_compare",
    )  # fmt: skip
    assert [s["strength"] for s in scores] == [0.0, 0.5, 1.0]
    assert all(set(s) == {"strength", "likeness", "adherence"} for s in scores)
    assert suggested["rule"].startswith("balance")
    if suggested["index"] is None:  # the scores barely changed: nothing is marked
        assert suggested["sentence"].startswith("Too close to call") and suggested["strength"] is None
    else:
        assert suggested["strength"] in (0.0, 0.5, 1.0) and suggested["sentence"].startswith("Suggested: ")
    assert Image.open(plot).size == (560, 320)
    stored = read_png_metadata(grid)  # the grid PNG carries the scores ...
    assert stored["scores"] == scores and stored["suggested"] == suggested
    saved = json.loads(Path(sweep_json).read_text())  # ... and so does the sweep's settings file
    assert saved["scores"] == scores and saved["strengths"] == [0.0, 0.5, 1.0] and saved["mode"] == "general"
    assert meta["scores"] == scores
    for cell, expected in zip(cells, scores, strict=True):  # any image scores the same through `_score`
        again = client.predict(image=handle_file(cell["image"]), prompt="a gold vase", reference=gallery(gold),
                               api_name="/general_score")  # fmt: skip
        assert abs(again["likeness"] - expected["likeness"]) <= 1e-3
        assert abs(again["adherence"] - expected["adherence"]) <= 1e-3
    itself = client.predict(image=handle_file(gold), prompt="x", reference=gallery(gold), api_name="/general_score")
    assert itself["likeness"] == 1.0


def test_a_face_reference_scores_identity_one_against_itself(client, reference_files):
    alice = reference_files["alice"]
    scores = client.predict(image=handle_file(alice), prompt="a portrait", reference=gallery(alice),
                            api_name="/face_score")  # fmt: skip
    assert scores["identity"] == 1.0 and scores["likeness"] == 1.0


def test_scoring_without_an_image_says_so(client):
    with pytest.raises(Exception, match="Choose an image to score"):
        client.predict(image=None, prompt="x", api_name="/general_score")
