"""Results records as flat rows: the one place that knows the layout of a sweep line and of ``measure()``'s dict.

A results.jsonl line holds the point (its configuration), a status, and the measurement (``MeasureResult.to_dict()``)
or a per-layer profile. Repetitions of one configuration are merged into one row (means; ``reps`` says how many).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ResultsFileError
from ..result import read_json
from .profile import LayerProfile
from .spec import PROFILE_GRID
from .store import OK, latest_records

DIMENSIONS = ("backend", "device", "dtype", "task", "batch_size", "max_input_len", "img_size")
TINY_WEIGHTS = ("tiny-random", "tiny-trained")  # small models: the pipeline, not LLaVA-1.5-7B
RANDOM_WEIGHTS = "random"  # no_weights: the real architecture with random weights (speed and memory, not quality)
CHOICE = ("backend", "batch_size", "max_input_len", "img_size")  # what a user picks for a task: a row's short label
WORKLOAD = ("task", "batch_size", "max_input_len", "img_size")  # the work backends are compared on


@dataclass
class Row:
    """One measured configuration. Times in seconds, energy in joules, memory in bytes, WER in percent."""

    backend: str
    device: str
    dtype: str
    task: str
    batch_size: int
    max_input_len: int | None
    img_size: int | None
    model: str = ""
    weights: str = ""
    grids: list[str] = field(default_factory=list)
    status: str = OK
    error: str | None = None
    wer: float | None = None
    native: dict[str, float] = field(default_factory=dict)
    latency_batch_s: float | None = None
    latency_sample_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens_per_s: float | None = None
    energy_sample_j: float | None = None
    energy_batch_j: float | None = None
    energy_source: str = ""
    energy_label: str = ""  # "measured" or "estimated"
    prefill_flops_sample: float | None = None
    flops_per_token: float | None = None
    mfu: float | None = None
    device_peak_bytes: int | None = None
    rss_peak_bytes: int | None = None
    valid: bool | None = None
    reasons: list[str] = field(default_factory=list)
    machine: str = ""
    reps: int = 1
    config: str = ""  # the point's configuration but its repetition: rows with the same one are merged

    @property
    def series(self) -> str:
        """The backend configuration: what a line in a plot stands for (the device left out when the backend is
        named for it: "cpu float32", not "cpu cpu float32")."""
        return " ".join(x for x in (self.backend, "" if self.device == self.backend else self.device, self.dtype) if x)

    @property
    def prefill_flops_batch(self) -> float | None:
        """The reference study's FLOP figure: one prefill of the batch."""
        return None if self.prefill_flops_sample is None else self.prefill_flops_sample * self.batch_size

    @property
    def estimated(self) -> bool:
        return self.energy_label != "measured"

    @property
    def tiny(self) -> bool:
        return self.weights in TINY_WEIGHTS

    def label(self, dims: tuple[str, ...] = DIMENSIONS) -> str:
        parts = {"backend": self.series, "task": self.task, "batch_size": f"bs{self.batch_size}",
                 "max_input_len": f"len{self.max_input_len}" if self.max_input_len else "",
                 "img_size": f"{self.img_size}px" if self.img_size else ""}
        return " ".join(parts[d] for d in dims if d in parts and parts[d])


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def measure_row(record: dict[str, Any]) -> Row:
    point, result = record.get("point", {}), record.get("result") or {}
    config = result.get("config", {})
    described = config.get("backend", {})
    env = result.get("environment", {})
    gpu = _get(env, "gpu", "name")
    cpu = _get(env, "cpu", "model")
    threads = _get(env, "cpu", "torch_threads")
    return Row(
        backend=point.get("backend") or described.get("backend", "?"),
        device=described.get("device") or point.get("device") or "",
        dtype=described.get("dtype") or point.get("dtype") or "",
        task=point.get("task") or config.get("dataset", ""), batch_size=point.get("batch_size") or config.get(
            "batch_size", 0),
        max_input_len=point.get("max_input_len", config.get("max_input_len")),
        img_size=point.get("img_size", config.get("img_size")),
        model=described.get("model") or point.get("model") or "", weights=described.get("weights", ""),
        grids=list(record.get("grids", [])), status=record.get("status", OK), error=record.get("error"),
        wer=result.get("wer"), native=dict(result.get("native") or {}),
        latency_batch_s=_get(result, "latency", "per_batch", "mean"),
        latency_sample_s=_get(result, "latency", "per_sample_s"), ttft_s=_get(result, "latency", "ttft", "mean"),
        tpot_s=_get(result, "latency", "tpot", "mean"), tokens_per_s=_get(result, "latency", "tokens_per_s"),
        energy_sample_j=_get(result, "energy", "joules_per_sample"),
        energy_batch_j=_get(result, "energy", "joules_per_batch"),
        energy_source=_get(result, "energy", "source") or "", energy_label=_get(result, "energy", "label") or "",
        prefill_flops_sample=_get(result, "flops", "prefill_per_sample"),
        flops_per_token=_get(result, "flops", "per_generated_token"), mfu=_get(result, "flops", "mfu"),
        device_peak_bytes=_get(result, "memory", "device_peak_bytes"),
        rss_peak_bytes=_get(result, "memory", "rss_peak_bytes"),
        valid=_get(result, "validity", "valid"), reasons=list(_get(result, "validity", "reasons") or []),
        machine=gpu or (f"{cpu}, {threads} threads" if cpu else ""),
        config=json.dumps({k: v for k, v in point.items() if k != "repetition"} or record.get("key"), sort_keys=True))


