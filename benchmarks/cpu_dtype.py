"""Which dtype the ``cpu`` backend should run in, per phase, on this CPU: fp32 with its decode GEMVs split over the
threads (``lean.layer.RowSplitLinear``, the default), fp32 without that split (torch's one-row ``F.linear``), bf16
with its many-row matmuls in fp32 (``llava_accel.upcast``, bf16's default on a CPU without native bf16), bf16 without.

    python benchmarks/cpu_dtype.py [--batches 1,4] [--rounds 3] [--new-tokens 16] [--threads 2] [--out cpu_dtype.json]

The ~247M-parameter random LLaVA of cpu_backends.py (CLIP 224/14, 6 layers; Llama 8 x 1024; vocabulary 32064),
prompts of 273 tokens, exactly ``new-tokens`` new tokens. The rows take turns for ``rounds`` timed calls after one
untimed call each (other work on the machine slows them alike); medians. Reported per row: time to first token
(prefill: vision tower + prompt), decode ms per step, the process CPU time per decode step over its wall time (how
many cores the decode keeps busy; with OpenMP's default spin-waiting a waiting thread counts as busy, so run with
``OMP_WAIT_POLICY=PASSIVE`` to read it as work), weight bytes, and whether the tokens equal the unsplit fp32 row's. The load
average is printed beside the numbers: on a shared machine compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from cpu_backends import config_250m
from gpu_check import random_llava, random_samples

PROMPT_TEXT_TOKENS = 17


def timed(backend: Any, batch: list, new_tokens: int) -> dict[str, Any]:
    from llava_accel.metrics.latency import TimingStreamer

    class CpuStamps(TimingStreamer):
        def put(self, value: Any) -> None:
            first = self.first_token_at
            super().put(value)
            if first is None and self.first_token_at is not None:
                self.first_cpu = time.process_time()

    streamer = CpuStamps()
    start = streamer.stamp()
    out = backend.generate([s.image for s in batch], [s.prompt for s in batch], max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, streamer=streamer)
    end_cpu = time.process_time()
    steps = max(streamer.steps - 1, 1)
    decode = streamer.end_at - streamer.first_token_at
    return {"ttft_s": streamer.first_token_at - start, "decode_step_ms": 1e3 * decode / steps,
            "decode_cores": (end_cpu - streamer.first_cpu) / decode, "tokens": [o.token_ids for o in out]}


def main() -> int:
    import llava_accel as la
    from llava_accel.lean import layer
    from llava_accel.metrics.mfu import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="cpu_dtype.json")
    args = p.parse_args()

    fp32 = random_llava(config_250m(), "cpu", torch.float32, name="random-250m")
    bf16 = random_llava(config_250m(), "cpu", torch.bfloat16, name="random-250m")
    backends = {"fp32 split GEMV": la.load_backend("cpu", model=fp32, dtype="float32", threads=args.threads)}
    split_min, layer.SPLIT_MIN_ELEMENTS = layer.SPLIT_MIN_ELEMENTS, 1 << 62
    try:  # the same weights, read without the split
        backends["fp32 one-core GEMV"] = la.load_backend("cpu", model=fp32, dtype="float32", threads=args.threads)
    finally:
        layer.SPLIT_MIN_ELEMENTS = split_min
    backends["bf16 upcast"] = la.load_backend("cpu", model=bf16, dtype="bfloat16", threads=args.threads, upcast=True)
    plain = random_llava(config_250m(), "cpu", torch.bfloat16, name="random-250m")  # upcast patches its model
    backends["bf16"] = la.load_backend("cpu", model=plain, dtype="bfloat16", threads=args.threads, upcast=False)
    weight_mb = {name: sum(t.numel() * t.element_size() for t in b.model.parameters()) / 1e6
                 for name, b in backends.items()}
    samples = random_samples(fp32.processor, max(map(int, args.batches.split(","))), PROMPT_TEXT_TOKENS)
    report = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
              "load_average_at_start": os.getloadavg(), "rows": []}
    print(f"{report['cpu']}, {args.threads} threads, {args.rounds} rounds, {args.new_tokens} new tokens; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("batch  row                  TTFT s  decode ms/step  cores busy in decode  weights MB  same tokens  load")
    for batch_size in map(int, args.batches.split(",")):
        batch = samples[:batch_size]
        runs: dict[str, list[dict]] = {name: [] for name in backends}
        for b in backends.values():
            timed(b, batch, args.new_tokens)
        names = list(backends)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                runs[name].append(timed(backends[name], batch, args.new_tokens))
        reference = runs["fp32 one-core GEMV"][0]["tokens"]
        for name, calls in runs.items():
            row = {"batch": batch_size, "row": name, "weights_mb": round(weight_mb[name], 1),
                   "same_tokens_as_fp32": calls[0]["tokens"] == reference, "load_average": os.getloadavg()[0],
                   **{k: statistics.median(c[k] for c in calls) for k in ("ttft_s", "decode_step_ms", "decode_cores")}}
            report["rows"].append(row)
            print(f"{batch_size:5d}  {name:19s}  {row['ttft_s']:6.3f}  {row['decode_step_ms']:14.1f}  "
                  f"{row['decode_cores']:20.2f}  {row['weights_mb']:10.0f}  {str(row['same_tokens_as_fp32']):11s}  "
                  f"{row['load_average']:.1f}", flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
