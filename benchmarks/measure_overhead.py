"""How much ``measure()`` adds over a bare ``generate`` loop on the same batches, measured side by side.

Both sides do identical work (same backend, same batches, ``min_new_tokens = max_new_tokens``).

- per batch: the exact per-batch code of ``measure()`` (``_Run.time_batch``: timing streamer, device
  synchronisation, energy reads, bookkeeping) against a bare ``backend.generate`` timed from outside, interleaved
  batch by batch with alternating order, so that load from other processes hits both alike. Reported: the ratio of
  the summed times and the median of the per-pair ratios. This is the overhead a long run pays.
- whole call: ``measure()`` (warm-up, timed batches, WER, result; no FLOP pass) against a bare loop over the same
  warm-up and batches, alternating; plus the same with the FLOP pass (untimed by measure(), but wall time). These
  include measure()'s fixed costs (energy meter, environment, metrics), which a short run feels most.
- instrumentation alone: ``_Run.time_batch`` around a backend that generates nothing but calls the streamer as
  many times as a real batch does; its cost over the bare batch time is the overhead with the machine's noise
  taken out (on a busy machine the paired ratios above scatter by tens of percent).

    python benchmarks/measure_overhead.py [--backend cpu] [--model M] [--samples 8] [--new-tokens 16] [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import llava_accel as la
from llava_accel.backends.base import GenerationOutput
from llava_accel.measure import _Run
from llava_accel.metrics.energy import open_meter
from llava_accel.metrics.environment import collect
from llava_accel.tasks import load_task


def bare_batch(backend, batch, new_tokens: int) -> float:
    t0 = time.perf_counter()
    backend.generate([s.image for s in batch], [s.prompt for s in batch], max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens)
    return time.perf_counter() - t0


def instrumented_batch(run: _Run, batch) -> float:
    t0 = time.perf_counter()
    run.time_batch(batch)
    return time.perf_counter() - t0


class NullBackend:
    """Generates nothing, but streams like a real backend: the prompt, one put per step, then end."""

    device = torch.device("cpu")

    def generate(self, images, prompts, max_new_tokens, min_new_tokens=None, streamer=None, **_):
        streamer.put(torch.zeros(len(prompts), 80, dtype=torch.long))
        for _ in range(max_new_tokens):
            streamer.put(torch.zeros(len(prompts), dtype=torch.long))
        streamer.end()
        return [GenerationOutput("a red circle", [7] * max_new_tokens) for _ in prompts]


def instrumentation_s(samples, batches, args, repeats: int = 200) -> float:
    """Median seconds of measure()'s per-batch code around a backend that takes no time."""
    run = _Run(NullBackend(), samples, args.batch_size, args.new_tokens, args.new_tokens)
    run.meter = open_meter("cpu")
    times = [instrumented_batch(run, batches[i % len(batches)]) for i in range(repeats)]
    run.meter.close()
    return statistics.median(times)


def whole_call(backend, samples, batches, args, kind: str) -> float:
    t0 = time.perf_counter()
    if kind == "bare":
        for batch in batches[:args.warmup] + batches:
            bare_batch(backend, batch, args.new_tokens)
    else:
        la.measure(backend, samples, batch_size=args.batch_size, max_new_tokens=args.new_tokens,
                   fixed_new_tokens=True, warmup=args.warmup, count_flops=kind == "measure+flops", idle_seconds=0,
                   progress=False)
    return time.perf_counter() - t0


def summary(pairs: list[tuple[float, float]]) -> dict:
    ratios = sorted(b / a for a, b in pairs)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"ratio_of_sums": sum(b for _, b in pairs) / sum(a for a, _ in pairs), "median_ratio": q[1],
            "iqr": [q[0], q[2]], "pairs": len(pairs), "bare_median_s": statistics.median(a for a, _ in pairs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--model", default=None)
    p.add_argument("--task", default="synthetic-coco")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()

    backend = la.load_backend(args.backend, model=args.model)
    samples = list(load_task(args.task, limit=args.samples))
    batches = [samples[i:i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    run = _Run(backend, samples, args.batch_size, args.new_tokens, args.new_tokens)
    run.meter = open_meter(backend.device)
    for batch in batches[:args.warmup]:
        bare_batch(backend, batch, args.new_tokens)

    per_batch = []
    for r in range(args.repeats):
        for i, batch in enumerate(batches):
            if (r + i) % 2:
                per_batch.append((bare_batch(backend, batch, args.new_tokens), instrumented_batch(run, batch)))
            else:
                b = instrumented_batch(run, batch)
                per_batch.append((bare_batch(backend, batch, args.new_tokens), b))
    run.meter.close()

    whole = {"measure": [], "measure+flops": []}
    whole_call(backend, samples, batches, args, "measure+flops")  # one-off costs (meta twin, CPU peak) out
    for r in range(args.repeats):
        for kind in whole:
            pair = [None, None]
            for side in (("bare", kind) if r % 2 else (kind, "bare")):
                pair[side != "bare"] = whole_call(backend, samples, batches, args, side)
            whole[kind].append(tuple(pair))

    env = collect(backend.device)
    per_batch_summary = summary(per_batch)
    alone = instrumentation_s(samples, batches, args)
    print(json.dumps({
        "per_batch": per_batch_summary,
        "instrumentation_alone": {"seconds_per_batch": alone,
                                  "ratio": 1 + alone / per_batch_summary["bare_median_s"]},
        "whole_call": summary(whole["measure"]),
        "whole_call_with_flops": summary(whole["measure+flops"]),
        "setup": {**vars(args), "backend": backend.describe(), "timed_batches": len(batches)},
        "machine": {"cpu": env["cpu"], "gpu": env["gpu"], "torch": env["versions"].get("torch")},
    }, indent=1))


if __name__ == "__main__":
    main()
