"""Stop: every running job can be stopped between two denoising steps, from the page, the API or MCP.

A job registers while it runs (`Jobs.running`, entered by the serving boundary) under its visitor's keys: the Gradio
session for the page and the API, the MCP call for MCP. Its step callback (`check`) raises `StoppedError` once the
job is stopped, so the engine leaves the pass between two steps, releases its lock and keeps nothing; the person
reads "Stopped after step 6 of 50.". What stops a job:

- the page's Stop button (its visitor's running jobs; it runs outside the queue, so it never waits behind them);
- an API client's cancel (gradio_client `Job.cancel()`): Gradio's `POST .../cancel` for an event that is running
  stops that visitor's running job, through `cancel_middleware` (Gradio itself cannot interrupt a function that
  runs in a thread: without this the job would run to its end);
- an MCP client's `notifications/cancelled` (ui/mcp.py stops the call's job when its handler is cancelled).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import StoppedError


@dataclass
class Job:
    keys: tuple[str, ...]
    stopped: threading.Event = field(default_factory=threading.Event)


class Jobs:
    """The running jobs by visitor key; `stop(key)` marks every running job under that key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[Job] = []
        self.counters = {"stopped": 0}

    @contextlib.contextmanager
    def running(self, *keys: str | None) -> Iterator[Job]:
        job = Job(tuple(k for k in keys if k))
        with self._lock:
            self._running.append(job)
        token = _CURRENT.set(job)
        try:
            yield job
        finally:
            _CURRENT.reset(token)
            with self._lock:
                self._running.remove(job)

    def stop(self, key: str | None) -> list[Job]:
        """Stop every job running under `key` now (they leave at their next step); the jobs stopped."""
        if not key:
            return []
        with self._lock:
            jobs = [j for j in self._running if key in j.keys and not j.stopped.is_set()]
        for job in jobs:
            job.stopped.set()
        self.counters["stopped"] += len(jobs)
        return jobs

    def held(self, key: str) -> int:
        with self._lock:
            return sum(key in j.keys for j in self._running)


JOBS = Jobs()
_CURRENT: ContextVar[Job | None] = ContextVar("running_job", default=None)


def check(done: int, total: int) -> None:
    """Between two steps: leave the pass if the current job was stopped."""
    job = _CURRENT.get()
    if job is not None and job.stopped.is_set():
        raise StoppedError(done, total)


def stopping(on_step: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
    """`on_step` (progress, or nothing) with the stop check after it."""

    def step(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        check(done, total)

    return step


def cancel_middleware() -> Any:
    """A Starlette `Middleware` entry that stops the running job of a Gradio `POST .../cancel`."""
    from starlette.middleware import Middleware

    return Middleware(_CancelWatch)


class _CancelWatch:
    """Pure ASGI middleware: reads the small JSON body of `POST .../cancel`, stops the job if its event is running
    under the session that asks, and hands the same body on to Gradio."""

    MAX_BODY = 4096

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/cancel"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more and size <= self.MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message)
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if not more:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                body = json.loads(b"".join(m.get("body", b"") for m in chunks))
                self._stop(scope, str(body.get("session_hash")), str(body.get("event_id")))
        return await self.app(scope, _replay(chunks, receive), send)

    def _stop(self, scope: dict, session: str, event_id: str) -> None:
        """Stop `session`'s running job if `event_id` is one of its events running now (Gradio's queue)."""
        queue = scope["app"].get_blocks()._queue
        for job in queue.active_jobs:
            for event in job or ():
                if getattr(event, "_id", None) == event_id and getattr(event, "session_hash", None) == session:
                    JOBS.stop(session)
                    return


def _replay(messages: list[dict], then: Callable[..., Any] | None = None) -> Callable[..., Any]:
    pending = list(messages)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
