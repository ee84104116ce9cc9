"""Stop: a running job leaves between two denoising steps, from the engine's callback, an API client's cancel
(gradio_client `Job.cancel`) and an MCP client's cancellation; the lock is free at once, nothing of the job is kept,
and the next job runs."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import numpy as np
import pytest
from gradio_client import Client

from pipelines import build_request
from pipelines.errors import StoppedError
from tests.conftest import pixels
from ui.stop import JOBS

STEP_SECONDS = 0.05


@contextmanager
def slow_steps(engine):
    """Each denoiser call takes at least STEP_SECONDS, so a job is caught in the middle of its steps."""
    engine.load()
    handle = engine.pipe.unet.register_forward_pre_hook(lambda *_: time.sleep(STEP_SECONDS))
    try:
        yield
    finally:
        handle.remove()


def wait_for(condition, seconds: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_the_engine_leaves_between_steps_and_keeps_nothing(engines, presets, gold):
    engine = engines["tiny"]
    preset = presets["general"]["tiny"]
    req = build_request(preset, prompt="a vase", reference=[gold], strength=0.6, seed=2, steps=8)
    before = pixels(engine.generate(req).image)

    def stop_at_3(done: int, total: int) -> None:
        if done == 3:
            raise StoppedError(done, total)

    calls = engine.counters["unet_calls"]
    with pytest.raises(StoppedError, match=r"^Stopped after step 3 of 8\.$"):
        engine.generate(req, on_step=stop_at_3)
    assert engine.counters["unet_calls"] - calls == 3  # no step after the stop
    assert engine.lock.acquire(blocking=False)  # the lock came back with the stop
    engine.lock.release()
    with pytest.raises(StoppedError, match=r"^Stopped after step 3 of 8\.$"):  # a sweep: every cell at once
        engine.generate_sweep(req.swept([0.0, 0.5, 1.0]), on_step=stop_at_3)
    assert np.array_equal(pixels(engine.generate(req).image), before)  # nothing of it stayed on the model


def test_an_api_cancel_stops_the_running_job_and_the_next_one_runs(app_url, engines):
    engine = engines["tiny"]
    stopped = JOBS.counters["stopped"]
    with slow_steps(engine):
        client = Client(app_url, verbose=False)
        calls = engine.counters["unet_calls"]
        job = client.submit(prompt="a vase", steps=50, seed=1, api_name="/general")
        wait_for(lambda: engine.counters["unet_calls"] - calls >= 4, what="the job to start")
        job.cancel()
        wait_for(lambda: JOBS.counters["stopped"] > stopped, 10, "the job to be stopped")
        wait_for(lambda: not engine.lock.locked(), 5 * STEP_SECONDS + 5, "the lock")
        ran = engine.counters["unet_calls"] - calls
        assert ran < 2 * 50  # it left long before its 50 steps (x2: guidance batches one call per step)
        time.sleep(10 * STEP_SECONDS)
        assert engine.counters["unet_calls"] - calls == ran  # and did not go on
        started = time.monotonic()
        path, *_ = client.predict(prompt="a vase", steps=2, seed=1, api_name="/general")
        assert path and time.monotonic() - started < 30  # the next job ran at once


def test_an_mcp_cancellation_stops_its_job(engines, caplog):
    """`notifications/cancelled` for a running tool call (in its session, as MCP clients send it); the session lives
    on (mcp answered the cancelled call already: answering it again crashed the session)."""
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamablehttp_client

    import app

    engine = engines["tiny"]
    demo = app.create_app(engine)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True,
                            **app.launch_options())  # fmt: skip
    stopped = JOBS.counters["stopped"]
    try:
        with slow_steps(engine):
            calls = engine.counters["unet_calls"]

            async def scenario() -> bool:
                async with (
                    streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    task = asyncio.create_task(session.call_tool("general", {"prompt": "x", "steps": 50, "seed": 3}))
                    for _ in range(600):
                        if engine.counters["unet_calls"] - calls >= 4:
                            break
                        await asyncio.sleep(0.05)
                    request_id = session._request_id - 1  # the call's id (the client numbers its requests)
                    cancel = types.CancelledNotification(params=types.CancelledNotificationParams(
                        requestId=request_id, reason="the person pressed stop"))  # fmt: skip
                    await session.send_notification(types.ClientNotification(cancel))
                    for _ in range(400):
                        if JOBS.counters["stopped"] > stopped:
                            break
                        await asyncio.sleep(0.05)
                    task.cancel()
                    return JOBS.counters["stopped"] > stopped

            assert asyncio.run(scenario())
            wait_for(lambda: not engine.lock.locked(), 10, "the lock")
            assert engine.counters["unet_calls"] - calls < 2 * 50
            time.sleep(0.5)
            assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    finally:
        demo.close()


def test_stop_reaches_only_the_visitor_that_asks():
    with JOBS.running("visitor-a") as mine, JOBS.running("visitor-b") as theirs:
        assert len(JOBS.stop("visitor-a")) == 1 and JOBS.stop(None) == [] and JOBS.stop("") == []
        assert mine.stopped.is_set() and not theirs.stopped.is_set()
    assert JOBS.held("visitor-a") == 0
