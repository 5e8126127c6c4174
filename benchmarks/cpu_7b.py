"""The real LLaVA-1.5-7B (its shipped architecture, random weights: ``no_weights``) on this CPU: every CPU backend and
quantisation mode at full size, beside the reference study's CPU row and llama.cpp at the same precision.

    python benchmarks/cpu_7b.py [--rows cpu-bf16,cpu-int8-dynamic,...] [--new-tokens 32] [--rounds 1]
                                [--gguf-dir DIR] [--out cpu_7b.json] [--fresh]

Each row runs in a process of its own (the 7B fits this 24 GiB machine once), which loads the model, then makes
``rounds`` calls on one synthetic TextVQA sample whose prompt is the reference study's 780 tokens (576 image + 204
text), each exactly ``new-tokens`` new tokens, timing every token. Per row:

- load: seconds from ``load_backend`` to a usable backend (random weights made, quantised block by block);
- prefill: time to the first new token (the 780-token forward, image encoder included); its MFU is its FLOPs
  (``FlopModel``) over that time, against this machine's fp32 matmul peak measured in the same process (best of 3
  GEMMs of the 7B MLP's prefill shape, 780 x 4096 x 11008);
- decode: seconds per new token after the first; its floor is the weight bytes a step reads over the memory read
  bandwidth measured in the same process (best of 5 sums over 1 GiB);
- end to end at 4 and 32 new tokens: from the call to the 4th and the 32nd token (preprocessing included), per sample
  at batch 1, beside the reference study's 8.37 s per TextVQA sample on its CPU;
- peak RSS of the process (load included).

llama.cpp: with ``--gguf-dir`` holding the bf16, q8_0 and q4_0 GGUFs of the same seeded weights (``python
benchmarks/llama_cpp.py prepare`` makes them; ``bash benchmarks/build_llama_cpp.sh`` builds llama-bench), the
rows with a counterpart (bf16: bf16; int8-dynamic and int8: q8_0; int4: q4_0) run ``llama-bench -p 0 -n 32 -d 780``
after each of their own calls, alternating. Where both models do not fit in memory at once (bf16: 14 + 13.5 GB),
llama-bench runs its rounds right after the row's process has ended instead, and the row says so.

The JSON is rewritten after every row and a rerun skips the rows it holds (``--fresh`` reruns them): a stopped run
keeps what it measured. Random weights: the tokens mean nothing, the times and memory stand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODEL = "llava-hf/llava-1.5-7b-hf"
PROMPT_TOKENS = 780  # the reference study's: 576 image + 204 text tokens
REFERENCE_CPU_S = 8.37  # the reference study's CPU time per TextVQA sample
HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    backend: str
    options: dict[str, Any]
    gguf: str | None = None  # llama.cpp's counterpart at the same precision
    note: str = ""
    new_tokens: int | None = None  # fewer than --new-tokens for the rows whose every token costs seconds
    recipe: str | None = None  # the quantisation library this row pins (by package), where the CPU would pick another


ROWS = {
    "cpu-bf16": Row("cpu", {"dtype": "bfloat16"}, "bf16", "bf16 weights; prefill in fp32 where the CPU has no native "
                    "bf16 (upcast); decode on our kernels"),
    "cpu-int8-dynamic": Row("cpu", {"quantize": "int8-dynamic"}, "q8_0", "int8 weights, activations rounded per row "
                            "and call: our int8 kernel where it builds (fp32 activations where the CPU lacks bf16)"),
    "cpu-int8-dynamic-bf16": Row("cpu", {"quantize": "int8-dynamic", "dtype": "bfloat16"}, "q8_0",
                                 "the same in bf16: half the KV cache to read"),
    "cpu-int8-dynamic-fbgemm": Row("cpu", {"quantize": "int8-dynamic"}, "q8_0", "torch.ao's dynamic int8 (fbgemm, "
                                   "fp32 activations), pinned", recipe="torch"),
    "cpu-int8": Row("cpu", {"quantize": "int8"}, "q8_0", "bf16 activations, int8 weights (quanto)"),
    "cpu-int4": Row("cpu", {"quantize": "int4"}, "q4_0", "int4 weights: our Q4_0 kernel where it builds"),
    "cpu-int4-4k": Row("cpu", {"quantize": "int4", "huge_pages": False}, "q4_0", "the same with the weights left in "
                       "4 KiB pages: what 2 MiB pages give"),
    "cpu-int4-fp32": Row("cpu", {"quantize": "int4", "dtype": "float32"}, "q4_0", "the same with fp32 activations "
                         "and KV cache, as on a CPU without native bf16"),
    "cpu-int4-torchao": Row("cpu", {"quantize": "int4"}, "q4_0", "torchao's int4 kernel (bf16 activations), pinned",
                            recipe="torchao"),
    "eagle-bf16": Row("eagle", {"device": "cpu", "dtype": "bfloat16", "head": "random"}, None,
                      "random draft head: the cost of speculation, tokens checked against cpu-bf16", 4),
    "compile-bf16": Row("compile", {"device": "cpu", "dtype": "bfloat16"}, None, "torch.compile, bf16 throughout", 4),
    "eager": Row("eager", {"device": "cpu"}, None, "eager's defaults on a CPU: what a user who forgets the dtype gets",
                 4),
}


def matmul_peak(repeats: int = 3) -> float:
    """Best fp32 FLOP/s of the 7B MLP's prefill GEMM on this machine (the threads torch uses)."""
    x, w = torch.randn(PROMPT_TOKENS, 4096), torch.randn(11008, 4096)
    torch.nn.functional.linear(x, w)
    best = min(_timed(lambda: torch.nn.functional.linear(x, w)) for _ in range(repeats))
    return 2 * PROMPT_TOKENS * 4096 * 11008 / best


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_bytes() -> int:
    from llava_accel.metrics.memory import proc_kib_field

    return proc_kib_field("/proc/self/status", "VmRSS") or 0


