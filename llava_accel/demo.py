"""``llava-accel demo``: every backend that runs here, on one model and the three synthetic tasks, in one table.

Each backend is measured with ``measure()`` on the same samples. The first one (``eager`` where CUDA is present,
else ``cpu``) is the reference: every other row's answers are compared with its answers (share identical). By
default every backend that can run here does: one that only lacks CUDA runs on the CPU in the ``cpu`` backend's
dtype (so a lossless backend must agree 100%), and the reference backend also runs with each quantisation mode this
machine has kernels for. ``--backends eager,cpu`` picks some. Full results go to a folder (by default
``runs/demo-TIMESTAMP/`` under the working directory), one JSON per row and task, plus ``summary.json``.

Every cell of the table is a mean with its spread (± the standard deviation over the timed batches), every row says
its batch size and whether the measurement is valid; by default each task has enough samples for the 5 timed
batches a valid result needs (``measure``'s ``min_timed_batches``; the warm-up reruns the first batch).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import BackendUnavailableError, LlavaAccelError, OptionError
from .formats import render
from .measure import MIN_TIMED_BATCHES, measure
from .outputs import check_folder, save, write_atomic
from .registry import backend_class, list_backends, load_backend, row_label, split_label
from .tasks import SYNTHETIC_TASKS, load_tasks

DEMO_TASKS = tuple(SYNTHETIC_TASKS)
DEMO_BATCH_SIZE = 1
RUNS_DIR = Path("runs")


@dataclass
class DemoRow:
    """One backend on one task: the figures of the comparison table (units in the names; ``_sd``: the standard
    deviation over the timed batches)."""

    backend: str  # its label: the name, plus "+int8" etc. for a quantised row
    task: str
    device: str = ""
    dtype: str = ""
    batch_size: int | None = None
    wer_percent: float | None = None
    native: str = ""  # "name value" of the task's own metric
    latency_ms_per_sample: float | None = None
    latency_ms_per_sample_sd: float | None = None
    ttft_ms: float | None = None  # per batch: the whole batch's first token
    ttft_ms_sd: float | None = None
    ms_per_token: float | None = None  # decode phase
    ms_per_token_sd: float | None = None
    energy_j_per_sample: float | None = None
    energy_source: str = ""  # e.g. "estimated (cpu-tdp)", "measured (nvml-energy-counter)"
    gflops_per_sample: float | None = None
    agreement: float | None = None  # share of answers identical to the reference backend's (token by token)
    reference: str = ""
    timed_batches: int | None = None
    valid: bool | None = None
    reasons: list[str] = field(default_factory=list)  # why not valid
    skipped: str = ""  # why the backend did not run


def demo_backends(names: Sequence[str] | None = None, quantized: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) of the rows to run, the reference first: by default every backend that runs here.

    A name may carry a quantize mode (``cpu+int8``). A backend that only lacks CUDA runs with ``device='cpu'`` in
    the ``cpu`` backend's dtype; one that cannot run at all stays in the list and shows up in the table as skipped,
    with the reason. By default (no ``names``) with ``quantized``, the reference backend (``eager`` with CUDA, else
    ``cpu``) also runs with every quantize mode that has a kernel on its device.
    """
    from .backends.base import resolve_dtype
    from .quantize import MODES, preferred_dtype, unsupported_reason

    cuda = torch.cuda.is_available()
    cpu_dtype = backend_class("cpu").default_dtype
    reference = "eager" if cuda else "cpu"
    infos = {i.name: i for i in list_backends()}
    if names is None:
        names = [n for n, i in infos.items() if i.available or not cuda]
        if quantized:
            ref = backend_class(reference)
            dtype = resolve_dtype(ref.default_dtype)
            names += [f"{reference}+{m}" for m in MODES if unsupported_reason(
                m, ref.default_device, preferred_dtype(m, ref.default_device, dtype)) is None]
    chosen = []
    for label in names:
        name, options = split_label(label)
        backend_class(name)  # an unknown name fails here, in one line, before anything runs
        if options.get("quantize") not in (None, *MODES):
            raise OptionError(f"unknown quantize mode in '{label}'; use NAME+MODE with MODE one of {', '.join(MODES)}")
        if name in infos and not infos[name].available and not cuda and \
                backend_class(name).unavailable_reason(device="cpu", dtype=cpu_dtype) is None:
            options = {"device": "cpu", "dtype": cpu_dtype, **options}
        chosen.append((name, options))
    quantized_row = lambda c: bool(c[1].get("quantize"))  # noqa: E731
    return sorted(chosen, key=lambda c: (c[0] != reference or quantized_row(c), quantized_row(c)))


