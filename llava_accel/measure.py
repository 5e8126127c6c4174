"""``measure()``: quality, latency, energy, FLOPs and memory of one backend on real inputs, in one call.

The loop only calls the ``Backend`` interface (``generate`` with a streamer, ``prepare`` for the untimed FLOP pass,
``describe``): it never knows which backend it times. Definitions of every figure: docs/metrics.md.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import torch

from . import checks, distributed
from .errors import DatasetError
from .interrupts import HeldInterrupts
from .metrics import environment
from .metrics.drift import compare
from .metrics.energy import EnergyMeter, idle_power, open_meter
from .metrics.flops import FlopModel, fvcore_prefill_flops
from .metrics.latency import TimingStreamer, summarize
from .metrics.memory import MemoryTracker
from .metrics.mfu import device_peak
from .metrics.wer import corpus_wer
from .outputs import OutputFile, check_file
from .result import (BatchRecord, EnergyResult, FlopsResult, LatencyResult, MeasureResult, Prediction, Validity)
from .metrics.caption import caption_scoring
from .metrics.ptb import PTB_PYTHON, check_ptb_tokenizer
from .tasks import TASKS, Sample, load_task, native_metric, task_kind, task_max_new_tokens

DEFAULT_MAX_NEW_TOKENS = 32
MIN_TIMED_BATCHES = 5
MAX_CV = 0.10
CHECKPOINT_EVERY_S = 30.0
FLOP_COUNTERS = ("torch", "fvcore")
FLOP_CONVENTION = ("FlopCounterMode, 2 FLOPs per multiply-add (matmuls, convolutions, attention); model FLOPs of "
                   "greedy decoding with this architecture, whatever the backend executes; prefill with the LM head "
                   "on the last position only, as generate() does")


def measure(backend: Any, dataset: str | Iterable[Sample], batch_size: int = 1, max_input_len: int | None = None,
            max_new_tokens: int | None = None, limit: int | None = None, warmup: int = 2, seed: int = 0,
            count_flops: bool = True, *, fixed_new_tokens: bool = False, img_size: int | None = None,
            flop_counter: str = "torch", idle_seconds: float = 1.0, min_timed_batches: int = MIN_TIMED_BATCHES,
            max_cv: float = MAX_CV, progress: bool | None = None,
            checkpoint: str | os.PathLike | None = None, reference: MeasureResult | None = None,
            ptb_tokenizer: str = PTB_PYTHON) -> MeasureResult:
    """Measure ``backend`` on ``dataset`` (a task name or an iterable of ``Sample``).

    Every sample is generated once in timed batches of ``batch_size``, after ``warmup`` untimed batches (taken from
    the start of the data). ``max_new_tokens=None`` uses the task's budget (else 32); ``fixed_new_tokens=True``
    forces exactly ``max_new_tokens`` per answer (``min_new_tokens=max_new_tokens``) so that backends do equal work.
    ``max_input_len``: a cap on each prompt's text tokens (docs/tasks.md); None (the default) cuts nothing, as
    lmms-eval does. Each prediction records the prompt the model saw, and the original beside it when it was cut.
    ``ptb_tokenizer``: how captions are tokenized for their metrics, "python" or "java" (pycocoevalcap's own jar;
    needs pycocoevalcap and Java); ``config["caption_scoring"]`` records it, and METEOR's jar or why it is absent.
    ``checkpoint``: a JSON path (or an ``outputs.OutputFile``, to learn where it went) checked first, then rewritten
    every 30 s, on failure and at the end, so a long run never loses what it measured; when its place fails during
    the run, the result goes to a temporary file and stderr says where. Ctrl-C at any moment returns (and writes)
    what was measured, marked not valid (``validity.checks["complete"]`` False): during a batch it stops the run
    there, during the FLOP pass it skips the FLOPs, later it is held until the result is built and written.
    ``reference``: a result on the same samples (e.g. the same backend unquantised): the result then carries its
    drift from it (``result.drift``: identical answers, common prefix, change in WER and native metric).
    """
    check_arguments({"batch_size": batch_size, "max_input_len": max_input_len, "max_new_tokens": max_new_tokens,
                     "limit": limit, "warmup": warmup, "seed": seed, "img_size": img_size, "flop_counter": flop_counter,
                     "min_timed_batches": min_timed_batches})
    check_ptb_tokenizer(ptb_tokenizer)
    if checkpoint is not None and not isinstance(checkpoint, OutputFile) and distributed.is_main_process():
        checkpoint = OutputFile(check_file(checkpoint, "checkpoint file"))  # before the data loads
    started = datetime.now(timezone.utc)
    samples, dataset_name = _samples(dataset, limit, seed)
    loaded = samples if hasattr(samples, "skipped") else dataset  # a SampleSet knows its source and skipped rows
    budget = max_new_tokens if max_new_tokens is not None else (task_max_new_tokens(dataset_name)
                                                                  or DEFAULT_MAX_NEW_TOKENS)
    torch.manual_seed(seed)
    run = _Run(backend, samples, batch_size, budget, budget if fixed_new_tokens else None, max_input_len, img_size)
    run.config = {
        "backend": backend.describe(), "dataset": dataset_name, "source": getattr(loaded, "source", None),
        "skipped_samples": [list(s) for s in getattr(loaded, "skipped", [])], "samples": len(samples),
        "batch_size": batch_size, "batches": len(run.batches), "max_input_len": max_input_len, "img_size": img_size,
        "max_new_tokens": budget, "fixed_new_tokens": fixed_new_tokens, "limit": limit, "warmup": warmup,
        "seed": seed, "count_flops": count_flops, "flop_counter": flop_counter,
        "min_timed_batches": min_timed_batches, "max_cv": max_cv, "started_at": started.isoformat(timespec="seconds")}
    if task_kind(dataset_name) == "caption":
        run.config["caption_scoring"] = caption_scoring(ptb_tokenizer, meteor=dataset_name in TASKS)
    dp = distributed.data_parallel()  # None unless started by `accelerate launch` with several processes
    if dp:  # whole batches, so each is the batch one process would run: the same predictions (docs/scaling.md)
        run.config["data_parallel"] = dp.describe()
        run.batches = dp.shard(run.batches)
        checkpoint = checkpoint if dp.is_main else None
    run.memory = MemoryTracker(backend.device)
    run.meter = open_meter(*getattr(backend, "devices", [backend.device]))  # several: a model spread by device_map
    show = (sys.stderr.isatty() if progress is None else progress) and distributed.is_main_process()
    # Ctrl-C stops a batch or the FLOP pass at once; anywhere else it is held until the result is built and written
    with HeldInterrupts() as held:
        error, timing = None, False
        try:
            with held.released(), distributed.step("warm-up"):  # a process that cannot start fails them all now
                run.idle_w = idle_power(run.meter, idle_seconds) if run.meter.measured and idle_seconds > 0 else None
                for i in range(warmup if run.batches else 0):
                    run.generate(run.batches[i % len(run.batches)], streamer=None)
                getattr(backend, "reset_stats", lambda: None)()  # backend counters cover the timed batches only
            timing = True
            last_checkpoint, total = time.monotonic(), sum(map(len, run.batches))
            for batch in run.batches:
                if held.count:  # Ctrl-C between two batches (progress line, checkpoint)
                    break
                with held.released():
                    run.time_batch(batch)
                if show:
                    _print_progress(run, total)
                if checkpoint and not dp and time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                    checkpoint.write_text(run.result(min_timed_batches, max_cv, final=False).to_json())
                    last_checkpoint = time.monotonic()
        except KeyboardInterrupt:
            run.interrupted = True
        except BaseException as exc:
            if dp and timing:  # the others are timing or waiting at the gather: report it there, with what was measured
                error = exc
            else:
                if checkpoint and run.records:
                    checkpoint.write_text(run.result(min_timed_batches, max_cv, final=False).to_json())
                raise
        finally:
            run.meter.close()
            if show:
                sys.stderr.write("\n")
        run.interrupted = run.interrupted or held.count > 0
        if count_flops and not run.interrupted and error is None and run.records:
            try:
                with held.released():
                    run.count_flops(flop_counter)
            except KeyboardInterrupt:
                run.interrupted, run.flop_error = True, "interrupted (Ctrl-C)"
        parts, lost = None, None
        if dp:
            own = distributed.part(dp, run, error)
            try:
                parts = dp.exchange(own, "gathering the results")
            except distributed.DataParallelError as exc:  # a process hung or died: keep what this one measured
                parts, lost = [own], exc
            run = distributed.merge(run, parts, dp.world)
        result = run.result(min_timed_batches, max_cv)
        if parts:
            distributed.complete(result, parts, lost)
        result.config["duration_s"] = (datetime.now(timezone.utc) - started).total_seconds()
        if reference is not None:
            result.drift = compare(reference, result)
        if held.count and not run.interrupted:  # Ctrl-C while the result was being built: say so in it
            run.interrupted = True
            result.validity = run._validity(min_timed_batches, max_cv)
        if checkpoint:
            checkpoint.write_text(result.to_json())
    if parts:  # after the checkpoint: a failed job keeps what its processes measured
        if lost:
            raise lost
        dp.check([p.error for p in parts], error, "measure")
    return result


# measure()'s keyword arguments that take a user's value -> its check (also run on a sweep's measure_options)
ARGUMENT_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "batch_size": checks.positive_int, "warmup": checks.non_negative_int, "seed": checks.integer,
    "min_timed_batches": checks.non_negative_int, "flop_counter": lambda v, n: checks.one_of(v, n, FLOP_COUNTERS),
    **{name: functools.partial(checks.optional, checks.positive_int)
       for name in ("max_input_len", "max_new_tokens", "limit", "img_size")},
}


def check_arguments(arguments: dict[str, Any]) -> None:
    """A one-line ``OptionError`` for the first argument of ``measure()`` whose value it cannot take."""
    for name, value in arguments.items():
        if name in ARGUMENT_CHECKS:
            ARGUMENT_CHECKS[name](value, name)


def _samples(dataset: str | Iterable[Sample], limit: int | None, seed: int) -> tuple[Sequence[Sample], str]:
    if isinstance(dataset, str):
        samples, name = load_task(dataset, limit=limit, seed=seed), dataset
    else:
        samples = dataset if limit is None and isinstance(dataset, Sequence) else list(itertools.islice(dataset, limit))
        tasks = {getattr(s, "task", "") for s in samples}
        name = tasks.pop() if len(tasks) == 1 and "" not in tasks else "custom"
    if not samples:
        skipped = getattr(samples, "skipped", None) or getattr(dataset, "skipped", [])
        raise DatasetError("no samples to measure" + (f": all {len(skipped)} were skipped (first: "
                                                       f"{skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    for s in samples:
        if not isinstance(s, Sample):
            raise DatasetError(f"dataset items must be llava_accel.Sample, got {type(s).__name__}")
        checks.prompt(s.prompt, f"the prompt of sample {s.id!r}")
    return samples, name


def _print_progress(run: "_Run", total: int) -> None:
    done = sum(r.size for r in run.records)
    elapsed = sum(r.latency_s for r in run.records)
    eta = elapsed / done * (total - done)
    sys.stderr.write(f"\rmeasure: {done}/{total} samples, {elapsed / len(run.records):.3f} s/batch, "
                     f"ETA {int(eta // 60)}m{int(eta % 60):02d}s ")
    sys.stderr.flush()


@dataclass
class _Run:
    """The state of one measurement; ``result()`` can be called at any point (partial results)."""

    backend: Any
    samples: Sequence[Sample]
    batch_size: int
    max_new_tokens: int
    min_new_tokens: int | None
    max_input_len: int | None = None  # text-token cap on prompts (docs/tasks.md: context cut first, then question)
    img_size: int | None = None  # image side fed to the vision tower (None: the model's own)
    config: dict[str, Any] = field(default_factory=dict)
    memory: MemoryTracker | None = None
    meter: EnergyMeter | None = None
    idle_w: float | None = None
    records: list[BatchRecord] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    flops: FlopsResult | None = None
    flop_error: str | None = None
    interrupted: bool = False
    truncated: list[str] = field(default_factory=list)  # ids of the timed samples whose prompt was cut
    image_tokens: int | None = None  # per image, as run
    wall_s: float | None = None  # data parallel: the slowest process's timed time (None: the sum of batch latencies)

    def __post_init__(self) -> None:
        self.batches = [self.samples[i:i + self.batch_size] for i in range(0, len(self.samples), self.batch_size)]
        self.sync = (lambda: torch.cuda.synchronize(self.backend.device)) if self.backend.device.type == "cuda" else None

    def generate(self, batch: Sequence[Sample], streamer: TimingStreamer | None) -> list:
        return self.backend.generate([s.image for s in batch], [s.prompt for s in batch],
                                     max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                                     streamer=streamer, **self.knobs(batch))

    def knobs(self, batch: Sequence[Sample]) -> dict[str, Any]:
        return {"max_input_len": self.max_input_len, "img_size": self.img_size, "fields": [s.fields for s in batch]}

    def time_batch(self, batch: Sequence[Sample]) -> None:
        streamer = TimingStreamer(self.sync)
        e0 = self.meter.read()
        t0 = streamer.stamp()
        outputs = self.generate(batch, streamer)
        t1 = streamer.stamp()
        e1 = self.meter.read()
        first, end = streamer.first_token_at, streamer.end_at
        lengths = [len(o.token_ids) for o in outputs]
        # a row shorter than the budget stopped at EOS, which took one more step
        steps = max(n + (n < self.max_new_tokens) for n in lengths)
        self.records.append(BatchRecord(
            size=len(batch), latency_s=t1 - t0, ttft_s=None if first is None else first - t0,
            decode_s=None if first is None or end is None else end - first, steps=steps, new_tokens=sum(lengths),
            energy_j=e1 - e0))
        self.predictions += [Prediction(s.id, o.prompt or s.prompt, o.text, list(s.references), n, list(o.token_ids),
                                        s.prompt if o.prompt and o.prompt != s.prompt else None)
                             for s, o, n in zip(batch, outputs, lengths)]
        self.truncated += [s.id for s, o in zip(batch, outputs) if o.truncated]
        self.image_tokens = outputs[0].image_tokens if outputs else self.image_tokens

    def count_flops(self, counter: str) -> None:
        """The untimed FLOP pass: each timed batch's real prompt shape, on a weightless twin of the model."""
        try:
            config = self.backend.model.config
            models: dict[tuple[int, int], FlopModel] = {}
            prefill = decode = 0.0
            rows_steps = 0
            first_inputs = None
            for batch, record in zip(self.batches, self.records):
                inputs = self.backend.prepare([s.image for s in batch], [s.prompt for s in batch], **self.knobs(batch))
                first_inputs = first_inputs or inputs
                size = tuple(inputs["pixel_values"].shape[-2:])
                if size not in models:
                    models[size] = FlopModel.fit(config, size, logits="last")
                model = models[size]
                seq_len = inputs["input_ids"].shape[1]
                p, d = model.prefill(seq_len, record.size), model.decode(seq_len, record.steps, record.size)
                record.prompt_len, record.flops = seq_len, p + d
                prefill, decode, rows_steps = prefill + p, decode + d, rows_steps + record.size * (record.steps - 1)
            total = prefill + decode
            wall = sum(r.latency_s for r in self.records)
            peak = device_peak(self.backend.device)
            achieved = total / wall if wall else None
            self.flops = FlopsResult(
                counter="torch.utils.flop_counter.FlopCounterMode", convention=FLOP_CONVENTION,
                prefill_per_sample=prefill / sum(r.size for r in self.records),
                per_generated_token=decode / rows_steps if rows_steps else None, total=total,
                achieved_flops_per_s=achieved, peak_flops_per_s=peak.flops_per_s, peak_source=peak.source,
                mfu=achieved / peak.flops_per_s if achieved and peak.flops_per_s else None)
            if counter == "fvcore":
                self.flops.cross_check = _fvcore_cross_check(self.backend.model, first_inputs,
                                                             models[tuple(first_inputs["pixel_values"].shape[-2:])])
        except Exception as exc:  # a FLOP pass that fails must not lose the timed results
            self.flop_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def result(self, min_timed_batches: int, max_cv: float, final: bool = True) -> MeasureResult:
        """The result so far; ``final=False`` (a checkpoint) leaves out METEOR, whose jar takes seconds to start."""
        done = self.samples[:len(self.predictions)]
        predictions = [p.prediction for p in self.predictions]
        notes: list[str] = []
        scoring = self.config.get("caption_scoring", {})
        if scoring.get("meteor", "").startswith("absent: needs"):
            notes.append(f"METEOR {scoring['meteor']}")
        score = corpus_wer(predictions, [p.references for p in self.predictions])
        try:
            tokenizer = scoring.get("ptb_tokenizer", PTB_PYTHON)
            native = native_metric(done, predictions, tokenizer, meteor=final) if done else {}
        except Exception as exc:  # another module's metric must not lose the measured run
            native = {}
            notes.append(f"native metric failed: {type(exc).__name__}: {exc}")
        if self.config.get("fixed_new_tokens"):
            notes.append("fixed_new_tokens: answers are forced to full length, so quality is not comparable with a "
                         "free-length run")
        if self.config.get("skipped_samples"):
            notes.append(f"{len(self.config['skipped_samples'])} samples skipped (missing or unreadable image): "
                         "see config.skipped_samples")
        if self.truncated:
            notes.append(f"{len(self.truncated)} of {len(self.predictions)} prompts cut to max_input_len="
                         f"{self.max_input_len} text tokens (context first, then the question's tail; docs/tasks.md)")
        config = {**self.config, "truncated_samples": len(self.truncated), "image_tokens": self.image_tokens}
        latency = self._latency()
        return MeasureResult(
            wer=score.wer, native=native, predictions=list(self.predictions), latency=latency,
            energy=self._energy(latency), flops=self.flops, memory=self.memory.result(),
            validity=self._validity(min_timed_batches, max_cv), config=config,
            environment=environment.collect(self.backend.device), batches=list(self.records), notes=notes,
            backend_stats=dict(getattr(self.backend, "stats", dict)()))

    def _full(self) -> list[BatchRecord]:
        return [r for r in self.records if r.size == self.batch_size]

    def _latency(self) -> LatencyResult:
        full, recs = self._full(), self.records
        total = sum(r.latency_s for r in recs) if self.wall_s is None else self.wall_s
        n = sum(r.size for r in recs)
        return LatencyResult(
            per_batch=summarize([r.latency_s for r in full]), per_sample_s=total / n if n else None,
            ttft=summarize([r.ttft_s for r in full]),
            tpot=summarize([r.decode_s / (r.steps - 1) for r in full if r.decode_s is not None and r.steps > 1]),
            tokens_per_s=sum(r.new_tokens for r in recs) / total if total else None, timed_batches=len(recs),
            total_s=total)

    def _energy(self, latency: LatencyResult) -> EnergyResult:
        m, recs, full = self.meter, self.records, self._full()
        total = sum(r.energy_j for r in recs)
        n, tokens = sum(r.size for r in recs), sum(r.new_tokens for r in recs)
        note = m.note if m.measured else "; ".join(filter(None, [
            "no energy counter: an estimate, not a measurement", m.note]))
        return EnergyResult(
            source=m.source, label=m.label, scope=m.scope, total_j=total,
            joules_per_batch=sum(r.energy_j for r in full) / len(full) if full else None,
            joules_per_sample=total / n if n else None, joules_per_token=total / tokens if tokens else None,
            mean_power_w=total / latency.total_s if latency.total_s else None, idle_power_w=self.idle_w, note=note)

    def _validity(self, min_timed_batches: int, max_cv: float) -> Validity:
        checks, reasons = {}, []

        def check(name: str, ok: bool, reason: str) -> None:
            checks[name] = ok
            if not ok:
                reasons.append(reason)

        full = self._full()
        timed_all = len(self.records) == len(self.batches)
        check("complete", not self.interrupted and timed_all,
              f"interrupted after {len(self.records)} of {len(self.batches)} batches" if not timed_all else
              "interrupted (Ctrl-C) after the last batch" + (": FLOPs not counted" if self.config.get("count_flops")
                                                              and self.flops is None else ""))
        check("warmup", self.config.get("warmup", 0) >= 1,
              "no warm-up batch: the first timed batch includes one-off costs (allocation, kernel selection)")
        check("timed_batches", len(full) >= min_timed_batches,
              f"{len(full)} full timed batches, fewer than {min_timed_batches}: pass more samples (limit) or a "
              f"smaller batch size")
        cv, what = self._stability(full)
        check("stable", cv is not None and cv <= max_cv,
              "latency stability unknown (fewer than 2 batches)" if cv is None else
              f"{what} varies too much: coefficient of variation {100 * cv:.1f}% > {100 * max_cv:.0f}% (another "
              f"process on the machine? more warm-up?)")
        weights = getattr(getattr(self.backend, "loaded", None), "weights", None)
        check("weights", weights != "random", "weights: random (no_weights): WER, the task's metric and drift are "
              "meaningless; latency, energy, FLOPs and memory stand")
        if self.config.get("count_flops") and not self.interrupted:
            check("flops", self.flops is not None, f"FLOP pass failed: {self.flop_error}")
        return Validity(not reasons, reasons, checks)

    def _stability(self, full: list[BatchRecord]) -> tuple[float | None, str]:
        """CV of the batch latency when every batch does equal work (fixed_new_tokens), else of the time per
        output token (free-length answers make batch latency vary with their length, not with noise)."""
        if not self.config.get("fixed_new_tokens"):
            tpot = [r.decode_s / (r.steps - 1) for r in full if r.decode_s is not None and r.steps > 1]
            if len(tpot) >= 2:
                return summarize(tpot).cv, "time per output token"
        stats = summarize([r.latency_s for r in full])
        return (stats.cv if stats and stats.n >= 2 else None), "batch latency"


def _fvcore_cross_check(model: Any, inputs: dict[str, torch.Tensor], flop_model: FlopModel) -> dict[str, Any]:
    batch, seq_len = inputs["input_ids"].shape
    ours = flop_model.prefill(seq_len, batch)
    try:
        theirs = fvcore_prefill_flops(model, inputs, logits="last")
    except Exception as exc:  # fvcore missing, or the model cannot be traced (compiled, quantized kernels)
        return {"counter": "fvcore", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"counter": "fvcore (x2: it counts a multiply-add as one FLOP)", "batch": batch, "prompt_len": seq_len,
            "fvcore_prefill_flops": theirs, "flopcounter_prefill_flops": ours,
            "ratio": theirs / ours if ours else None}
