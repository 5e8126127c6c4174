"""``llava-accel demo``: every backend that runs here, on one model and the three synthetic tasks, in one table.

Each backend is measured with ``measure()`` on the same samples. The first one (``eager`` where CUDA is present,
else ``cpu``) is the reference: every other row's answers are compared with its answers (share identical). By
default every backend that can run here does: one that only lacks CUDA runs on the CPU in the ``cpu`` backend's
dtype (so a lossless backend must agree 100%), and the reference backend also runs with each quantisation mode this
machine has kernels for. ``--backends eager,cpu`` picks some. Full results go to a folder, one JSON per row and
task, plus ``summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import BackendUnavailableError, LlavaAccelError, OptionError
from .measure import measure
from .registry import backend_class, list_backends, load_backend, row_label, split_label
from .tasks import SYNTHETIC_TASKS, load_tasks

DEMO_TASKS = tuple(SYNTHETIC_TASKS)


@dataclass
class DemoRow:
    """One backend on one task: the figures of the comparison table (units in the names)."""

    backend: str  # its label: the name, plus "+int8" etc. for a quantised row
    task: str
    device: str = ""
    dtype: str = ""
    wer_percent: float | None = None
    native: str = ""  # "name value" of the task's own metric
    latency_ms_per_sample: float | None = None
    ttft_ms: float | None = None  # per batch
    ms_per_token: float | None = None  # decode phase
    energy_j_per_sample: float | None = None
    energy_source: str = ""  # e.g. "estimated (cpu-tdp)", "measured (nvml-energy-counter)"
    gflops_per_sample: float | None = None
    agreement: float | None = None  # share of answers identical to the reference backend's (token by token)
    reference: str = ""
    valid: bool | None = None
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


def _row(name: str, task: str, result, reference: str) -> DemoRow:
    d = result.config["backend"]
    lat, energy, n = result.latency, result.energy, max(1, len(result.predictions))
    native = next(iter(result.native.items()), None)
    return DemoRow(
        name, task, d.get("device", ""), d.get("dtype", ""), result.wer,
        f"{native[0]} {native[1]:.3f}" if native else "",
        lat.per_sample_s * 1e3 if lat.per_sample_s is not None else None,
        lat.ttft.mean * 1e3 if lat.ttft else None, lat.tpot.mean * 1e3 if lat.tpot else None,
        energy.joules_per_sample, energy.source if energy.label == energy.source else f"{energy.label} ({energy.source})",
        result.flops.total / n / 1e9 if result.flops else None,
        result.drift.identical if result.drift else (1.0 if name == reference else None), reference,
        result.validity.valid)


def run_demo(model: str | None = None, tasks: Sequence[str] = DEMO_TASKS, limit: int = 8, batch_size: int = 4,
             out_dir: str | Path | None = None, backends: Sequence[tuple[str, dict]] | None = None,
             log: Callable[[str], None] = print, source: str | None = None) -> tuple[list[DemoRow], Path]:
    """Measure every backend on every task; return the table's rows and the folder the JSON went to.

    The tasks are loaded first (``source``: where a named task's data lives, see ``load_task``), so a task that
    cannot be read fails before any model is loaded, and every backend gets the same samples."""
    data = load_tasks(tasks, limit=limit, source=source)
    out = Path(out_dir or f"llava-accel-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    backends = list(backends if backends is not None else demo_backends())
    rows, references = [], {}
    for name, options in backends:
        label = row_label(name, options)
        try:
            backend = load_backend(name, model=model, **options)
        except LlavaAccelError as exc:  # e.g. a draft head missing for this model: say so, measure the others
            rows += [DemoRow(label, t, skipped=str(exc)) for t in tasks]
            log(f"{label}: skipped ({exc})")
            continue
        for task in tasks:
            result = measure(backend, data[task], batch_size=batch_size, warmup=1, idle_seconds=0,
                             progress=False, reference=references.get(task))
            references.setdefault(task, result)
            result.to_json(out / f"{label}-{task}.json")
            rows.append(_row(label, task, result, backends[0][0]))
        del backend
    (out / "summary.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return rows, out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_rows(rows: Sequence[DemoRow]) -> str:
    """The comparison table, one line per backend and task."""
    head = ("backend", "device", "dtype", "task", "WER %", "native", "ms/sample", "TTFT ms", "ms/token", "J/sample",
            "energy source", "GFLOP/sample", "agree")
    lines, skipped = [head], set()
    for r in rows:
        if r.skipped:  # one line per backend: the reason is the same for every task
            if r.backend not in skipped:
                skipped.add(r.backend)
                lines.append((r.backend, "", "", "all", f"skipped: {r.skipped}", *[""] * 8))
            continue
        lines.append((r.backend, r.device, r.dtype, r.task.removeprefix("synthetic-"), _fmt(r.wer_percent, ".1f"),
                      r.native, _fmt(r.latency_ms_per_sample, ".1f"), _fmt(r.ttft_ms, ".1f"), _fmt(r.ms_per_token, ".2f"),
                      _fmt(r.energy_j_per_sample, ".3f"), r.energy_source, _fmt(r.gflops_per_sample, ".3f"),
                      _fmt(r.agreement, ".0%")))
    widths = [max(len(line[c]) for line in lines if not (line[4].startswith("skipped") and c == 4))
              for c in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def cli(model: str | None, limit: int, batch_size: int, out_dir: str | None, names: str | None,
        quantized: bool = True, tasks: str | None = None, source: str | None = None) -> int:
    """``llava-accel demo``: run, print the table, say where the JSON went."""
    backends = demo_backends(names.split(",") if names else None, quantized)
    start = time.perf_counter()
    rows, out = run_demo(model, tasks.split(",") if tasks else DEMO_TASKS, limit=limit, batch_size=batch_size,
                         out_dir=out_dir, backends=backends, source=source)
    print(format_rows(rows))
    if all(r.skipped for r in rows):
        raise BackendUnavailableError("no backend ran: every one was skipped (reasons in the table above)")
    print(f"agree: answers identical to {backends[0][0]}'s on the same samples; "
          f"{limit} samples per task; {time.perf_counter() - start:.0f} s in all; full results in {out}/")
    return 0
