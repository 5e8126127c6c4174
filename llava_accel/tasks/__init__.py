"""Datasets as data: samples, task loading, and each task's native metric.

``load_task(name, ...)`` returns ``Sample``s tagged with their task; ``native_metric(samples, predictions)``
scores predictions with the metric of the task the samples came from (WER, common to all tasks, lives in
``llava_accel.metrics``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .sample import Sample
from .synthetic import GENERATORS as SYNTHETIC_TASKS, synthetic_samples

# task name -> metric(samples, predictions) -> {metric name: value}
NATIVE_METRICS: dict[str, Callable[[Sequence[Sample], Sequence[str]], dict[str, float]]] = {}


def load_task(name: str, split: str | None = None, limit: int | None = None, source: str | None = None,
              seed: int = 0) -> list[Sample]:
    """Samples of task ``name`` (a synthetic task for now), each tagged with ``sample.task = name``."""
    if name in SYNTHETIC_TASKS:
        return synthetic_samples(name, limit if limit is not None else 16, seed=seed)
    raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(sorted(SYNTHETIC_TASKS))}")


def native_metric(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """The native metric of the samples' task ({} when they mix tasks or their task has none registered)."""
    tasks = {s.task for s in samples}
    if len(tasks) != 1 or (task := tasks.pop()) not in NATIVE_METRICS:
        return {}
    return NATIVE_METRICS[task](samples, predictions)


__all__ = ["NATIVE_METRICS", "SYNTHETIC_TASKS", "Sample", "load_task", "native_metric", "synthetic_samples"]
