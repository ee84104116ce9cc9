"""Batch sizes chosen by measurement: synthetic timing curves with known answers, and the engine's auto mode."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pipelines import Engine, build_request
from pipelines.plan import BatchPlanner, predict
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
        # GPU-like: a pass costs little more with more images: the whole sweep in one pass.
        ({1: 1.0, 2: 1.05, 4: 1.2, 8: 1.6, 16: 2.8}, 5, [5]),
        ({1: 1.0, 2: 1.05, 4: 1.2, 8: 1.6, 16: 2.8}, 10, [10]),
        # Linear (the 2-core CPU at small sizes): a split gains nothing measurable, so one pass.
        ({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}, 5, [5]),
        # CPU-like: time grows with the images: batching gains nothing, and one pass of 2 is as good as two of 1.
        ({1: 1.0, 2: 2.0, 4: 4.4, 8: 9.0, 16: 18.0}, 5, [2, 2, 1]),
        # Past the caches a big batch is slower per image (seen at 256 px on CPU): the planner stays small.
        ({1: 1.0, 2: 1.6, 4: 4.0, 8: 9.5, 16: 20.0}, 10, [2, 2, 2, 2, 2]),
    ],
)
def test_the_plan_is_the_fastest_split(curve, n, plan):
    planner, _, measure = planner_for(curve)
    assert planner.chunks("key", n) == [n]  # not measured yet: one pass, and nothing is measured for it
    planner.curve("key", n, measure)
    chosen = planner.chunks("key", n)
    assert chosen == plan and sum(chosen) == n
    measured = planner.curves["key"]
    assert sum(predict(measured, b) for b in chosen) <= n * curve[1]  # never slower than one image at a time


def test_measuring_stops_when_bigger_batches_get_worse_and_is_cached():
    key = (64, 64, "float32", True)
    planner, asked, measure = planner_for({1: 1.0, 2: 2.5, 4: 5.0, 8: 10.0, 16: 20.0})
    planner.curve(key, 8, measure)
    assert planner.chunks(key, 8) == [1] * 8 and planner.calibrated(key, 16)
    assert asked == [1, 2]  # 2 was worse per image than 1: 4, 8 and 16 were never run
    planner.curve(key, 8, measure)
    assert asked == [1, 2]  # the same size again: nothing measured
    assert planner.chunks(key, 1) == [1]  # one image: nothing to choose


def test_a_batch_that_does_not_fit_is_never_chosen():
    planner, _, measure = planner_for({1: 1.0, 2: 1.1, 4: math.inf, 8: math.inf, 16: math.inf})
    planner.curve("gpu", 6, measure)
    assert planner.chunks("gpu", 6) == [2, 2, 2]


def test_predict_interpolates_between_measured_sizes():
    assert predict({1: 1.0, 4: 2.5}, 2) == pytest.approx(1.5)
    assert predict({1: 1.0, 4: 2.0}, 8) == pytest.approx(4.0)  # beyond: the last time per image


def test_the_engine_measures_outside_requests_and_every_cell_still_equals_its_single_render(
    families, tiny_root, presets, gold
):
    """max_batch None: the first sweep at a size is one pass, with nothing measured inside it; the engine measures
    that size when idle, and later sweeps plan from the curve. Cells equal single renders either way."""
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    preset = presets["general"]["tiny"]
    request = build_request(preset, prompt="a cat", seed=3, references=[gold], steps=2)
    strengths = [0.0, 0.3, 0.6, 0.9, 1.2]
    first = engine.generate_sweep(request.swept(strengths))
    d = first.diagnostics
    assert d["batch_plan"] == "5" and d["batch_choice"].startswith("one pass")
    assert d["unet_calls"] == request.settings.steps  # one pass, no measuring pass in the request
    key = engine._plan_key(request)
    for _ in range(200):  # the idle measurement runs in the background once the engine is quiet
        if engine.planner.calibrated(key, 5):
            break
        time.sleep(0.05)
    assert engine.planner.calibrated(key, 5) and 1 in engine.planner.curves[key]
    again = engine.generate_sweep(request.swept(strengths))
    assert again.diagnostics["batch_choice"] == "measured"
    plan = [int(b) for b in again.diagnostics["batch_plan"].split("+")]
    assert sum(plan) == 5 and again.diagnostics["batches"] == len(plan)
    assert again.diagnostics["unet_calls"] == request.settings.steps * len(plan)
    for strength, cell in zip(strengths, first.images, strict=True):
        single = engine.generate(build_request(preset, prompt="a cat", seed=3, references=[gold], steps=2,
                                               strength=strength)).image  # fmt: skip
        assert np.abs(pixels(single) - pixels(cell)).max() <= 2


def test_calibrate_measures_the_default_comparison(families, tiny_root, presets):
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    request = build_request(presets["general"]["tiny"], prompt="", seed=0)
    calls = engine.counters["unet_calls"]
    curve = engine.calibrate(request, 5)
    assert 1 in curve and engine.planner.calibrated(engine._plan_key(request), 5)
    assert engine.counters["unet_calls"] == calls  # measuring passes are nobody's UNet calls


def test_without_idle_measuring_a_sweep_stays_one_pass(families, tiny_root, presets, gold):
    """Where the device may be used only inside a request (ZeroGPU), nothing is measured in the background."""
    engine = Engine(families["tiny"], tiny_root=tiny_root, measure_when_idle=False)
    request = build_request(presets["general"]["tiny"], prompt="a cat", seed=3, references=[gold], steps=1)
    sweep = engine.generate_sweep(request.swept([0.0, 1.0]))
    time.sleep(3 * 2.0)  # longer than the engine's idle wait
    assert sweep.diagnostics["batch_plan"] == "2" and engine.idle.thread is None
    assert engine.planner.curves == {}


def test_a_single_render_measures_nothing(families, tiny_root, presets, gold):
    """One image has nothing to plan: no background measuring is asked for (a measurement still running when the
    process exits would abort it)."""
    engine = Engine(families["tiny"], tiny_root=tiny_root)
    request = build_request(presets["general"]["tiny"], prompt="a cat", seed=3, references=[gold], steps=1)
    engine.generate(request)
    assert engine.idle.thread is None and engine.idle.wanted == {} and engine.planner.curves == {}


def test_stopped_idle_work_measures_nothing():
    from pipelines.device import ComputeLock
    from pipelines.plan import IdleWork

    measured, lock = [], ComputeLock(1)
    lock.released_at = time.monotonic()  # just used: the thread waits for a quiet moment
    work = IdleWork(lock, lambda request, n: measured.append(n), lambda request: True)
    work.add("key", object(), 5)
    assert work.thread is not None
    work.stop()  # before the engine has been idle long enough
    assert not work.thread or not work.thread.is_alive()
    assert measured == [] and work.wanted == {}
