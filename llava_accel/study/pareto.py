"""Quality against cost: the Pareto front of measured configurations and the best one within a budget.

Quality is WER (percent, lower is better), comparable only within one task; cost is latency per sample (s) or
energy per sample (J). A configuration is on the front when no other one of the same task is at least as cheap and
strictly better, or cheaper and at least as good.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .rows import Row

COSTS: dict[str, tuple[str, str, Callable[[Row], float | None]]] = {
    "latency": ("latency", "s/sample", lambda r: r.latency_sample_s),
    "energy": ("energy", "J/sample", lambda r: r.energy_sample_j),
}


def _scored(rows: Sequence[Row], cost: str) -> list[Row]:
    get = COSTS[cost][2]
    return [r for r in rows if r.wer is not None and get(r) is not None]


def pareto_front(rows: Sequence[Row], cost: str) -> list[Row]:
    """The front, cheapest first (each later one is better and costs more)."""
    get = COSTS[cost][2]
    front: list[Row] = []
    for r in sorted(_scored(rows, cost), key=lambda r: (get(r), r.wer)):
        if not front or r.wer < front[-1].wer:
            front.append(r)
    return front


def recommend(rows: Sequence[Row], cost: str, budget: float) -> Row | None:
    """The lowest-WER configuration whose cost is within ``budget`` (ties: the cheaper); None if none fits."""
    get = COSTS[cost][2]
    fits = [r for r in _scored(rows, cost) if get(r) <= budget]
    return min(fits, key=lambda r: (r.wer, get(r))) if fits else None


def by_task(rows: Sequence[Row]) -> dict[str, list[Row]]:
    tasks: dict[str, list[Row]] = {}
    for r in rows:
        tasks.setdefault(r.task, []).append(r)
    return tasks
