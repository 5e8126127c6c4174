"""Timing one batch: a streamer that stamps the prompt, the first generated token and the end of generation.

The backend calls the streamer (transformers' ``BaseStreamer`` protocol): ``put`` once with the prompt ids, once per
generation step, then ``end``. On CUDA every stamp that marks a phase boundary waits for the device first, so a
stamp is when the work was done, not when it was queued.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class TimingStreamer:
    """Records when prefill starts, when the first new token exists, and when generation ends."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.synchronize = synchronize or (lambda: None)
        self.prompt_at: float | None = None
        self.first_token_at: float | None = None
        self.end_at: float | None = None
        self.steps = 0  # generation steps (puts after the prompt)

    def stamp(self) -> float:
        self.synchronize()
        return time.perf_counter()

    def put(self, value: Any) -> None:
        if self.prompt_at is None:
            self.prompt_at = self.stamp()
            return
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = self.stamp()

    def end(self) -> None:
        self.end_at = self.stamp()


@dataclass
class Stats:
    """Summary of a list of durations (seconds) or any other positive quantity."""

    mean: float
    p50: float
    p90: float
    p99: float
    stdev: float
    min: float
    max: float
    n: int
    cv: float  # coefficient of variation: stdev / mean (0 for a single value)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Stats | None:
    """Stats of ``values`` (sample stdev, n-1); None when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    stdev = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.fmean(values)
    return Stats(mean, percentile(values, 50), percentile(values, 90), percentile(values, 99), stdev, min(values),
                 max(values), len(values), stdev / mean if mean else 0.0)