class TokenTimes:
    """A streamer that stamps every new token (``generate``'s streamer protocol)."""

    def __init__(self) -> None:
        self.prompt_at: float | None = None
        self.tokens: list[float] = []

    def put(self, value: Any) -> None:
        if self.prompt_at is None:
            self.prompt_at = time.perf_counter()
        else:
            self.tokens.append(time.perf_counter())

    def end(self) -> None:
        pass


def reference_prompt(backend: Any) -> tuple[Any, str, int]:
    """A synthetic TextVQA image and a question padded with words until the templated prompt is 780 tokens."""
    from llava_accel.tasks import synthetic_samples

    sample = synthetic_samples("synthetic-textvqa", 1)[0]
    words = 0
    while True:
        prompt = sample.prompt + " Please" * words
        length = backend.prepare([sample.image], [prompt])["input_ids"].shape[1]
        if length >= PROMPT_TOKENS:
            return sample.image, prompt, length
        words += max(1, (PROMPT_TOKENS - length) // 2)


def call(backend: Any, image: Any, prompt: str, new_tokens: int) -> dict[str, Any]:
    times = TokenTimes()
    start = time.perf_counter()
    out = backend.generate([image], [prompt], max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=times)[0]
    t = [s - start for s in times.tokens]
    return {"prefill_s": t[0], "decode_s_per_token": (t[-1] - t[0]) / max(len(t) - 1, 1),
            "e2e_4_s": t[min(3, len(t) - 1)], f"e2e_{new_tokens}_s": t[-1], "token_times_s": t,
            "tokens": out.token_ids}


def llama_fits(gguf: Path) -> bool:
    from llava_accel.models.no_weights import available_bytes

    return available_bytes(torch.device("cpu")) > 1.1 * gguf.stat().st_size + (1 << 30)


def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row, in this process: load, calls (alternating with llama-bench where both fit), the row's figures."""
    import llava_accel as la
    from llava_accel.metrics.flops import FlopModel
    from llava_accel.quantize import decode_weight_bytes

    row = ROWS[name]
    if row.recipe:
        from llava_accel import quantize

        for key, recipes in quantize.RECIPES.items():
            quantize.RECIPES[key] = tuple(r for r in recipes if r.package == row.recipe) or recipes
    torch.set_num_threads(args.threads)
    bandwidth, peak, new_tokens = args.bandwidth, args.peak, min(args.new_tokens, row.new_tokens or args.new_tokens)
    start = time.perf_counter()
    backend = la.load_backend(row.backend, model=args.model, no_weights=True, **row.options,
                              **({"threads": args.threads} if row.backend == "cpu" else {}))
    load_s, rss_loaded = time.perf_counter() - start, rss_bytes()
    image, prompt, prompt_len = reference_prompt(backend)
    gguf = gguf_path(name, args)
    interleave = gguf is not None and gguf.exists() and llama_fits(gguf)
    calls, llama = [], []
    for _ in range(args.rounds):
        calls.append(call(backend, image, prompt, new_tokens))
        print(f"  {name}: prefill {calls[-1]['prefill_s']:.1f} s, decode {calls[-1]['decode_s_per_token']:.3f} "
              f"s/token", flush=True)
        if interleave:
            llama.append(llama_bench(gguf, args, prompt_len))
    net = backend.model
    flops = FlopModel.fit(net.config, tuple(backend.prepare([image], [prompt])["pixel_values"].shape[-2:]))
    best = min(calls, key=lambda c: c["decode_s_per_token"])
    weight_bytes = decode_weight_bytes(net)
    return {"row": name, "backend": row.backend, "options": row.options, "note": row.note,
            "describe": backend.describe(), "threads": args.threads, "load_s": load_s,
            "prompt_tokens": prompt_len, "new_tokens": new_tokens, "calls": calls,
            "prefill_s": min(c["prefill_s"] for c in calls), "decode_s_per_token": best["decode_s_per_token"],
            "e2e_4_s": min(c["e2e_4_s"] for c in calls),
            "e2e_s": min(c[f"e2e_{new_tokens}_s"] for c in calls),
            "prefill_flops": flops.prefill(prompt_len), "matmul_peak_flops_per_s": peak,
            "prefill_mfu": flops.prefill(prompt_len) / min(c["prefill_s"] for c in calls) / peak,
            "decode_weight_bytes": weight_bytes, "read_bandwidth_bytes_per_s": bandwidth,
            "decode_floor_s": weight_bytes / bandwidth, "rss_after_load_bytes": rss_loaded,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "llama_cpp": {"gguf": str(gguf), "interleaved": True, "rounds": llama} if interleave else None,
            "load_average": os.getloadavg()}


def gguf_path(name: str, args: argparse.Namespace) -> Path | None:
    from llama_cpp import gguf_name

    kind = ROWS[name].gguf
    return Path(args.gguf_dir) / gguf_name(args.model, kind) if args.gguf_dir and kind else None


def llama_bench(gguf: Path, args: argparse.Namespace, depth: int) -> dict[str, Any]:
    from llama_cpp import bench

    return bench(gguf, threads=args.threads, new_tokens=args.new_tokens, depth=depth)


def run_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The row in a child process (its memory is the row's alone), then llama-bench where it could not alternate.
    Bandwidth and matmul peak are measured here, just before: in the child their buffers would count in its peak."""
    from quantize_cpu import read_bandwidth

    torch.set_num_threads(args.threads)
    out = Path(args.out).with_suffix(f".{name}.json")
    cmd = [sys.executable, __file__, "--child", name, "--child-out", str(out), "--model", args.model,
           "--threads", str(args.threads), "--bandwidth", str(read_bandwidth()), "--peak", str(matmul_peak()),
           "--rounds", str(args.rounds), "--new-tokens", str(args.new_tokens)] + \
        (["--gguf-dir", args.gguf_dir] if args.gguf_dir else [])
    done = subprocess.run(cmd)
    if done.returncode != 0 or not out.exists():
        return {"row": name, "error": f"the row's process ended with code {done.returncode}"}
    result = json.loads(out.read_text())
    out.unlink()
    gguf = gguf_path(name, args)
    if result["llama_cpp"] is None and gguf is not None and gguf.exists():
        result["llama_cpp"] = {"gguf": str(gguf), "interleaved": False,
                               "rounds": [llama_bench(gguf, args, result["prompt_tokens"]) for _ in range(args.rounds)]}
    return result


GIB = 2**30


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'row':<17} {'dtype':<8} {'load s':>7} {'prefill s':>9} {'MFU':>5} {'decode s/tok':>12} "
            f"{'floor':>6} {'x floor':>7} {'e2e@4 s':>8} {'e2e s':>9} {'peak RSS':>8} {'llama.cpp s/tok':>15}")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['row']:<17} {r['error']}")
            continue
        llama = r.get("llama_cpp")
        lcpp = f"{min(x['ms_per_token'] for x in llama['rounds']) / 1000:.3f}" if llama and llama["rounds"] else "-"
        lines.append(
            f"{r['row']:<17} {r['describe']['dtype']:<8} {r['load_s']:>7.0f} {r['prefill_s']:>9.1f} "
            f"{100 * r['prefill_mfu']:>4.0f}% {r['decode_s_per_token']:>12.3f} {r['decode_floor_s']:>6.3f} "
            f"{r['decode_s_per_token'] / r['decode_floor_s']:>7.2f} {r['e2e_4_s']:>8.1f} "
            f"{r['e2e_s']:>6.1f}@{r['new_tokens']:<2} "
            f"{r['peak_rss_bytes'] / GIB:>6.2f}Gi {lcpp:>15}")
    lines.append(f"reference study, CPU: {REFERENCE_CPU_S} s per TextVQA sample")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"some of {', '.join(ROWS)}")
    parser.add_argument("--model", default=MODEL, help="a shipped config or a folder with a config.json (no_weights)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--gguf-dir", default=None, help="llama.cpp GGUFs of the same weights (llama_cpp.py prepare)")
    parser.add_argument("--out", default="cpu_7b.json")
    parser.add_argument("--fresh", action="store_true", help="rerun the rows the --out file already holds")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(args.child, args), default=str))
        return 0
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; use some of {', '.join(ROWS)}")
    from llava_accel.metrics import environment
    from llava_accel.outputs import write_atomic

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() and not args.fresh else {"rows": []}
    report["environment"] = environment.collect("cpu")
    done = {r["row"] for r in report["rows"] if "error" not in r}
    for name in names:
        if name in done:
            continue
        print(f"{name}: {ROWS[name].note} (load average {os.getloadavg()[0]:.1f})", flush=True)
        report["rows"] = [r for r in report["rows"] if r["row"] != name] + [run_row(name, args)]
        compare_tokens(report["rows"])
        write_atomic(out, json.dumps(report, indent=1, default=str))
    print(table(report["rows"]))
    return 0


def compare_tokens(rows: list[dict[str, Any]]) -> None:
    """Rows in the same dtype as cpu-bf16 (eagle, compile) against its tokens, over the tokens both ran: lossless at
    full size or not."""
    by_name = {r["row"]: r for r in rows if "error" not in r}
    reference = by_name.get("cpu-bf16")
    for r in by_name.values():
        if reference and r is not reference and r["describe"]["dtype"] == "bfloat16" and not r["options"].get(
                "quantize"):
            ours, theirs = r["calls"][0]["tokens"], reference["calls"][0]["tokens"]
            n = min(len(ours), len(theirs))  # rows may run fewer new tokens
            r["tokens_as_cpu_bf16"] = {"compared": n, "identical": ours[:n] == theirs[:n]}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
