"""Passes: which cells of a request share a denoising pass, how many steps each runs, and how many images a sweep
puts in one pass, chosen by measuring this device rather than by a constant.

Cells share a pass when everything but their strengths is equal; a start image's strength decides the first step,
so each start strength is its own group (`passes`). Each group is split into batches:

A pass of `b` images costs `t(b)` seconds. On a GPU `t(b)` grows slower than `b` up to the point where the device
is full; on a CPU it grows about linearly, and past the caches it can grow faster (a batch of 10 rows measured
slower than five batches of 2 at 256 px). The planner keeps `t(b)` for a few batch sizes per key (size, dtype,
guidance, base), measured *outside* visitors' requests (the engine's warm-up, or when it is idle: measuring inside a
request made the first sweep at a size 1.84x its one-pass time). A sweep is one pass of all its images unless the
curve says a split is measurably faster (by more than `WORSE`) or a larger batch did not fit in memory; a key not
measured yet gets one pass. Batch 1 is always measured, so a split is never predicted slower than one image at a
time.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError

CANDIDATES = (1, 2, 4, 8, 16)  # batch sizes measured, in order (images, before guidance doubles the UNet batch)
WORSE = 1.05  # stop measuring larger batches once the time per image is this much worse than the best so far
IDLE_S = 2.0  # the engine counts as idle this long after its last use (then it measures new sizes' batch curves)
log = logging.getLogger(__name__)
Cell = tuple[float, ...]  # one strength per declared image prompt


@dataclass(frozen=True)
class Pass:
    """One denoising pass: the cells it renders (indices into the request's cells) and where it starts."""

    members: list[int]
    start: float | None  # a start image's strength (None: text to image, from the first step)
    steps: int  # the denoising steps it runs


def steps_run(steps: int, start: float | None) -> int:
    """The denoising steps a pass runs: all of them, or (start image) the last `1 - strength` of them, as diffusers'
    img2img pipelines count them."""
    if not start:
        return steps
    return min(int(steps * (1.0 - start)), steps)


def step_window(start_at: float, stop_at: float, steps: int) -> tuple[int, int]:
    """The steps [first, stop) on which an image prompt acts: step i acts when start_at <= i / steps < stop_at."""
    return math.ceil(start_at * steps), math.ceil(stop_at * steps)


def passes(
    cells: Sequence[Cell],
    steps: int,
    start_of: Callable[[Cell], float | None],
    chunk_sizes: Callable[[int], tuple[list[int], str]],
) -> tuple[list[Pass], str]:
    """The cells in denoising passes, and how their batch sizes were chosen. Cells that share a start strength
    (`start_of`) share passes; each group is split into batches by `chunk_sizes(n)`."""
    groups: dict[float | None, list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(start_of(cell), []).append(i)
    out, choices = [], []
    for start, members in groups.items():
        run = steps_run(steps, start)
        if start and run < 1:
            raise InvalidRequestError(
                "slots",
                f"A start strength of {start:g} keeps the start image as it is with {steps} steps (no step is left to "
                f"run): lower it or use more steps.",
            )
        sizes, choice = chunk_sizes(len(members))
        choices.append(choice)
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        out += [Pass(members[a:b], start, run) for a, b in itertools.pairwise(bounds)]
    return out, choices[0] if choices else "fixed"


def chunk_sizes(
    max_batch: int | None, planner: BatchPlanner, key: Hashable, n: int, measure_later: Callable[[], None] | None
) -> tuple[list[int], str]:
    """How many images each pass of a sweep of `n` holds, and how that was chosen (for the diagnostics).

    A fixed `max_batch` splits evenly; otherwise `planner` plans from the curve measured for `key` (size, dtype,
    guidance, base), never inside the request: a key not measured yet gets one pass, and `measure_later()` asks for
    it to be measured when the engine is next idle (None: never, as on ZeroGPU).
    """
    if max_batch:
        return [min(max_batch, n - i) for i in range(0, n, max_batch)], "fixed"
    known = planner.calibrated(key, n)
    if not known and measure_later is not None and n > 1:  # one image has nothing to plan
        measure_later()
    return planner.chunks(key, n), "measured" if known else "one pass (this size is measured when idle)"


def step_timer(pipe: Any, call: dict, settings: Any, on_oom: Callable[[], None]) -> Callable[[int], float]:
    """`measure(batch)`: seconds of one denoising step of `batch` text-only images at `settings`' size, through the
    stock pipeline's call with `call` (the text and guidance keywords the architecture gives: `stock_call`), or
    `math.inf` when it does not fit, after `on_oom()`; the first call warms up with one image first, so first-use
    allocations are not the batch's."""
    import torch

    run = dict(call, width=settings.width, height=settings.height, num_inference_steps=1, output_type="latent")
    warmed: list[int] = []

    def measure(batch: int) -> float:
        try:
            if not warmed:
                pipe(**run, num_images_per_prompt=1)
            start = time.perf_counter()
            pipe(**run, num_images_per_prompt=batch)
            seconds = time.perf_counter() - start
        except torch.OutOfMemoryError:
            on_oom()
            seconds = math.inf  # does not fit: never chosen
        warmed.append(batch)
        return seconds

    return measure


class IdleWork:
    """Batch curves to measure once nobody has used the engine for `IDLE_S`, in one background thread (a visitor
    who arrives meanwhile waits for at most one timed step per batch size).

    `lock` is the engine's (its `locked()` and `released_at` say when it was last used); `measure(request, n)`
    measures one wanted size, `still_wanted(request)` says whether it can be measured without swapping a base in.
    """

    def __init__(self, lock: Any, measure: Callable[[Any, int], Any], still_wanted: Callable[[Any], bool]) -> None:
        self.lock, self.measure, self.still_wanted = lock, measure, still_wanted
        self.wanted: dict[Hashable, tuple[Any, int]] = {}
        self.thread: threading.Thread | None = None
        self._guard = threading.Lock()
        _RUNNING.add(self)

    def stop(self, timeout: float = 30.0) -> None:
        """Measure nothing more, and wait for a measurement under way (the process exits: a thread still inside
        torch while the interpreter shuts down aborts it, "terminate called without an active exception")."""
        with self._guard:
            self.wanted.clear()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def add(self, key: Hashable, request: Any, n: int) -> None:
        with self._guard:
            self.wanted[key] = (request, n)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="calibrate", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self._guard:
                if not self.wanted:
                    self.thread = None
                    return
                key, (request, n) = next(iter(self.wanted.items()))
            while self.lock.locked() or time.monotonic() - self.lock.released_at < IDLE_S:
                time.sleep(IDLE_S / 4)
            try:
                with self._guard:
                    wanted = key in self.wanted  # not when stopped meanwhile
                if wanted and self.still_wanted(request):
                    self.measure(request, n)
            except Exception:  # a measurement must never take the server down; the plan stays one pass
                log.exception("measuring the batch curve failed")
            with self._guard:
                self.wanted.pop(key, None)


_RUNNING: weakref.WeakSet[IdleWork] = weakref.WeakSet()


@atexit.register
def _stop_idle_work() -> None:
    for work in list(_RUNNING):
        work.stop()


class BatchPlanner:
    """Chunk sizes for sweeps from measured pass times, cached per key (width, height, dtype, ...).

    `curve(key, up_to, measure)` measures: `measure(batch)` is the seconds one pass of `batch` images takes at that
    key (the engine times one denoising step; `math.inf` when the batch does not fit in memory), for the points not
    measured yet. `chunks(key, n)` plans from what was measured and never measures. Thread-safe.
    """

    def __init__(self, candidates: Sequence[int] = CANDIDATES) -> None:
        self.candidates = tuple(candidates)
        self.curves: dict[Hashable, dict[int, float]] = {}  # key -> {batch: seconds per pass}
        self.covered: dict[Hashable, int] = {}  # key -> the largest sweep its curve was measured for
        self._lock = threading.Lock()

    def calibrated(self, key: Hashable, n: int) -> bool:
        """Whether the curve for `key` has been measured far enough to plan a sweep of `n` images."""
        with self._lock:
            return self.covered.get(key, 0) >= min(n, self.candidates[-1])

    def curve(self, key: Hashable, up_to: int, measure: Callable[[int], float]) -> dict[int, float]:
        """Measured {batch: seconds per pass} for `key`, measuring (once) the batch sizes up to `up_to`.

        Measuring stops early when a larger batch is clearly worse per image than the best so far: the curve
        rarely turns back down, and every measurement costs a pass.
        """
        with self._lock:
            curve = self.curves.setdefault(key, {})
            reach = min(max(1, up_to), self.candidates[-1])  # the largest sweep this curve now plans for
            for batch in self.candidates:
                if batch > max(1, up_to):
                    break
                if batch not in curve:
                    curve[batch] = float(measure(batch))
                best = min(t / b for b, t in curve.items())
                if curve[batch] / batch > best * WORSE or not math.isfinite(curve[batch]):
                    reach = self.candidates[-1]  # stopped: larger batches are worse still, for any sweep
                    break
            self.covered[key] = max(self.covered.get(key, 0), reach)
            return {b: t for b, t in curve.items() if math.isfinite(t)}

    def chunks(self, key: Hashable, n: int) -> list[int]:
        """The sizes of the passes for a sweep of `n` images, from what has been measured for `key` (no measuring
        here): one pass unless a split is predicted faster by more than `WORSE`, or a batch that large did not fit."""
        if n < 1:
            raise ValueError(f"a sweep needs at least one image, got {n}")
        with self._lock:
            raw = dict(self.curves.get(key, {}))
        curve = {b: t for b, t in raw.items() if math.isfinite(t)}
        too_big = min((b for b, t in raw.items() if not math.isfinite(t)), default=math.inf)
        if n == 1 or 1 not in raw:  # nothing to choose, or not measured yet: one pass
            return [n]
        if 1 not in curve:  # not even one image fits: the render itself will say so
            return [1] * n
        best_plan: list[int] | None = None
        best_cost = math.inf
        for batch in sorted({b for b in curve if b < n} | {n}, reverse=True):  # fewest passes first
            if batch >= too_big:
                continue
            full, rest = divmod(n, batch)
            plan = [batch] * full + ([rest] if rest else [])
            cost = sum(predict(curve, b) for b in plan)
            if cost * WORSE < best_cost:
                best_plan, best_cost = plan, cost
        return best_plan or [1] * n


def predict(curve: dict[int, float], batch: int) -> float:
    """Seconds for one pass of `batch` images: measured, or interpolated linearly between measured sizes."""
    if batch in curve:
        return curve[batch]
    sizes = sorted(curve)
    lower = max((b for b in sizes if b < batch), default=sizes[0])
    upper = min((b for b in sizes if b > batch), default=None)
    if upper is None:  # beyond the measured range: the last measured time per image
        return curve[lower] / lower * batch
    share = (batch - lower) / (upper - lower)
    return curve[lower] + share * (curve[upper] - curve[lower])