def _ms(stats, scale: float = 1.0) -> tuple[float | None, float | None]:
    return (None, None) if stats is None else (stats.mean * 1e3 / scale, stats.stdev * 1e3 / scale)


def _row(name: str, task: str, result, reference: str) -> DemoRow:
    d, c = result.config["backend"], result.config
    lat, energy, n = result.latency, result.energy, max(1, len(result.predictions))
    native = next(iter(result.native.items()), None)
    batch = c.get("batch_size") or 1
    per_sample = _ms(lat.per_batch, batch)
    return DemoRow(
        name, task, d.get("device", ""), d.get("dtype", ""), batch, result.wer,
        f"{native[0]} {native[1]:.3f}" if native else "",
        lat.per_sample_s * 1e3 if lat.per_sample_s is not None else None, per_sample[1],
        *_ms(lat.ttft), *_ms(lat.tpot),
        energy.joules_per_sample,
        energy.source if energy.label == energy.source else f"{energy.label} ({energy.source})",
        result.flops.total / n / 1e9 if result.flops else None,
        result.drift.identical if result.drift else (1.0 if name == reference else None), reference,
        lat.per_batch.n if lat.per_batch else 0, result.validity.valid, list(result.validity.reasons))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def default_limit(batch_size: int = DEMO_BATCH_SIZE) -> int:
    """Samples per task for the timed batches a valid result needs (the warm-up reruns the first batch)."""
    return MIN_TIMED_BATCHES * batch_size


def default_out_dir() -> Path:
    return RUNS_DIR / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


def run_demo(model: str | None = None, tasks: Sequence[str] = DEMO_TASKS, limit: int | None = None,
             batch_size: int = DEMO_BATCH_SIZE, out_dir: str | Path | None = None,
             backends: Sequence[tuple[str, dict]] | None = None, log: Callable[[str], None] | None = None,
             source: str | None = None, progress: bool | None = None) -> tuple[list[DemoRow], Path]:
    """Measure every backend on every task; return the table's rows and the folder the JSON went to.

    The tasks are loaded first (``source``: where a named task's data lives, see ``load_task``), so a task that
    cannot be read fails before any model is loaded, and every backend gets the same samples. ``progress``: say on
    stderr which row runs, with ``measure``'s progress line (default: when stderr is a terminal)."""
    out = check_folder(out_dir or default_out_dir(), "demo folder")
    limit = limit or default_limit(batch_size)
    data = load_tasks(tasks, limit=limit, source=source)
    out.mkdir(parents=True, exist_ok=True)
    backends = list(backends if backends is not None else demo_backends())
    (log or _stderr)(f"demo: {len(backends)} backends x {len(tasks)} tasks, {limit} samples "
                     f"each in batches of {batch_size}; results go to {out}/")
    show = sys.stderr.isatty() if progress is None else progress
    rows, references = [], {}
    for k, (name, options) in enumerate(backends, 1):
        label = row_label(name, options)
        try:
            backend = load_backend(name, model=model, **options)
        except LlavaAccelError as exc:  # e.g. a draft head missing for this model: say so, measure the others
            rows += [DemoRow(label, t, skipped=str(exc)) for t in tasks]
            (log or _stderr)(f"{label}: skipped ({exc})")
            continue
        for task in tasks:
            if show:
                print(f"demo: [{k}/{len(backends)}] {label} on {task}", file=sys.stderr)
            result = measure(backend, data[task], batch_size=batch_size, warmup=1, idle_seconds=0,
                             progress=show, reference=references.get(task))
            references.setdefault(task, result)
            save(result.to_json, out / f"{label}-{task}.json", f"the {label} result on {task}")
            rows.append(_row(label, task, result, backends[0][0]))
        del backend
    summary = json.dumps([asdict(r) for r in rows], indent=1) + "\n"
    save(lambda p: write_atomic(p, summary), out / "summary.json", "the demo summary")
    return rows, out


