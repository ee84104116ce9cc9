"""Scored comparisons: likeness, adherence and identity per cell, one batched pass, and the suggestion rule."""

from __future__ import annotations

import pytest
from PIL import Image

from pipelines import build_request
from pipelines.plot import score_plot
from pipelines.scoring import suggest
from tests.pipelines.test_face import ALICE


def line(strengths, **curves):
    return [{"strength": s, **{k: v[i] for k, v in curves.items()}} for i, s in enumerate(strengths)]


S5 = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        # likeness rises, adherence falls, both linearly: the curves cross in the middle
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], adherence=[0.30, 0.28, 0.26, 0.24, 0.22]), 0.5),
        # adherence holds until a knee, then collapses: the last strength before the knee
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], adherence=[0.3, 0.3, 0.3, 0.3, 0.1]), 0.75),
        # likeness saturates early: the first strength that has (almost) all of it
        (line(S5, likeness=[0.2, 0.8, 0.82, 0.83, 0.84], adherence=[0.3, 0.29, 0.25, 0.2, 0.1]), 0.25),
        # adherence does not change: it decides nothing; the most likeness
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], adherence=[0.3] * 5), 1.0),
        # no prompt (adherence null): the most likeness
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], adherence=[None] * 5), 1.0),
        # a face: identity decides instead of likeness (likeness would say 1.0 with flat adherence)
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], identity=[0.1, 0.5, 0.9, 0.9, 0.9], adherence=[0.3] * 5), 0.5),
        # ... unless a cell shows no face: then likeness decides
        (line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], identity=[0.1, None, 0.9, 0.9, 0.9], adherence=[0.3] * 5), 1.0),
        # ties go to the lower strength
        (line([0.0, 0.5, 1.0], likeness=[0.1, 0.9, 0.9], adherence=[0.3, 0.3, 0.3]), 0.5),
    ],
)  # fmt: skip
def test_suggestion_rule_on_known_curves(cells, expected):
    assert suggest(cells)["strength"] == expected


def test_suggestion_in_two_dimensions():
    cells = [
        {"strength": s, "extra_strength": e, "likeness": s, "extra_likeness": e, "adherence": 1 - (s + e) / 2}
        for s in (0.0, 0.5, 1.0)
        for e in (0.0, 0.5, 1.0)
    ]
    best = suggest(cells, ["", "extra_"])
    assert (best["strength"], best["extra_strength"], best["index"]) == (0.5, 0.5, 4)
    assert best["measures"] == ["likeness", "extra_likeness", "adherence"]
    assert suggest([]) is None and suggest(line([0, 1], adherence=[None, None])) is None


def test_plots(engines):
    one = score_plot(line(S5, likeness=[0.5, 0.6, 0.7, 0.8, 0.9], adherence=[0.3] * 5), {"strength": 1.0})
    assert one.size == (560, 320)
    cells = [{"strength": s, "extra_strength": e, "likeness": s, "adherence": e} for s in (0, 1) for e in (0, 1)]
    two = score_plot(cells, {"strength": 1, "extra_strength": 0})
    assert two.width > one.width // 2 and two.getpixel((0, 0)) == (255, 255, 255)


def general(presets, **kwargs):
    return build_request(presets["general"]["tiny"], **{"prompt": "a vase", "seed": 5, **kwargs})


def test_cells_score_like_their_pngs_and_a_reference_like_itself(engines, presets, gold, tmp_path):
    engine = engines["tiny"]
    request = general(presets, reference=[gold], strengths="0, 0.5, 1")
    sweep = engine.generate_sweep(request, score=True)
    assert [s["strength"] for s in sweep.scores] == [0.0, 0.5, 1.0]
    assert sweep.metadata["scores"] == sweep.scores and sweep.metadata["suggested"] == sweep.suggested
    for image, scores in zip(sweep.images, sweep.scores, strict=True):
        image.save(tmp_path / "cell.png")
        again, _ = engine.score(Image.open(tmp_path / "cell.png"), request)
        assert abs(again["likeness"] - scores["likeness"]) <= 1e-3
        assert abs(again["adherence"] - scores["adherence"]) <= 1e-3
    itself, _ = engine.score(gold, request)
    assert itself["likeness"] == 1.0


def test_scoring_adds_one_encoder_call_and_loads_the_text_tower_once(families, tiny_root, presets, gold, blue):
    from pipelines import Engine

    engine = Engine(families["tiny"], tiny_root=tiny_root, max_batch=8)
    request = general(presets, reference=[gold], strengths="0, 0.5, 1", extra_mode="style", extra_reference=[blue])
    plain = engine.generate_sweep(request)
    assert engine.scorer.text_loaded is False  # loaded on first use only
    engine.clear_embed_cache()
    scored = engine.generate_sweep(request, score=True)
    assert scored.diagnostics["encoder_calls"] - plain.diagnostics["encoder_calls"] == 1  # cells + both references
    assert engine.scorer.text_loaded is True and engine.counters["score_text_calls"] == 1
    again = engine.generate_sweep(request, score=True)
    assert again.diagnostics["encoder_calls"] == 1  # cached image prompts; one scoring call for the cells
    assert all({"likeness", "extra_likeness", "adherence"} <= set(s) for s in scored.scores)
    assert scored.scores == again.scores


def test_face_identity(engines, presets):
    engine = engines["tiny"]
    request = build_request(presets["face"]["tiny"], prompt="x", reference=[ALICE], strengths="0, 1", seed=1)
    sweep = engine.generate_sweep(request, score=True)
    assert [s["identity"] for s in sweep.scores] == [None, None]  # tiny cells show no drawn face
    assert "No face was found in 2 of 2 cells: identity is null there." in sweep.warnings
    itself, _ = engine.score(ALICE, request)
    assert itself["identity"] == 1.0 and itself["likeness"] == 1.0


def test_empty_prompt_leaves_adherence_null(engines, presets, gold):
    values, notes = engines["tiny"].score(gold, general(presets, prompt="", reference=[gold]))
    assert values["adherence"] is None and "The prompt is empty: adherence is not scored." in notes


def test_a_missing_scorer_leaves_the_comparison_standing(families, tiny_root, presets, gold):
    import dataclasses

    from pipelines import Engine

    family = families["tiny"]
    family = dataclasses.replace(family, scoring=dataclasses.replace(family.scoring, text_encoder="no-such-model"))
    engine = Engine(family, tiny_root=tiny_root, max_batch=8)
    sweep = engine.generate_sweep(general(presets, reference=[gold], strengths="0, 1"), score=True)
    assert len(sweep.images) == 2 and sweep.scores == [] and sweep.suggested is None
    assert any(w.startswith("The cells were not scored: ") and "no-such-model" in w for w in sweep.warnings)
