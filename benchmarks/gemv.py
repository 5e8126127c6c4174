"""Our few-row kernels (``llava_accel.gemv``) against torch's and torchao's on the 7B's projection shapes, side by side.

    python benchmarks/gemv.py [--rows 1,2,4,11,16] [--rounds 7] [--threads 2] [--out gemv.json]

For each shape and row count, in alternating rounds (each round times every contender once, best of ``--calls``
calls): bf16 weights, ours (``gemv.bf16_linear``, rounded to bf16) against torch's ``F.linear`` in bf16 (native
where the CPU has bf16 arithmetic, emulated elsewhere); int4 weights, ours (Q4_0, ``Int4Linear``) against torchao's
CPU int4 (``PrototypeInt4WeightOnlyConfig``, bf16 activations: the ``int4`` recipe where ours cannot build); int8
weights with activations rounded per call, ours (``Int8Linear``) against torch.ao's dynamic Linear (fbgemm, fp32
activations: the ``int8-dynamic`` recipe where ours steps aside). Prints
the median over rounds of each contender's time in ms, the ratio ours / theirs (below 1: ours faster), and the
bandwidth floor (weight bytes over the read bandwidth measured at the start), with the CPU's flags that decide which
kernels torch has. The rule in ``upcast.own_kernel_rows`` comes from these numbers (docs/backends.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llava_accel import gemv
from llava_accel.cpuinfo import cpu_flags
from llava_accel.int4 import Int4Linear, quantize_q4_0
from llava_accel.int8 import Int8Linear
from llava_accel.metrics.mfu import cpu_model
from llava_accel.quantize import RECIPES
from quantize_cpu import read_bandwidth

SHAPES = {"gate/up 11008x4096": (11008, 4096), "down 4096x11008": (4096, 11008), "q/k/v/o 4096x4096": (4096, 4096)}


def _best(f: Callable[[], object], calls: int) -> float:
    f()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def contenders(n: int, k: int, rows: int) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (call, weight bytes it reads)."""
    weight = torch.randn(n, k) * 0.02
    x = torch.randn(rows, k).to(torch.bfloat16)
    w16 = weight.to(torch.bfloat16)
    own4 = Int4Linear(*quantize_q4_0(weight), None)
    theirs4 = nn.Sequential(nn.Linear(k, n, bias=False)).to(torch.bfloat16)
    theirs4[0].weight.data = w16.clone()
    torchao = next(r for r in RECIPES[("int4", "cpu")] if r.package == "torchao")
    linear8 = nn.Linear(k, n, bias=False)
    linear8.weight.data = weight.clone()
    own8, theirs8, x32 = Int8Linear.from_linear(linear8), nn.Sequential(linear8), x.float()
    fbgemm = next(r for r in RECIPES[("int8-dynamic", "cpu")] if r.package == "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchao.apply(theirs4, ["0"])
        fbgemm.apply(theirs8, ["0"])
    return {"bf16 ours": (lambda: gemv.bf16_linear(x, w16).to(torch.bfloat16), n * k * 2),
            "bf16 torch": (lambda: F.linear(x, w16), n * k * 2),
            "int4 ours": (lambda: own4(x), int(n * k * 0.5625)),
            "int4 torchao": (lambda: theirs4(x), int(n * k * (0.5 + 4 / 128))),
            "int8 ours": (lambda: own8(x32), n * k),
            "int8 fbgemm": (lambda: theirs8(x32), n * k)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,11,16")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="gemv.json")
    args = parser.parse_args()
    if gemv.unavailable_reason():
        raise SystemExit(f"our kernels do not run here: {gemv.unavailable_reason()}")
    torch.set_num_threads(args.threads)
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"})
    bandwidth = read_bandwidth()
    print(f"{cpu_model()} ({', '.join(flags)}), {args.threads} threads, read bandwidth {bandwidth / 1e9:.1f} GB/s")
    results = []
    with torch.inference_mode():
        for shape, (n, k) in SHAPES.items():
            for rows in map(int, args.rows.split(",")):
                calls = contenders(n, k, rows)
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, (call, _) in calls.items():
                        times[name].append(_best(call, args.calls))
                ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
                floor = {name: b / bandwidth * 1e3 for name, (_, b) in calls.items()}
                results.append({"shape": shape, "rows": rows, "ms": ms, "floor_ms": floor})
                print(f"{shape:20} rows {rows:3}: bf16 ours {ms['bf16 ours']:6.2f} torch {ms['bf16 torch']:6.2f} "
                      f"({ms['bf16 ours'] / ms['bf16 torch']:.2f}x, floor {floor['bf16 ours']:.2f}) | int4 ours "
                      f"{ms['int4 ours']:6.2f} torchao {ms['int4 torchao']:6.2f} "
                      f"({ms['int4 ours'] / ms['int4 torchao']:.2f}x, floor {floor['int4 ours']:.2f}) | int8 ours "
                      f"{ms['int8 ours']:6.2f} fbgemm {ms['int8 fbgemm']:6.2f} "
                      f"({ms['int8 ours'] / ms['int8 fbgemm']:.2f}x, floor {floor['int8 ours']:.2f})", flush=True)
                with open(args.out, "w") as f:
                    json.dump({"cpu": cpu_model(), "flags": flags, "threads": args.threads,
                               "bandwidth_bytes_per_s": bandwidth, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