def _fmt(value: float | None, spec: str, spread: float | None = None) -> str:
    if value is None:
        return "-"
    return format(value, spec) + ("" if spread is None else f" ±{format(spread, spec)}")


def format_rows(rows: Sequence[DemoRow]) -> str:
    """The comparison table, one line per backend and task, then why each row that is not valid is not."""
    head = ("backend", "device", "dtype", "task", "batch", "WER %", "native", "ms/sample", "TTFT ms/batch",
            "ms/token", "J/sample", "energy source", "GFLOP/sample", "agree", "valid")
    lines, skipped, notes = [head], set(), {}
    for r in rows:
        if r.skipped:  # one line per backend: the reason is the same for every task
            if r.backend not in skipped:
                skipped.add(r.backend)
                lines.append((r.backend, "", "", "all", "", f"skipped: {r.skipped}", *[""] * 9))
            continue
        task = r.task.removeprefix("synthetic-")
        lines.append((r.backend, r.device, r.dtype, task, _fmt(r.batch_size, "d"), _fmt(r.wer_percent, ".1f"),
                      r.native, _fmt(r.latency_ms_per_sample, ".1f", r.latency_ms_per_sample_sd),
                      _fmt(r.ttft_ms, ".1f", r.ttft_ms_sd), _fmt(r.ms_per_token, ".2f", r.ms_per_token_sd),
                      _fmt(r.energy_j_per_sample, ".3f"), r.energy_source, _fmt(r.gflops_per_sample, ".3f"),
                      _fmt(r.agreement, ".0%"), "-" if r.valid is None else "yes" if r.valid else "NO"))
        for reason in r.reasons:  # grouped by what failed (the text before the details), naming every row
            notes.setdefault(reason.split(":")[0], []).append(f"{r.backend} {task}")
    widths = [max(len(line[c]) for line in lines if not (line[5].startswith("skipped") and c == 5))
              for c in range(len(head))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
    return "\n".join([table, *(f"not valid, {why}: {', '.join(where)}" for why, where in notes.items())])


def cli(model: str | None, limit: int | None, batch_size: int | None, out_dir: str | None, names: str | None,
        quantized: bool = True, tasks: str | None = None, source: str | None = None, fmt: str = "text") -> int:
    """``llava-accel demo``: run, print the table (``fmt``: text, md, csv or json), say where the JSON went."""
    batch_size = batch_size or DEMO_BATCH_SIZE
    limit = limit or default_limit(batch_size)
    backends = demo_backends(names.split(",") if names else None, quantized)
    start = time.perf_counter()
    rows, out = run_demo(model, tasks.split(",") if tasks else DEMO_TASKS, limit=limit, batch_size=batch_size,
                         out_dir=out_dir, backends=backends, source=source)
    print(format_rows(rows) if fmt == "text" else render([asdict(r) for r in rows], fmt))
    if all(r.skipped for r in rows):
        raise BackendUnavailableError("no backend ran: every one was skipped (reasons in the table above)")
    if fmt == "text":
        print(f"mean ±standard deviation over the timed batches; agree: answers identical to {backends[0][0]}'s on "
              f"the same samples; {limit} samples per task; {time.perf_counter() - start:.0f} s in all; full results "
              f"(every reason in full) in {out}/")
    return 0
