"""Quantised CPU decoding: how close each mode comes to its bandwidth floor, and what it costs in answers.

    python benchmarks/quantize_cpu.py [--modes int8,int8-dynamic,int4] [--loops lean,generate] [--batches 1,4]
                                      [--rounds 3] [--new-tokens 16] [--samples 32] [--out quantize_cpu.json]

Speed: the ~247M-parameter random LLaVA of cpu_backends.py (CLIP 224/14 with 6 layers of width 1024; Llama with 8
layers of width 1024; vocabulary 32064), prompts of 273 tokens (256 image + 17 text), exactly ``new-tokens`` new
tokens per call. Rows: the ``cpu`` backend unquantised in fp32 and in bf16, then each quantize mode in the dtype it
has kernels for; each in the ``cpu`` backend's own greedy loop (``lean``) and in transformers' ``generate``
(the same quantised model, shared). After one untimed call each, the rows take turns for ``rounds`` timed calls
(a machine busy with other work slows them alike); the best round is shown (the one least disturbed by other
processes), medians are in the JSON. Floor = bytes of weights a decode step reads / memory read bandwidth (best of 5
sums over 1 GiB, measured in the same run). ``same``: share of rows with tokens identical to the unquantised row of
the same dtype and loop (random weights: says nothing about quality).

Quality: the embedded default model on the three synthetic tasks (``samples`` each), batch 1, each task's own
generation budget, through ``measure()`` with the unquantised backend in the same dtype as reference: share of
identical answers, mean common prefix, change in WER and in the native metric. bf16 against fp32 is reported too,
since int8 and int4 run in bf16 on CPU. The JSON is rewritten after every row, so a stopped run keeps its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cpu_backends import config_250m, timed_call
from gpu_check import random_llava, random_samples

MODES = ("int8", "int8-dynamic", "int4")
PROMPT_TEXT_TOKENS = 17  # + 256 image tokens = 273, the prompt of the measurements in the notes


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best memory read bandwidth (bytes/s) of a sum over ``nbytes``: what a decode step's weight reads can reach, so
    in 2 MiB pages where the CPU backends put their weights in them (``llava_accel.hugepages``)."""
    from llava_accel.hugepages import advise

    data = advise(torch.empty(nbytes // 4, dtype=torch.float32)).fill_(1.0)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def rows_to_run(modes: list[str]) -> list[dict[str, Any]]:
    """Unquantised fp32 and bf16, then each mode in the dtype the backend picks for it."""
    from llava_accel.backends.base import resolve_dtype
    from llava_accel.quantize import preferred_dtype
    from llava_accel.registry import backend_class

    default = resolve_dtype(backend_class("cpu").default_dtype)
    rows = [{"name": "fp32", "quantize": None, "dtype": torch.float32},
            {"name": "bf16", "quantize": None, "dtype": torch.bfloat16}]
    return rows + [{"name": m, "quantize": m, "dtype": preferred_dtype(m, "cpu", default)} for m in modes]


def speed(modes: list[str], loops: list[str], batches: list[int], rounds: int, new_tokens: int, bandwidth: float,
          threads: int | None, report: dict, save: Any) -> None:
    import llava_accel as la
    from llava_accel.metrics.drift import drift
    from llava_accel.quantize import decode_weight_bytes

    backends = {}
    for row in rows_to_run(modes):
        loaded = random_llava(config_250m(), "cpu", row["dtype"], name="random-250m")
        for loop in loops:  # the first loop's backend quantises the model in place, the others share it
            start = time.perf_counter()
            backend = la.load_backend("cpu", model=loaded, dtype=row["dtype"], threads=threads, loop=loop,
                                      quantize=row["quantize"] if loop == loops[0] else None)
            if loop != loops[0]:  # so that its describe() says what its model holds
                first = backends[f"{row['name']} {loops[0]}"][1]
                backend.quantize, backend.quantization = first.quantize, first.quantization
            backends[f"{row['name']} {loop}"] = ({**row, "loop": loop, "load_s": time.perf_counter() - start}, backend)
    processor = next(iter(backends.values()))[1].processor
    print(f"{'batch':>5} {'row':<22} {'dtype':<9} {'weights MB':>10} {'TTFT s':>9} {'decode ms':>9} "
          f"{'floor ms':>8} {'x floor':>7} {'vs fp32':>7} {'same':>5}", flush=True)
    for batch in batches:
        samples = random_samples(processor, batch, text_tokens=PROMPT_TEXT_TOKENS)
        images, prompts = [s.image for s in samples], [s.prompt for s in samples]
        calls: dict[str, list[dict]] = {name: [] for name in backends}
        for _, backend in backends.values():
            backend.generate(images, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        for _ in range(rounds):
            for name, (_, backend) in backends.items():
                calls[name].append(timed_call(backend, images, prompts, new_tokens))
        prompt_len = next(iter(backends.values()))[1].prepare(images, prompts)["input_ids"].shape[1]
        results = {}
        for name, (row, backend) in backends.items():
            step = min(c["decode_step_s"] for c in calls[name])
            weight_bytes = decode_weight_bytes(backend.model)
            same_dtype = ("fp32" if row["dtype"] == torch.float32 else "bf16") + f" {row['loop']}"
            results[name] = {
                "batch": batch, "row": name, "quantize": row["quantize"], "loop": row["loop"],
                "dtype": str(row["dtype"])[6:],
                "prompt_len": prompt_len, "new_tokens": new_tokens, "load_s": row["load_s"],
                "ttft_s": min(c["ttft_s"] for c in calls[name]), "decode_step_s": step,
                "median_decode_step_s": statistics.median(c["decode_step_s"] for c in calls[name]),
                "rounds": [{k: c[k] for k in ("latency_s", "cpu_s", "ttft_s", "decode_step_s")}
                           for c in calls[name]],
                "decode_weight_bytes": weight_bytes, "floor_step_s": weight_bytes / bandwidth,
                "same_as": same_dtype,
                "same": drift(calls[same_dtype][0]["tokens"], calls[name][0]["tokens"]).identical,
                "describe": backend.describe()}
        for r in results.values():
            fp32 = results[f"fp32 {loops[0]}"]["decode_step_s"]
            print(f"{batch:>5} {r['row']:<22} {r['dtype']:<9} {r['decode_weight_bytes'] / 1e6:>10.1f} "
                  f"{r['ttft_s']:>9.3f} {1000 * r['decode_step_s']:>9.1f} {1000 * r['floor_step_s']:>8.1f} "
                  f"{r['decode_step_s'] / r['floor_step_s']:>7.2f} {fp32 / r['decode_step_s']:>7.2f} "
                  f"{r['same']:>5.2f}", flush=True)
            report["speed"].append(r)
        save()


def quality(modes: list[str], samples: int, report: dict, save: Any) -> None:
    import llava_accel as la
    from llava_accel.measure import measure
    from llava_accel.metrics.drift import compare
    from llava_accel.tasks import SYNTHETIC_TASKS, load_task

    rows = rows_to_run(modes)
    backends = {r["name"]: la.load_backend("cpu", dtype=r["dtype"], quantize=r["quantize"]) for r in rows}
    weights = backends["fp32"].describe()["weights"]
    print(f"\nembedded default model ({weights}), batch 1, {samples} samples per task; drift against the "
          f"unquantised backend in the same dtype", flush=True)
    print(f"{'task':<20} {'row':<13} {'against':<8} {'identical':>9} {'prefix':>13} {'WER':>7} {'dWER':>7} "
          f"native change", flush=True)
    for task in sorted(SYNTHETIC_TASKS):
        data = load_task(task, limit=samples)
        run = {name: measure(b, data, warmup=1, count_flops=False, idle_seconds=0)
               for name, b in backends.items() if b.quantize is None}
        pairs = [("bf16", "fp32", run["bf16"])]
        for r in rows[2:]:
            against = "fp32" if r["dtype"] == torch.float32 else "bf16"
            pairs.append((r["name"], against, measure(backends[r["name"]], data, warmup=1, count_flops=False,
                                                      idle_seconds=0, reference=run[against])))
        for name, against, result in pairs:
            d = result.drift or compare(run[against], result)
            print(f"{task:<20} {name:<13} {against:<8} {100 * d.identical:>8.1f}% "
                  f"{d.mean_common_prefix:>5.2f}/{d.mean_reference_length:<5.2f}tk {result.wer:>6.2f}% "
                  f"{d.wer_change:>+7.2f} {json.dumps({k: round(v, 4) for k, v in d.native_change.items()})}",
                  flush=True)
            report["quality"].append({"task": task, "row": name, "against": against, "weights": weights,
                                      "samples": d.samples, "wer": result.wer, "native": result.native,
                                      "drift": d.__dict__})
            save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--loops", default="lean,generate", help="the cpu backend's loop option, each a row")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32, help="samples per synthetic task for the quality part")
    parser.add_argument("--threads", type=int, default=None, help="default: the cpu backend's (CPUs it may use)")
    parser.add_argument("--skip", choices=("speed", "quality"), default=None)
    parser.add_argument("--out", default="quantize_cpu.json")
    args = parser.parse_args(argv)
    from llava_accel.metrics import environment

    modes = [m for m in args.modes.split(",") if m]
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = read_bandwidth()
    report = {"environment": environment.collect("cpu"), "threads": torch.get_num_threads(),
              "read_bandwidth_bytes_per_s": bandwidth, "load_average_start": os.getloadavg(), "speed": [],
              "quality": []}

    def save() -> None:
        report["load_average_now"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))

    print(f"{report['environment']['cpu']['model']}, {torch.get_num_threads()} threads, read bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s, load average {os.getloadavg()[0]:.1f}; speed on random weights", flush=True)
    if args.skip != "speed":
        speed(modes, args.loops.split(","), [int(b) for b in args.batches.split(",")], args.rounds, args.new_tokens,
              bandwidth, args.threads, report, save)
    if args.skip != "quality":
        quality(modes, args.samples, report, save)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
