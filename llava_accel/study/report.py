"""The study report: Markdown tables in the reference study's layout (plus our columns), PNG plots, a recommendation.

``write_report(paths, out_dir)`` reads results.jsonl files (and profile JSON files) and writes ``report.md`` and
``plots/*.png``. Each grid of the sweep spec becomes one table, named as in the spec: its varying dimensions first,
then the study's four columns (WER, latency per batch, energy per sample, prefill FLOPs per batch), then ours.
Every number has its unit in the column header; energy says whether it was measured or estimated, and results of
tiny or random-weight models are marked.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..outputs import check_folder
from ..result import _si
from . import plots
from .pareto import COSTS, by_task, pareto_front, recommend
from .profile import answer_claims, layer_table
from .rows import CHOICE, DIMENSIONS, RANDOM_WEIGHTS, TINY_WEIGHTS, Results, Row, load_results
from .spec import PROFILE_GRID
from .tables import format_table

DIM_HEADERS = {"backend": "backend", "device": "device", "dtype": "dtype", "task": "task", "batch_size": "batch",
               "max_input_len": "max_input_len", "img_size": "img_size"}


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _energy(r: Row, value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}" + (" (est.)" if r.estimated else "")


def _energy_source(r: Row) -> str:
    if not r.energy_source:
        return "n/a"
    return r.energy_source if r.energy_source == r.energy_label else f"{r.energy_source} ({r.energy_label})"


def _memory(r: Row) -> str:
    if r.device_peak_bytes:
        return f"{r.device_peak_bytes / 2**30:.2f} GiB"
    return "n/a" if r.rss_peak_bytes is None else f"{r.rss_peak_bytes / 2**30:.2f} GiB RSS"


# the study's columns, then ours: (header with unit, cell)
COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("WER %", lambda r: _num(r.wer)),
    ("latency s/batch", lambda r: _num(r.latency_batch_s)),
    ("energy J/sample", lambda r: _energy(r, r.energy_sample_j)),
    ("prefill FLOPs/batch", lambda r: _si(r.prefill_flops_batch, "FLOP", 4)),
    ("native metric", lambda r: ", ".join(f"{k} {v:.4g}" for k, v in r.native.items()) or "n/a"),
    ("latency s/sample", lambda r: _num(r.latency_sample_s)),
    ("TTFT ms", lambda r: _num(r.ttft_s and r.ttft_s * 1e3)),
    ("ms/output token", lambda r: _num(r.tpot_s and r.tpot_s * 1e3)),
    ("tokens/s", lambda r: _num(r.tokens_per_s)),
    ("energy J/batch", lambda r: _energy(r, r.energy_batch_j)),
    ("energy source", _energy_source),
    ("MFU %", lambda r: "n/a" if r.mfu is None else f"{100 * r.mfu:.3g}"),
    ("peak memory", _memory),
    ("valid", lambda r: "yes" if r.valid else "no" if r.valid is not None else "n/a"),
]


def _sort_key(dims: Sequence[str]) -> Callable[[Row], tuple]:
    """Rows in the study's order: lengths from long to short (200, 100, 50), everything else ascending."""
    def value(r: Row, d: str) -> Any:
        v = getattr(r, d)
        if d == "max_input_len":
            return -(v or 0)
        return (v is None, v or 0) if d in ("batch_size", "img_size") else str(v)
    return lambda r: tuple(value(r, d) for d in dims)


def grid_table(rows: Sequence[Row]) -> tuple[str, str]:
    """(caption, Markdown table): dimensions that vary become the first columns, the constant ones the caption."""
    dims = [d for d in DIMENSIONS if len({getattr(r, d) for r in rows}) > 1] or ["backend"]
    fixed = [f"{DIM_HEADERS[d]} {getattr(rows[0], d)}" for d in DIMENSIONS if d not in dims
             and getattr(rows[0], d) is not None]
    reps = {r.reps for r in rows}
    caption = "; ".join(fixed) + (f"; mean of {'/'.join(map(str, sorted(reps)))} repetitions" if reps != {1} else "")
    header = [DIM_HEADERS[d] for d in dims] + [h for h, _ in COLUMNS]
    body = [[str(getattr(r, d)) for d in dims] + [cell(r) for _, cell in COLUMNS]
            for r in sorted(rows, key=_sort_key(dims))]
    return caption, format_table(header, body) + validity_notes(sorted(rows, key=_sort_key(dims)), dims)


