"""Datasets as data: samples, task loading, and each task's native metric.

``load_task(name, ...)`` returns ``Sample``s tagged with their task; ``native_metric(samples, predictions)``
scores predictions with the metric of the task the samples came from (WER, common to all tasks, lives in
``llava_accel.metrics``). The named tasks (``TASKS``: coco, scienceqa, textvqa) are ``TaskSpec`` data; their synthetic
twins share their prompts and metrics. See docs/tasks.md.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from ..checks import optional, positive_int
from ..errors import DatasetError
from ..metrics.choice import choice_metric
from ..metrics.caption import caption_metric
from ..metrics.ptb import PTB_PYTHON
from ..metrics.vqa import vqa_metric
from .sample import Sample, SampleSet
from .sources import load_samples, resolve_source
from .specs import SYNTHETIC_KINDS, TASKS, TaskSpec, task_kind, task_max_new_tokens
from .synthetic import GENERATORS as SYNTHETIC_TASKS, synthetic_samples

Metric = Callable[[Sequence[Sample], Sequence[str]], dict[str, float]]
KIND_METRICS: dict[str, Metric] = {"caption": caption_metric, "vqa": vqa_metric, "choice": choice_metric}
# task name -> metric(samples, predictions) -> {metric name: value}; plugins may register more
NATIVE_METRICS: dict[str, Metric] = {name: KIND_METRICS[task_kind(name)] for name in [*TASKS, *SYNTHETIC_KINDS]}


def load_task(name: str, split: str | None = None, limit: int | None = None, source: str | os.PathLike | None = None,
              seed: int = 0) -> SampleSet:
    """Samples of task ``name``, each tagged with ``sample.task = name``.

    Named tasks read ``source`` (default: the task's hub id; or a save_to_disk folder, or a plain folder with
    samples.jsonl), the first ``limit`` rows of ``split`` (default: the split lmms-eval evaluates). Synthetic tasks
    are drawn from ``seed`` (``limit`` defaults to 16 there); ``seed`` does not affect named tasks.
    """
    check_task(name, split, source)
    optional(positive_int, limit, "limit")
    if name in SYNTHETIC_TASKS:
        return SampleSet(synthetic_samples(name, limit if limit is not None else 16, seed=seed), source="synthetic")
    return load_samples(TASKS[name], split=split, limit=limit, source=source)


def check_task(name: str, split: str | None = None, source: str | os.PathLike | None = None) -> None:
    """What ``load_task`` can tell without reading any data: a known task, a source that is a dataset, no split or
    source for a synthetic task (it is generated); else a one-line ``DatasetError``."""
    if name in SYNTHETIC_TASKS:
        given = [f"{k}={v!r}" for k, v in (("split", split), ("source", source)) if v is not None]
        if given:
            raise DatasetError(f"{name} is generated, not read: it has no split or source ({', '.join(given)} "
                               "given); leave them out, or use a named task")
    elif name in TASKS:
        resolve_source(TASKS[name], source)
    else:
        known = ", ".join(sorted([*TASKS, *SYNTHETIC_TASKS]))
        raise DatasetError(f"unknown task '{name}'; known tasks: {known}")


def load_tasks(names: Sequence[str], split: str | None = None, limit: int | None = None,
               source: str | os.PathLike | None = None, seed: int = 0) -> dict[str, SampleSet]:
    """``load_task`` for several tasks, ``split`` and ``source`` going to the named ones (synthetic tasks have
    neither); given when every task is synthetic, they are refused, since nothing would read them."""
    if all(n in SYNTHETIC_TASKS for n in names) and (split is not None or source is not None):
        check_task(names[0], split, source)  # the refusal, in load_task's words
    return {n: load_task(n, *((None, limit, None) if n in SYNTHETIC_TASKS else (split, limit, source)), seed=seed)
            for n in names}


def native_metric(samples: Sequence[Sample], predictions: Sequence[str], ptb_tokenizer: str = PTB_PYTHON,
                  meteor: bool = True) -> dict[str, float]:
    """The native metric of the samples' task ({} when they mix tasks or their task has none registered).

    Captions are tokenized with ``ptb_tokenizer`` ("python", or "java": pycocoevalcap's own jar; see docs/metrics.md);
    METEOR (pycocoevalcap's jar, where it can run) scores the named caption task only, and only with ``meteor=True``:
    its jar takes seconds to start, and the synthetic twins are for speed runs.
    """
    tasks = {s.task for s in samples}
    if len(tasks) != 1 or (task := tasks.pop()) not in NATIVE_METRICS:
        return {}
    if task_kind(task) == "caption":
        return NATIVE_METRICS[task](samples, predictions, tokenizer=ptb_tokenizer, meteor=meteor and task in TASKS)
    return NATIVE_METRICS[task](samples, predictions)


__all__ = ["NATIVE_METRICS", "SYNTHETIC_TASKS", "Sample", "SampleSet", "TASKS", "TaskSpec", "check_task", "load_task",
           "load_tasks", "native_metric", "synthetic_samples", "task_kind", "task_max_new_tokens"]
