"""How much ``measure()`` adds over a bare ``generate`` loop on the same batches, measured side by side.

Both do identical work (same backend, same batches, ``min_new_tokens = max_new_tokens``); their order alternates
every repetition so that drift on a shared machine hits both. Reported, as medians over repetitions of the per-pair
ratio:

- per batch: measure()'s mean timed batch latency / the bare loop's mean batch time (the cost of the timing
  streamer and device synchronisation inside a batch);
- whole call: measure() wall time (warm-up, timed batches, energy reads, WER, result; no FLOP pass) / the bare
  loop's wall time for the same warm-up and batches;
- whole call with the FLOP pass (untimed by measure(), but it costs wall time): informational.

    python benchmarks/measure_overhead.py [--backend cpu] [--model M] [--samples 8] [--new-tokens 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import llava_accel as la
from llava_accel.metrics.environment import collect
from llava_accel.tasks import load_task


def bare_loop(backend, batches, warmup: int, new_tokens: int) -> tuple[float, float]:
    """(wall seconds of warm-up + batches, mean seconds per timed batch)."""
    start = time.perf_counter()
    for batch in batches[:warmup]:
        backend.generate([s.image for s in batch], [s.prompt for s in batch], max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens)
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        backend.generate([s.image for s in batch], [s.prompt for s in batch], max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens)
        times.append(time.perf_counter() - t0)
    return time.perf_counter() - start, statistics.fmean(times)


def measured(backend, samples, batch_size: int, warmup: int, new_tokens: int, flops: bool) -> tuple[float, float]:
    start = time.perf_counter()
    m = la.measure(backend, samples, batch_size=batch_size, max_new_tokens=new_tokens, fixed_new_tokens=True,
                   warmup=warmup, count_flops=flops, idle_seconds=0, progress=False)
    return time.perf_counter() - start, m.latency.total_s / m.latency.timed_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--model", default=None)
    p.add_argument("--task", default="synthetic-coco")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    backend = la.load_backend(args.backend, model=args.model)
    samples = list(load_task(args.task, limit=args.samples))
    batches = [samples[i:i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    run = {"bare": lambda: bare_loop(backend, batches, args.warmup, args.new_tokens),
           "measure": lambda: measured(backend, samples, args.batch_size, args.warmup, args.new_tokens, False),
           "measure+flops": lambda: measured(backend, samples, args.batch_size, args.warmup, args.new_tokens, True)}
    run["measure+flops"]()  # first call: one-off costs (meta twin, CPU peak) out of the comparison
    pairs = []
    for r in range(args.repeats):
        order = list(run) if r % 2 == 0 else list(reversed(run))
        pairs.append({name: run[name]() for name in order})
    ratio = lambda key, i: statistics.median(p[key][i] / p["bare"][i] for p in pairs)  # noqa: E731
    env = collect(backend.device)
    print(json.dumps({
        "per_batch_ratio": ratio("measure", 1),
        "whole_call_ratio": ratio("measure", 0),
        "whole_call_with_flops_ratio": ratio("measure+flops", 0),
        "bare_batch_s_median": statistics.median(p["bare"][1] for p in pairs),
        "per_batch_ratios": [p["measure"][1] / p["bare"][1] for p in pairs],
        "whole_call_ratios": [p["measure"][0] / p["bare"][0] for p in pairs],
        "setup": {**vars(args), "backend": backend.describe(), "timed_batches": len(batches)},
        "machine": {"cpu": env["cpu"], "gpu": env["gpu"], "torch": env["versions"].get("torch")},
    }, indent=1))


if __name__ == "__main__":
    main()
