"""Batch sizes chosen by measurement: synthetic timing curves with known answers, and the engine's auto mode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import Engine, build_request
from pipelines.batching import BatchPlanner, predict
from tests.conftest import pixels


def planner_for(seconds: dict[int, float]) -> tuple:
    asked: list[int] = []

    def measure(batch: int) -> float:
        asked.append(batch)
        return seconds[batch]

    planner = BatchPlanner()
    return planner, asked, measure


@pytest.mark.parametrize(
    ("curve", "n", "plan"),
    [
        # GPU-like: a pass costs little more with more images: as few passes as possible.
        ({1: 1.0, 2: 1.05, 4: 1.2, 8: 1.6, 16: 2.8}, 5, [4, 1]),
        ({1: 1.0, 2: 1.05, 4: 1.2, 8: 1.6, 16: 2.8}, 10, [8, 2]),
        # CPU-like: time grows with the images: batching gains nothing, and one pass of 2 is as good as two of 1.
        ({1: 1.0, 2: 2.0, 4: 4.4, 8: 9.0, 16: 18.0}, 5, [2, 2, 1]),
        # Past the caches a big batch is slower per image (seen at 256 px on CPU): the planner stays small.
        ({1: 1.0, 2: 1.6, 4: 4.0, 8: 9.5, 16: 20.0}, 10, [2, 2, 2, 2, 2]),
    ],
)
def test_the_plan_is_the_fastest_split(curve, n, plan):
    planner, _, measure = planner_for(curve)
    chosen = planner.chunks("key", n, measure)
    assert chosen == plan and sum(chosen) == n
    measured = planner.curves["key"]
    assert sum(predict(measured, b) for b in chosen) <= n * curve[1]  # never slower than one image at a time


def test_measuring_stops_when_bigger_batches_get_worse_and_is_cached():
    planner, asked, measure = planner_for({1: 1.0, 2: 2.5, 4: 5.0, 8: 10.0, 16: 20.0})
    assert planner.chunks((64, 64, "float32", True), 8, measure) == [1] * 8
    assert asked == [1, 2]  # 2 was worse per image than 1: 4, 8 and 16 were never run
    planner.chunks((64, 64, "float32", True), 8, measure)
    assert asked == [1, 2]  # the same size again: nothing measured
    assert planner.chunks((64, 64, "float32", True), 1, measure) == [1]  # one image: nothing to choose


def test_a_batch_that_does_not_fit_is_never_chosen():
    planner, _, measure = planner_for({1: 1.0, 2: 1.1, 4: math.inf, 8: math.inf, 16: math.inf})
    assert planner.chunks("gpu", 6, measure) == [2, 2, 2]


def test_predict_interpolates_between_measured_sizes():
    assert predict({1: 1.0, 4: 2.5}, 2) == pytest.approx(1.5)
    assert predict({1: 1.0, 4: 2.0}, 8) == pytest.approx(4.0)  # beyond: the last time per image


def test_the_engine_measures_once_and_every_cell_still_equals_its_single_render(families, tiny_root, presets, gold):
    engine = Engine(families["tiny"], tiny_root=tiny_root)  # max_batch None: measured
    preset = presets["general"]["tiny"]
    request = build_request(preset, prompt="a cat", seed=3, references=[gold], steps=2)
    strengths = [0.0, 0.3, 0.6, 0.9, 1.2]
    first = engine.generate_sweep(request, strengths)
    again = engine.generate_sweep(request, strengths)
    assert first.diagnostics["batch_choice"] == "measured now" and again.diagnostics["batch_choice"] == "measured"
    plan = [int(b) for b in first.diagnostics["batch_plan"].split("+")]
    assert sum(plan) == 5 and first.diagnostics["batches"] == len(plan)
    assert first.diagnostics["unet_calls"] == request.settings.steps * len(
        plan
    )  # measuring passes are not the request's
    for strength, cell in zip(strengths, first.images, strict=True):
        single = engine.generate(build_request(preset, prompt="a cat", seed=3, references=[gold], steps=2,
                                               strength=strength)).image  # fmt: skip
        assert np.abs(pixels(single) - pixels(cell)).max() <= 2