def merge_repetitions(rows: list[Row]) -> list[Row]:
    """One row per configuration: numeric fields averaged over its repetitions, validity only if all are valid."""
    groups: dict[str, list[Row]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.config or str(i), []).append(r)
    merged = []
    for group in groups.values():
        first = group[0]
        if len(group) == 1:
            merged.append(first)
            continue
        values: dict[str, Any] = {}
        for f in fields(Row):
            xs = [getattr(r, f.name) for r in group]
            if f.type in ("float | None",) and all(isinstance(x, (int, float)) for x in xs):
                values[f.name] = statistics.fmean(xs)
        native = {k: statistics.fmean(r.native[k] for r in group) for k in first.native
                  if all(k in r.native for r in group)}
        merged.append(replace(first, **values, native=native, reps=len(group),
                              valid=all(r.valid for r in group),
                              reasons=sorted({x for r in group for x in r.reasons})))
    return merged


@dataclass
class Results:
    rows: list[Row]  # measured, one per configuration
    failed: list[Row]  # points recorded with an error, out of memory, or unavailable
    profiles: list[LayerProfile]
    sources: list[str]
    grid_order: list[str] = field(default_factory=list)  # the specs' grid names, in their order


def load_results(paths: list[str | Path]) -> Results:
    """Read results.jsonl files (or folders holding one) and profile JSON files (``llava-accel profile --json``)."""
    from .sweep import RESULTS

    jsonl, records, sources = [], [], []
    for p in map(Path, paths):
        p = p / RESULTS if p.is_dir() else p
        sources.append(str(p))
        if p.suffix == ".json":
            result = read_json(p, "a measure or profile result (--json of llava-accel measure or profile)")
            if "config" not in result and result.get("kind") != "profile":
                raise ResultsFileError(f"{p} is not a measure or profile result: it has no 'config' and is no "
                                       "profile")
            records.append({"status": OK, "result": result})
        else:
            jsonl.append(p)
    records = latest_records(jsonl) + records
    measured, failed, profiles, order = [], [], [], []
    for r in records:
        order += [g for g in r.get("grid_order", []) if g not in order]
        result = r.get("result") or {}
        if _get(r, "point", "kind") == "profile" or result.get("kind") == "profile":
            if r.get("status") == OK:
                profiles.append(LayerProfile.from_dict(result))
            else:
                failed.append(replace(measure_row({**r, "point": {**r.get("point", {}), "task": PROFILE_GRID,
                                                                     "batch_size": 0}}), grids=[PROFILE_GRID]))
        elif r.get("status") == OK:
            measured.append(measure_row(r))
        else:
            failed.append(measure_row(r))
    return Results(merge_repetitions(measured), failed, profiles, sources, order)