def validity_notes(rows: Sequence[Row], dims: Sequence[str]) -> str:
    """Why each `valid: no` row is not valid, grouped by what failed, naming the rows (by their varying
    dimensions) with their own figures."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        name = " ".join(str(getattr(r, d)) for d in dims)
        for reason in r.reasons:
            what, _, detail = reason.partition(": ")
            groups.setdefault(what, []).append(f"{name} ({detail})" if detail else name)
    return "".join(f"\n\n- not valid, {what}: {'; '.join(where)}" if i == 0 else
                   f"\n- not valid, {what}: {'; '.join(where)}" for i, (what, where) in enumerate(groups.items()))


def _grids(rows: Sequence[Row], failed: Sequence[Row], order: Sequence[str]) -> dict[str, list[Row]]:
    """Rows per grid, grids in spec order (rows from elsewhere, e.g. a measure --json file, in one table); a grid
    whose points all failed is kept, empty."""
    grids: dict[str, list[Row]] = {g: [] for r in failed for g in r.grids if g != PROFILE_GRID}
    for r in rows:
        for g in r.grids or ["all measured points"]:
            grids.setdefault(g, []).append(r)
    rank = {g: i for i, g in enumerate(order)}
    return dict(sorted(grids.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _recommendations(rows: Sequence[Row], cost: str, budget: float | None) -> list[str]:
    name, unit, get = COSTS[cost]
    out = []
    for task, measured in by_task(rows).items():
        # only valid measurements are recommended; with none, the front is shown under a warning
        rs = [r for r in measured if r.valid] or measured
        front = pareto_front(rs, cost)
        if not front:
            continue
        est = " (estimated)" if cost == "energy" and any(r.estimated for r in front) else ""
        left_out = len(measured) - len(rs)
        out.append(f"**{task}**, {name} per sample{est}: the Pareto front, cheapest first. With a budget of at least "
                   f"the first column, the row is the lowest WER within it."
                   + (f" {left_out} configurations whose measurement is not valid are left out." if left_out else ""))
        if not any(r.valid for r in rs):
            out.append("")
            out.append("> **No valid measurement for this task**: the front below is built from measurements that "
                       "failed their checks (see the tables' notes); treat it as a hint, not a recommendation.")
        out.append("")
        body = [[f"{get(r):.4g}", r.label(CHOICE), _num(r.wer),
                 _num(r.latency_sample_s), _energy(r, r.energy_sample_j)] for r in front]
        out.append(format_table([f"{name} budget {unit} ≥", "use", "WER %", "latency s/sample", "energy J/sample"],
                                body))
        if budget is not None:
            best = recommend(rs, cost, budget)
            out.append("")
            out.append(f"Budget {budget:g} {unit}: " + (
                f"**{best.label(CHOICE)}** "
                f"(WER {_num(best.wer)} %, {get(best):.4g} {unit})" if best else
                f"nothing measured fits; the cheapest is {front[0].label()} at {get(front[0]):.4g} {unit}."))
        out.append("")
    return out


def _weights_warning(rows: Sequence[Row], res: Results) -> str:
    tiny = sorted({r.weights for r in rows if r.tiny}
                  | {p.backend["weights"] for p in res.profiles if p.backend.get("weights") in TINY_WEIGHTS})
    out = ""
    if tiny:
        out += (f"> **Tiny or random weights ({', '.join(tiny)})**: these numbers test the pipeline on a small model; "
                "they say nothing about LLaVA-1.5-7B's speed or quality.\n")
    if any(r.weights == RANDOM_WEIGHTS for r in rows):
        out += ("> **weights: random** (no_weights): the model's own architecture with random weights; its speed, "
                "energy, FLOPs and memory stand, its WER and task metrics are meaningless.\n")
    return out


def write_report(paths: Sequence[str | Path], out_dir: str | Path, latency_budget: float | None = None,
                 energy_budget: float | None = None) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/plots/*.png`` from results files; returns the report's path."""
    out = check_folder(out_dir, "report folder")  # before reading: a bad path fails in one line, not after the plots
    res = load_results(list(paths))
    plot_dir = out / "plots"
    rows = res.rows
    machines = sorted({r.machine for r in rows if r.machine} | {p.machine for p in res.profiles})
    models = sorted({f"{r.model} ({r.weights})" for r in rows})
    md = ["# Study report", "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from {', '.join(res.sources)}: "
          f"{len(rows)} measured configurations, {len(res.failed)} that did not finish, "
          f"{len(res.profiles)} per-layer profiles.", "",
          f"Machine: {'; '.join(machines) or 'n/a'}. Model: {'; '.join(models) or 'n/a'}.", "",
          _weights_warning(rows, res),
          "Units: latency is wall clock per batch end to end (preprocessing, generation, decoding; warm-up "
          "excluded), in seconds; energy in joules per sample, `(est.)` when estimated rather than measured (source "
          "in its column); prefill FLOPs per batch is the reference study's FLOP figure (2 FLOPs per multiply-add); "
          "WER in percent; TTFT and time per output token in ms. Definitions: docs/metrics.md. A `valid: no` row "
          "failed a check of the measurement itself (under its table: which check, for which rows); the "
          "recommendations use valid rows only.", ""]
    for i, (grid, grid_rows) in enumerate(_grids(rows, res.failed, res.grid_order).items(), 1):
        caption, table = grid_table(grid_rows) if grid_rows else ("", "Nothing measured.")
        missing = [f"- did not finish: {r.label()} ({r.status}; see below)" for r in res.failed if grid in r.grids]
        md += [f"## {i}. {grid[:1].upper() + grid[1:]}", "", caption + ("." if caption else ""), "", table, *missing,
               ""]
    if res.failed:
        md += ["## Points that did not finish", "",
               format_table(["point", "status", "error"],
                            [[r.label(), r.status, (r.error or "").replace("|", "/")] for r in res.failed]), ""]
    md += ["## Plots", ""]
    drawn = [plots.latency_vs_batch(rows, plot_dir / "latency_vs_batch.png"),
             plots.energy_vs_batch(rows, plot_dir / "energy_vs_batch.png"),
             plots.quality_vs_input_len(rows, plot_dir / "quality_vs_input_len.png"),
             plots.backends_side_by_side(rows, plot_dir / "backends.png"),
             plots.pareto(rows, "latency", plot_dir / "pareto_latency.png"),
             plots.pareto(rows, "energy", plot_dir / "pareto_energy.png")]
    for path, what in drawn:
        md += [f"![{what}](plots/{Path(path).name})" if path else f"- not drawn: {what}", ""]
    md += ["## Which configuration for a budget", ""]
    for cost, budget in (("latency", latency_budget), ("energy", energy_budget)):
        md += _recommendations(rows, cost, budget)
    if res.profiles:
        md += ["## Per layer", "",
               "Time per forward of each module (mean over the faster half of the timed runs), its FLOPs, the fit "
               "time = a + b x batch, its share of the whole forward and its achieved FLOP/s at the largest batch. "
               "Indented rows run inside the row above them; `outside listed modules` is what a module spends outside "
               "its listed children (Python, masks, merging image features).", ""]
        for k, p in enumerate(res.profiles):
            b = p.backend
            img = f"{p.img_size} px" if p.img_size else "native size"
            peak = f"; peak {_si(p.peak_flops_per_s, 'FLOP/s')} ({p.peak_source})" if p.peak_flops_per_s else ""
            md += [f"### {b.get('backend')} on {b.get('device')} ({b.get('dtype')}), image {img}", "",
                   f"{b.get('model')} [{b.get('weights')}]; {p.image_tokens} image tokens; {p.machine}; timer: "
                   f"{p.timer}; {p.repeats} timed runs per batch size{peak}.", ""]
            for phase in p.phases:
                md += [f"**{phase.phase}**", "", format_table(*layer_table(p, phase.phase)), ""]
            path, what = plots.layer_breakdown(p, plot_dir / f"layers_{k}.png")
            md += [f"![{what}](plots/{Path(path).name})", ""]
        md += ["### The reference study's claims", ""] + answer_claims(res.profiles) + [""]
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text("\n".join(md))
    return report
