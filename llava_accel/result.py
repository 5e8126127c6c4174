"""The result of ``measure()``: plain dataclasses that hold only JSON types, and a readable table.

``to_dict()`` / ``to_json()`` write everything, including every prediction with its references and every timed
batch, so any figure can be recomputed; ``MeasureResult.from_json`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ResultsFileError
from .metrics.drift import Drift
from .metrics.latency import Stats
from .metrics.memory import MemoryResult
from .outputs import write_atomic


@dataclass
class Prediction:
    id: str
    prompt: str  # the prompt the model saw (after any max_input_len cut), before the chat template
    prediction: str
    references: list[str]
    new_tokens: int  # generated tokens, EOS and padding excluded
    token_ids: list[int] = field(default_factory=list)  # those tokens (drift compares them)
    original_prompt: str | None = None  # the sample's prompt, when the model saw a cut one (else None)


@dataclass
class BatchRecord:
    """One timed batch, as measured."""

    size: int
    latency_s: float  # end to end: preprocessing, generation, decoding to text
    ttft_s: float | None  # batch start to the first generated token (None: the backend did not stream)
    decode_s: float | None  # first generated token to the end of generation
    steps: int  # generation steps the batch ran (every row runs until the last one stops)
    new_tokens: int  # sum over rows of generated tokens, EOS and padding excluded
    energy_j: float
    prompt_len: int | None = None  # padded prompt length (tokens), filled by the FLOP pass
    flops: float | None = None  # prefill + decode FLOPs of this batch


@dataclass
class LatencyResult:
    per_batch: Stats | None  # over full timed batches (a smaller last batch is left out of these statistics)
    per_sample_s: float | None  # all timed wall time / samples
    ttft: Stats | None  # time to first token, per batch
    tpot: Stats | None  # time per output token in the decode phase: decode_s / (steps - 1), per batch
    tokens_per_s: float | None  # generated tokens (all rows) / timed wall time
    timed_batches: int
    total_s: float


@dataclass
class EnergyResult:
    source: str  # nvml-energy-counter | nvml-power-sampling | rapl | estimated
    label: str  # "measured" or "estimated"
    scope: str  # what the joules cover, in words
    total_j: float
    joules_per_batch: float | None  # mean over full timed batches
    joules_per_sample: float | None
    joules_per_token: float | None  # per generated token (EOS and padding excluded)
    mean_power_w: float | None  # total_j / timed wall time
    idle_power_w: float | None  # measured before the run with the same source; reported, never subtracted
    note: str = ""


@dataclass
class FlopsResult:
    counter: str
    convention: str  # what is counted, in words
    prefill_per_sample: float  # mean over samples of their batch's prefill FLOPs / batch size
    per_generated_token: float | None  # mean decode-step FLOPs per row
    total: float  # prefill + decode FLOPs of all timed batches
    achieved_flops_per_s: float | None  # total / timed wall time
    peak_flops_per_s: float | None
    peak_source: str
    mfu: float | None  # achieved / peak (a fraction)
    cross_check: dict[str, Any] | None = None


@dataclass
class Validity:
    valid: bool
    reasons: list[str]  # why not valid (empty when valid)
    checks: dict[str, bool]


@dataclass
class ProcessResult:
    """One process of a data-parallel run (``accelerate launch``): where it ran and its own figures."""

    rank: int
    host: str
    device: str
    samples: int
    batches: int
    latency: LatencyResult  # over its own batches; total_s: its timed time
    energy: EnergyResult  # from its own meter, with its own source and label
    memory: MemoryResult
    backend_stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why it stopped early


@dataclass
class MeasureResult:
    wer: float | None  # percent; None when no sample has a reference
    native: dict[str, Any]  # the task's own metric (VQA accuracy, CIDEr, letter accuracy), when it has one
    predictions: list[Prediction]
    latency: LatencyResult
    energy: EnergyResult
    flops: FlopsResult | None  # None when not counted (count_flops=False, FLOP pass failed, or interrupted)
    memory: MemoryResult
    validity: Validity
    config: dict[str, Any]
    environment: dict[str, Any]
    batches: list[BatchRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drift: Drift | None = None  # from measure(..., reference=...): see llava_accel/metrics/drift.py
    backend_stats: dict[str, Any] = field(default_factory=dict)  # Backend.stats() over the timed batches
    processes: list[ProcessResult] = field(default_factory=list)  # data parallel: one per process (docs/scaling.md)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 1) -> str:
        """The result as JSON text; also written to ``path`` (atomically: a crash never leaves half a file)."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            write_atomic(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MeasureResult":
        return _build(cls, data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "MeasureResult":
        """Read a result written by ``to_json``; a one-line ``ResultsFileError`` when the file holds none."""
        data = read_json(path, "a measure result", ("config", "predictions", "latency"))
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsFileError(f"{path} is not a measure result of this version: {type(exc).__name__}: "
                                   f"{exc}") from None

    def summary(self) -> dict[str, Any]:
        """One flat row (units in the keys): what ``--format csv|md|json`` prints, one column per figure."""
        c, b, lat, en, fl = self.config, self.config.get("backend", {}), self.latency, self.energy, self.flops
        ms = lambda st, f: None if st is None else getattr(st, f) * 1e3  # noqa: E731
        return {
            "backend": b.get("backend"), "device": b.get("device"), "dtype": b.get("dtype"),
            "quantize": b.get("quantize"), "model": b.get("model"), "weights": b.get("weights"),
            "task": c.get("dataset"), "samples": c.get("samples"), "batch_size": c.get("batch_size"),
            "wer_percent": self.wer, **self.native,
            "latency_ms_per_batch": ms(lat.per_batch, "mean"), "latency_ms_per_batch_sd": ms(lat.per_batch, "stdev"),
            "latency_ms_per_batch_p90": ms(lat.per_batch, "p90"),
            "latency_ms_per_sample": None if lat.per_sample_s is None else lat.per_sample_s * 1e3,
            "ttft_ms": ms(lat.ttft, "mean"), "ttft_ms_sd": ms(lat.ttft, "stdev"),
            "ms_per_token": ms(lat.tpot, "mean"), "ms_per_token_sd": ms(lat.tpot, "stdev"),
            "tokens_per_s": lat.tokens_per_s, "timed_batches": lat.timed_batches,
            "energy_j_per_sample": en.joules_per_sample,
            "energy": en.source if en.label == en.source else f"{en.label} ({en.source})",
            "prefill_flops_per_sample": fl.prefill_per_sample if fl else None,
            "mfu_percent": None if fl is None or fl.mfu is None else 100 * fl.mfu,
            "identical_to_reference": self.drift.identical if self.drift else None,
            "rss_peak_mib": None if self.memory.rss_peak_bytes is None else self.memory.rss_peak_bytes / 2**20,
            "valid": self.validity.valid, "reasons": list(self.validity.reasons)}

    def __str__(self) -> str:
        return format_table(self)


def read_json(path: str | os.PathLike, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, with ``keys``; else a one-line ``ResultsFileError`` saying it is not ``what``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultsFileError(f"{path} not found; pass {what} (a JSON file written by llava-accel)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsFileError(f"{path} is not {what}: cannot read it as JSON ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path} is not {what}: it holds a JSON {type(data).__name__}, not an object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ResultsFileError(f"{path} is not {what}: it has no '{missing[0]}'")
    return data


def _build(tp: Any, value: Any) -> Any:
    """Rebuild dataclasses (also inside ``X | None`` and ``list[X]``) from ``asdict`` output."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_build(item, v) for v in value]
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value})
    return value


# -- the table ----------------------------------------------------------------------------------------------------
def _si(x: float | None, unit: str, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}"


def _s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def _bytes(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _stats(st: Stats | None) -> str:
    if st is None:
        return "n/a"
    return (f"mean {_s(st.mean)}  p50 {_s(st.p50)}  p90 {_s(st.p90)}  p99 {_s(st.p99)}  stdev {_s(st.stdev)}  "
            f"(n={st.n}, cv {100 * st.cv:.1f}%)")


def format_table(m: MeasureResult) -> str:
    c, lat, en, fl, mem = m.config, m.latency, m.energy, m.flops, m.memory
    b = c.get("backend", {})
    meaningless = "  (meaningless: weights: random)" if b.get("weights") == "random" else ""
    rows: list[tuple[str, str]] = [
        ("backend", f"{b.get('backend')}  {b.get('device')} {b.get('dtype')} attention={b.get('attention')} "
                    f"threads={b.get('threads')}" + (f" quantize={b['quantize']}" if b.get("quantize") else "")),
        ("model", f"{b.get('model')}  (weights: {b.get('weights')}"
                  + (f", made in {b['weights_init_s']:.1f} s" if b.get("weights_init_s") is not None else "")
                  + (f", peak RSS {_bytes(b['init_rss_peak_bytes'])} by then" if b.get("init_rss_peak_bytes") else "")
                  + ")"),
        ("data", f"{c.get('dataset')}: {c.get('samples')} samples, batch {c.get('batch_size')}, "
                 f"max_new_tokens {c.get('max_new_tokens')}{' (fixed)' if c.get('fixed_new_tokens') else ''}"),
        ("inputs", f"max_input_len {c.get('max_input_len')} ({c.get('truncated_samples', 0)} prompts cut), "
                   f"{c.get('image_tokens')} image tokens per image (img_size {c.get('img_size') or 'native'}), "
                   f"{len(c.get('skipped_samples', []))} samples skipped"),
        ("", ""),
        ("WER", "n/a (no references)" if m.wer is None else f"{m.wer:.2f} %{meaningless}"),
    ]
    rows += [(k, (f"{v:.4g}" if isinstance(v, float) else str(v)) + meaningless) for k, v in m.native.items()]
    rows += m.drift.rows() if m.drift else []
    rows += [
        ("latency / batch", _stats(lat.per_batch)),
        ("latency / sample", _s(lat.per_sample_s)),
        ("TTFT", _stats(lat.ttft)),
        ("time / output token", _stats(lat.tpot)),
        ("throughput", "n/a" if lat.tokens_per_s is None else f"{lat.tokens_per_s:.1f} tokens/s"),
    ]
    tag = f" ({en.label})"
    rows += [
        (f"energy{tag}", f"{en.source}: {en.scope}"),
        ("  J / batch", _si(en.joules_per_batch, "J") + tag),
        ("  J / sample", _si(en.joules_per_sample, "J") + tag),
        ("  J / token", _si(en.joules_per_token, "J") + tag),
        ("  mean power", _si(en.mean_power_w, "W") + tag),
        ("  idle power", _si(en.idle_power_w, "W") + (tag if en.idle_power_w is not None else "")),
    ]
    if fl is None:
        rows.append(("FLOPs", "not counted"))
    else:
        rows += [
            ("FLOPs prefill / sample", _si(fl.prefill_per_sample, "FLOP", 4)),
            ("FLOPs / generated token", _si(fl.per_generated_token, "FLOP", 4)),
            ("FLOPs total", _si(fl.total, "FLOP", 4)),
            ("achieved", _si(fl.achieved_flops_per_s, "FLOP/s")),
            ("MFU", "n/a" if fl.mfu is None else f"{100 * fl.mfu:.2f} % of {_si(fl.peak_flops_per_s, 'FLOP/s')} "
                                                 f"({fl.peak_source})"),
        ]
        if fl.cross_check:
            rows.append(("FLOP cross-check", json.dumps(fl.cross_check)))
    rows += [(f"backend: {k}", f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in m.backend_stats.items()]
    rows += [(f"process {p.rank}", f"{p.device} on {p.host}: {p.samples} samples, {p.batches} batches; latency / "
                                   f"batch p50 {_s(p.latency.per_batch and p.latency.per_batch.p50)}; energy "
                                   f"{_si(p.energy.total_j, 'J')} ({p.energy.label}: {p.energy.source})"
                                   + (f"; {p.error}" if p.error else "")) for p in m.processes]
    rows += [
        ("peak device memory", _bytes(mem.device_peak_bytes)),
        ("peak RSS", f"{_bytes(mem.rss_peak_bytes)} ({mem.rss_scope})"),
        ("", ""),
        ("verdict", "VALID" if m.validity.valid else "NOT VALID: " + "; ".join(m.validity.reasons)),
    ]
    rows += [("note", n) for n in m.notes]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in rows)
