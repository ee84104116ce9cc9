"""How many images a sweep puts in one denoising pass, chosen by measuring this device rather than by a constant.

A pass of `b` images costs `t(b)` seconds. On a GPU `t(b)` grows slower than `b` up to the point where the device
is full; on a CPU it grows about linearly, and past the caches it can grow faster (a batch of 10 rows measured
slower than five batches of 2 at 256 px). The planner measures `t(b)` for a few batch sizes at the request's size
(once per size and dtype), then splits a sweep of `n` images into the chunks that minimise the predicted total. Batch
1 is always a candidate, so a sweep is never predicted slower than its cells rendered one at a time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Sequence

CANDIDATES = (1, 2, 4, 8, 16)  # batch sizes measured, in order (images, before guidance doubles the UNet batch)
WORSE = 1.05  # stop measuring larger batches once the time per image is this much worse than the best so far


class BatchPlanner:
    """Chunk sizes for sweeps from measured pass times, cached per key (width, height, dtype, ...).

    The caller passes `measure(batch)`, the seconds one pass of `batch` images takes at that key (the engine times
    one denoising step; `math.inf` when the batch does not fit in memory), for the points not measured yet.
    Thread-safe: the engine calls it under its own lock, tests call it directly.
    """

    def __init__(self, candidates: Sequence[int] = CANDIDATES) -> None:
        self.candidates = tuple(candidates)
        self.curves: dict[Hashable, dict[int, float]] = {}  # key -> {batch: seconds per pass}
        self._lock = threading.Lock()

    def curve(self, key: Hashable, up_to: int, measure: Callable[[int], float]) -> dict[int, float]:
        """Measured {batch: seconds per pass} for `key`, measuring (once) the batch sizes up to `up_to`.

        Measuring stops early when a larger batch is clearly worse per image than the best so far: the curve
        rarely turns back down, and every measurement costs a pass.
        """
        with self._lock:
            curve = self.curves.setdefault(key, {})
            for batch in self.candidates:
                if batch > max(1, up_to):
                    break
                if batch not in curve:
                    curve[batch] = float(measure(batch))
                best = min(t / b for b, t in curve.items())
                if curve[batch] / batch > best * WORSE:
                    break
            return {b: t for b, t in curve.items() if math.isfinite(t)}

    def chunks(self, key: Hashable, n: int, measure: Callable[[int], float]) -> list[int]:
        """The sizes of the passes for a sweep of `n` images: the split with the smallest predicted total time."""
        if n < 1:
            raise ValueError(f"a sweep needs at least one image, got {n}")
        if n == 1:
            return [1]  # nothing to choose: no measuring
        curve = self.curve(key, n, measure)
        if 1 not in curve:  # not even one image fits: the render itself will say so
            return [1] * n
        best_plan, best_cost = [1] * n, n * curve[1]
        for batch in curve:
            full, rest = divmod(n, batch)
            plan = [batch] * full + ([rest] if rest else [])
            cost = sum(predict(curve, b) for b in plan)
            if cost < best_cost - 1e-12 or (math.isclose(cost, best_cost) and len(plan) < len(best_plan)):
                best_plan, best_cost = plan, cost
        return best_plan


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
