"""The report's PNG plots (matplotlib, object API: no global pyplot state, no display needed).

Each function draws from rows and writes one PNG, or returns the reason it had nothing to draw. Estimated energy is
drawn dashed and says so in its legend; a tiny or random-weight model says so in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .pareto import COSTS, by_task, pareto_front
from .profile import LayerProfile
from .rows import CHOICE, DIMENSIONS, RANDOM_WEIGHTS, TINY_WEIGHTS, WORKLOAD, Row

Drawn = tuple[str | None, str]  # (path or None, what it shows or why it was not drawn)


def _figure(n_axes: int, width: float = 6.0, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def _title(rows: Sequence[Row], text: str) -> str:
    tiny = sorted({r.weights for r in rows if r.tiny})
    machines = sorted({r.machine for r in rows if r.machine})
    note = f" [{', '.join(tiny)} weights: tests the pipeline, not LLaVA-1.5-7B]" if tiny else ""
    note += " [random weights: quality meaningless]" if any(r.weights == RANDOM_WEIGHTS for r in rows) else ""
    return f"{text}{note}\n{'; '.join(machines)}"


def _series(rows: Sequence[Row], along: str) -> dict[str, list[Row]]:
    """Rows grouped by every dimension but ``along`` (a line each), sorted along it; lines of 2+ points only."""
    groups: dict[str, list[Row]] = {}
    others = tuple(d for d in DIMENSIONS if d != along)
    for r in rows:
        groups.setdefault(r.label(others), []).append(r)
    return {k: sorted(v, key=lambda r: getattr(r, along) or 0) for k, v in groups.items()
            if len({getattr(r, along) for r in v}) > 1}


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def _lines(ax, lines: dict[str, list[Row]], along: str, value: Callable[[Row], float | None],
           dashed: Callable[[Row], bool] = lambda r: False, suffix: Callable[[Row], str] = lambda r: "") -> None:
    for label, rs in lines.items():
        pts = [(getattr(r, along), value(r)) for r in rs if value(r) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", linestyle="--" if dashed(rs[0]) else "-", label=label + suffix(rs[0]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _wer_axis(ax, values: Sequence[float | None]) -> None:
    """WER from 0 up: all-zero WER is drawn on the axis with a note, not on an empty +-0.04 axis."""
    top = max([v for v in values if v is not None], default=0.0)
    ax.set_ylim(0, max(1.0, top * 1.1))
    if top == 0:
        ax.text(0.5, 0.5, "WER 0 % everywhere", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                color="0.4")


def _log_x(ax, ticks: Sequence[float] | None = None) -> None:
    """Log x axis with plain numbers as tick labels (matplotlib's default 10^k labels are slow mathtext)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log", base=2 if ticks else 10)
    if ticks:
        ax.set_xticks(sorted(set(ticks)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_x_if_wide(ax, values: Sequence[float]) -> None:
    """Log scale only when the values span more than 20x (else its tick labels say little and overlap)."""
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 20:
        _log_x(ax)


def latency_vs_batch(rows: Sequence[Row], path: Path) -> Drawn:
    lines = _series(rows, "batch_size")
    if not lines:
        return None, "needs one configuration measured at 2 or more batch sizes"
    fig, (a, b) = _figure(2)
    _lines(a, lines, "batch_size", lambda r: r.latency_batch_s)
    _lines(b, lines, "batch_size", lambda r: r.latency_sample_s)
    for ax, what in ((a, "latency per batch (s, mean)"), (b, "latency per sample (s)")):
        _log_x(ax, [r.batch_size for rs in lines.values() for r in rs])
        ax.set_xlabel("batch size")
        ax.set_ylabel(what)
    fig.suptitle(_title(rows, "Latency vs batch size (wall clock, end to end)"), fontsize=9)
    return _save(fig, path), "latency per batch and per sample against batch size, one line per configuration"


def energy_vs_batch(rows: Sequence[Row], path: Path) -> Drawn:
    lines = _series([r for r in rows if r.energy_sample_j is not None], "batch_size")
    if not lines:
        return None, "needs energy at 2 or more batch sizes of one configuration"
    fig, (ax,) = _figure(1, 7.5)
    _lines(ax, lines, "batch_size", lambda r: r.energy_sample_j, dashed=lambda r: r.estimated,
           suffix=lambda r: f" ({r.energy_label}: {r.energy_source})")
    _log_x(ax, [r.batch_size for rs in lines.values() for r in rs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("energy per sample (J)")
    fig.suptitle(_title(rows, "Energy per sample vs batch size (dashed: estimated, not measured)"), fontsize=9)
    return _save(fig, path), "energy per sample against batch size; estimated energy is dashed and labelled"


def quality_vs_input_len(rows: Sequence[Row], path: Path) -> Drawn:
    """WER, then one panel per native metric (CIDEr's 0-10 and accuracies' 0-1 do not share an axis)."""
    lines = _series([r for r in rows if r.max_input_len], "max_input_len")
    if not lines:
        return None, "needs one configuration measured at 2 or more max_input_len values"
    metrics = sorted({m for rs in lines.values() for r in rs for m in r.native})
    fig, axes = _figure(1 + len(metrics), 5.0)
    _lines(axes[0], lines, "max_input_len", lambda r: r.wer)
    _wer_axis(axes[0], [r.wer for rs in lines.values() for r in rs])
    axes[0].set_ylabel("WER (%)")
    for ax, metric in zip(axes[1:], metrics):
        with_metric = {label: rs for label, rs in lines.items() if any(metric in r.native for r in rs)}
        _lines(ax, with_metric, "max_input_len", lambda r: r.native.get(metric))
        ax.set_ylabel(metric)
    for ax in axes:
        ax.set_xlabel("max_input_len (text tokens)")
    fig.suptitle(_title(rows, "Quality vs max_input_len, per task"), fontsize=9)
    return _save(fig, path), "WER and each task's native metric (a panel each) against max_input_len, a line per task"


def backends_side_by_side(rows: Sequence[Row], path: Path) -> Drawn:
    """Grouped bars for every workload (task, batch, length, image size) measured with 2 or more backends."""
    workloads: dict[str, list[Row]] = {}
    for r in rows:
        workloads.setdefault(r.label(WORKLOAD), []).append(r)
    workloads = {k: v for k, v in workloads.items() if len({r.series for r in v}) > 1}
    if not workloads:
        return None, "needs one workload measured with 2 or more backend configurations"
    metrics = (("latency per sample (s)", lambda r: r.latency_sample_s), ("energy per sample (J)",
               lambda r: r.energy_sample_j), ("WER (%)", lambda r: r.wer))
    fig, axes = _figure(3, 5.0, 4.5)
    series = sorted({r.series for rs in workloads.values() for r in rs})
    width = 0.8 / len(series)
    for ax, (what, value) in zip(axes, metrics):
        for j, s in enumerate(series):
            xs, ys, hatch = [], [], []
            for i, rs in enumerate(workloads.values()):
                r = next((r for r in rs if r.series == s), None)
                if r is not None and value(r) is not None:
                    xs.append(i + j * width)
                    ys.append(value(r))
                    hatch.append("//" if "energy" in what and r.estimated else "")
            bars = ax.bar(xs, ys, width, label=s)
            for bar, h in zip(bars, hatch):
                bar.set_hatch(h)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], list(workloads), fontsize=7, rotation=15)
        ax.set_ylabel(what)
        if what.startswith("WER"):
            _wer_axis(ax, [r.wer for rs in workloads.values() for r in rs])
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(rows, "Backends side by side (hatched energy: estimated)"), fontsize=9)
    return _save(fig, path), "latency, energy and WER of each backend on the same workloads"


def pareto(rows: Sequence[Row], cost: str, path: Path) -> Drawn:
    name, unit, get = COSTS[cost]
    tasks = {t: rs for t, rs in by_task(rows).items() if any(r.wer is not None and get(r) is not None for r in rs)}
    if not tasks:
        return None, f"needs configurations with both WER and {name}"
    fig, axes = _figure(len(tasks), 5.5, 4.5)
    for ax, (task, rs) in zip(axes, tasks.items()):
        scored = [r for r in rs if r.wer is not None and get(r) is not None]
        ax.scatter([get(r) for r in scored], [r.wer for r in scored], s=18, alpha=0.6, label="measured")
        front = pareto_front(scored, cost)
        ax.plot([get(r) for r in front], [r.wer for r in front], "-o", color="C3", label="Pareto front")
        for r in front:
            ax.annotate(r.label(CHOICE), (get(r), r.wer),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        _log_x_if_wide(ax, [get(r) for r in scored])
        estimated = cost == "energy" and any(r.estimated for r in scored)
        ax.set_xlabel(f"{name} ({unit}){' [estimated]' if estimated else ''}")
        ax.set_ylabel("WER (%), lower is better")
        _wer_axis(ax, [r.wer for r in scored])
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(rows, f"Quality vs {name}: the Pareto front per task"), fontsize=9)
    return _save(fig, path), f"WER against {name} per sample for every configuration, with the Pareto front"


# parts of a profile grouped for the stacked bars, by their kind; each group keeps its colour in every panel
LAYER_GROUPS = (("patch-embedding conv", {"patch-embedding conv"}), ("vision layers", {"vision layer"}),
                ("projector", {"projector"}), ("attention", {"attention"}), ("MLP", {"mlp"}),
                ("LM head", {"lm head"}))
GROUP_COLORS = {label: f"C{i}" for i, (label, _) in enumerate(LAYER_GROUPS)}
REST = ("everything else (norms, embeddings, glue)", "0.8")


def layer_figure(profile: LayerProfile):
    """One panel per phase, the parts' times stacked per batch size; the legend lists every group drawn."""
    from matplotlib.patches import Patch

    fig, axes = _figure(2, 5.5, 4.5)
    bs = profile.batch_sizes
    drawn: set[str] = set()
    for ax, ph in zip(axes, profile.phases):
        bottom = [0.0] * len(bs)
        for label, kinds in LAYER_GROUPS:
            ms = [sum(p.seconds[i] for p in ph.parts if p.kind in kinds) * 1e3 for i in range(len(bs))]
            if any(ms):
                ax.bar([str(b) for b in bs], ms, bottom=bottom, label=label, color=GROUP_COLORS[label])
                bottom = [x + y for x, y in zip(bottom, ms)]
                drawn.add(label)
        rest = [w * 1e3 - c for w, c in zip(ph.whole_s, bottom)]
        ax.bar([str(b) for b in bs], rest, bottom=bottom, label=REST[0], color=REST[1])
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{ph.phase} forward time (ms)")
        ax.set_title(f"{ph.phase} ({'one decode step' if ph.phase == 'decode' else 'prompt + image'})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    legend = [(label, GROUP_COLORS[label]) for label, _ in LAYER_GROUPS if label in drawn] + [REST]
    fig.legend([Patch(color=c) for _, c in legend], [label for label, _ in legend], loc="outside right upper",
               fontsize=7)
    return fig


def layer_breakdown(profile: LayerProfile, path: Path) -> Drawn:
    fig = layer_figure(profile)
    b = profile.backend
    img = f"{profile.img_size} px" if profile.img_size else "native size"
    tiny = b.get("weights") in TINY_WEIGHTS
    fig.suptitle(f"Per-layer time: {b.get('backend')} {b.get('device')} {b.get('dtype')}, image {img} "
                 f"({profile.image_tokens} image tokens){' [tiny model]' if tiny else ''}\n{profile.machine}; "
                 f"{profile.timer}", fontsize=9)
    return _save(fig, path), "time of each part of the model per forward, stacked, per batch size"
