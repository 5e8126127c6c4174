"""The GPU check: every available backend on the real LLaVA-1.5-7B architecture, random fp16 weights, no network.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--backends eager,flash,eagle,eager+int8,eager+int4,compile]
                                   [--batches 1,4,8,16]

For each backend (``NAME+MODE``: with quantised weights) and batch size: prompts of 780 tokens (576 image + 204
text), exactly 8 new tokens, timed by ``llava_accel.measure`` (latency mean/p50/p90, TTFT, time per output token,
energy and its source, FLOPs, MFU, peak memory: the printed peak is the row's own, net of the fp16 model a
quantised row's copy sits beside), token agreement with ``eager`` on the same samples, and the physical
floor beside each latency. The JSON is rewritten after every point, so an interrupted run keeps what it measured. Numbers on random weights are valid for
latency, energy and FLOPs at a fixed output length, not for quality. Sized to finish in under 8 minutes on one
H100/H200-class GPU; a point that would not fit the time budget is skipped and listed.

``eagle`` runs with a random draft head (its guesses are rarely right, so it shows the overhead and that its tokens
are eager's, not a speed-up; ``eagle_gpu_check.py`` looks closer). A quantised row gets its own copy of the random
model (quantisation happens in place) with the same weights, so its agreement with ``eager`` is the drift that
quantisation causes on random weights: say nothing of quality from it, that needs the real weights.

The model is built once in memory from the shipped config and shared by the backends (no 13.5 GB checkpoint on
disk). Its processor is llava-hf's (``llava_accel.models.processor``): CLIP at 336 px and LLaMA-2's tokenizer; the
prompts are random words of one token each, so a prompt's token count is exact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

MODEL_ID = "llava-hf/llava-1.5-7b-hf"
TEXT_TOKENS = 204  # + 576 image tokens = the reference study's 780-token prompt
NEW_TOKENS = 8
BATCHES = (1, 4, 8, 16)
# eager first: the reference; compile last: its compilations are the least predictable cost of the time budget
BACKENDS = ("eager", "flash", "eagle", "eager+int8", "eager+int4", "compile")
TIMED_BATCHES = 5  # measure() calls a result valid from 5 timed batches on
WARMUP = 2  # the first warm-up call of `compile` pays its compilation
BUDGET_S = 450.0


def random_llava(config: Any, device: str, dtype: torch.dtype, name: str = MODEL_ID, seed: int = 0):
    """A ``LoadedModel`` with random weights, built in memory, for any backend to share."""
    from llava_accel.models.architecture import build_model
    from llava_accel.models.loading import LoadedModel
    from llava_accel.models.processor import llava_processor

    model = build_model(config, device=device, dtype=dtype, seed=seed)
    return LoadedModel(model, llava_processor(config), name, path="", weights="random")


def random_head(loaded: Any, seed: int = 0) -> str:
    """A folder holding a random EAGLE draft head for ``loaded``'s model (so ``eagle`` runs without a trained one)."""
    import tempfile

    from llava_accel.eagle.head import HeadConfig, fingerprint, new_head, save_head

    text = loaded.model.config.text_config
    out = tempfile.mkdtemp(prefix="eagle-head-")
    save_head(new_head(loaded.model, seed), HeadConfig(loaded.model_id, fingerprint(loaded.model.lm_head),
                                                       text.hidden_size, text.vocab_size, {"weights": "random"}), out)
    return out


def parse_rows(labels: str, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """'eager,eager+int8' -> [('eager', options), ('eager', {**options, 'quantize': 'int8'})]."""
    from llava_accel.registry import split_label

    return [(name, {**options, **quantize}) for name, quantize in map(split_label, labels.split(","))]


def random_samples(processor: Any, n: int, text_tokens: int = TEXT_TOKENS, seed: int = 0,
                   ragged: bool = False) -> list:
    """``n`` samples: noise images at the processor's size, prompts of exactly ``text_tokens`` templated text tokens
    (``ragged``: between half of that and all of it, so that batches are left-padded), made of random words that
    are one token each in LLaMA-2's vocabulary (a draw whose count is off by a merge across words is drawn again)."""
    import re

    import numpy as np
    from PIL import Image

    from llava_accel import Sample
    from llava_accel.truncation import count_text_tokens

    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    template_tokens = count_text_tokens(tokenizer, "", image_id)
    words = sorted(p[1:] for p in tokenizer.get_vocab() if re.fullmatch("\u2581[a-z]{3,}", p))
    side = processor.image_processor.crop_size["height"]
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        length = int(rng.integers(text_tokens // 2, text_tokens + 1)) if ragged else text_tokens
        prompt = ""
        while count_text_tokens(tokenizer, prompt, image_id) != length:
            prompt = " ".join(words[w] for w in rng.integers(0, len(words), length - template_tokens))
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        samples.append(Sample(image=image, prompt=prompt, id=f"random-{i}"))
    return samples


# -- physical floors --------------------------------------------------------------------------------------------
def memory_bandwidth(device: torch.device, nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Best device copy bandwidth (bytes read + written per second): what a bandwidth-bound kernel can reach."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


@dataclass
class Floor:
    """Lower bounds on one batch's latency: no kernel can beat the peak FLOP/s or the memory bandwidth."""

    prefill_s: float  # max(prefill FLOPs / peak, all weight bytes / bandwidth)
    decode_step_s: float  # mean over steps of max(step FLOPs / peak, (LM weights + KV cache) bytes / bandwidth)
    latency_s: float  # prefill + (new tokens - 1) decode steps
    decode_bound: str  # "memory" or "compute"


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = text.num_key_value_heads or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def floor(model: Any, batch: int, prompt_len: int, new_tokens: int, prefill_flops: float, step_flops: float,
          peak_flops: float | None, bandwidth: float) -> Floor:
    """``prefill_flops`` and ``step_flops`` are for the whole batch; without a known peak, bandwidth alone bounds.
    Weight bytes as stored: a quantised model's floor is its own (int8: about half of fp16's)."""
    from llava_accel.quantize import decode_weight_bytes, tensor_bytes

    all_bytes = sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
    compute = (lambda f: f / peak_flops) if peak_flops else (lambda f: 0.0)
    prefill = max(compute(prefill_flops), all_bytes / bandwidth)
    kv = kv_bytes_per_token(model.config, model.dtype)
    mean_cache = prompt_len + new_tokens / 2  # step k (1..new-1) reads prompt + k tokens of KV cache
    memory_step = (decode_weight_bytes(model) + batch * kv * mean_cache) / bandwidth
    step = max(compute(step_flops), memory_step)
    return Floor(prefill, step, prefill + (new_tokens - 1) * step, "memory" if step == memory_step else "compute")


# -- the sweep ----------------------------------------------------------------------------------------------------
def point(backend: Any, samples: Sequence, batch: int, reference: Any, bandwidth: float,
          new_tokens: int = NEW_TOKENS) -> tuple[dict[str, Any], Any]:
    """One (backend, batch) measurement with its floor and its token drift from ``reference`` (a result or None).
    Returns the report row and the ``MeasureResult``."""
    from llava_accel.measure import measure
    from llava_accel.registry import row_label

    # what was allocated before the point (the models, caches and pools alive): what the peak is to be read against
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
    m = measure(backend, samples, batch_size=batch, max_input_len=None, max_new_tokens=new_tokens,
                fixed_new_tokens=True, warmup=WARMUP, progress=False, reference=reference)
    describe = backend.describe()
    row: dict[str, Any] = {"backend": row_label(backend.name, describe), "batch": batch, "describe": describe,
                           "latency_s": _stats(m.latency.per_batch), "ttft_s": _stats(m.latency.ttft),
                           "tpot_s": _stats(m.latency.tpot), "per_sample_s": m.latency.per_sample_s,
                           "energy": {"joules_per_sample": m.energy.joules_per_sample, "source": m.energy.source,
                                      "label": m.energy.label, "idle_power_w": m.energy.idle_power_w},
                           "memory": {**asdict(m.memory), "device_allocated_before_bytes": before},
                           "validity": asdict(m.validity),
                           "backend_stats": m.backend_stats}
    if m.flops is not None:
        f = m.flops
        row["flops"] = {"prefill_per_sample": f.prefill_per_sample, "per_generated_token": f.per_generated_token,
                        "achieved_flops_per_s": f.achieved_flops_per_s, "mfu": f.mfu, "peak_source": f.peak_source}
        prompt_len = m.batches[0].prompt_len
        row["floor"] = asdict(floor(backend.model, batch, prompt_len, new_tokens, batch * f.prefill_per_sample,
                                    batch * (f.per_generated_token or 0.0), f.peak_flops_per_s, bandwidth))
        row["floor"]["prompt_len"] = prompt_len
        if row["latency_s"]:
            row["latency_over_floor"] = row["latency_s"]["mean"] / row["floor"]["latency_s"]
    if m.drift is not None:
        d = m.drift
        row["agreement_with_eager"] = {"identical_answers": d.identical, "mean_common_prefix": d.mean_common_prefix,
                                       "mean_length": d.mean_reference_length, "unit": d.unit}
    return row, m


def quantized_row(options: dict[str, Any], device: str, dtype: torch.dtype) -> tuple[dict[str, Any], str | None]:
    """A quantised row's options in the dtype its kernels take (CUDA int4 has bf16 kernels only: that row runs in
    bf16 beside the fp16 rows, and its agreement with ``eager`` then includes the bf16 rounding), and why it cannot
    run here (None when it can)."""
    from llava_accel.quantize import preferred_dtype, unsupported_reason

    mode, device = options["quantize"], options.get("device") or device
    dtype = preferred_dtype(mode, device, dtype)
    return {**options, "dtype": str(dtype).removeprefix("torch.")}, unsupported_reason(mode, device, dtype)


def _stats(s: Any) -> dict[str, float] | None:
    return None if s is None else {"mean": s.mean, "p50": s.p50, "p90": s.p90, "n": s.n}


def run(loaded: Any, backends: Sequence[tuple[str, dict]], batches: Sequence[int], out: Path, budget_s: float,
        timed_batches: int = TIMED_BATCHES, new_tokens: int = NEW_TOKENS, text_tokens: int = TEXT_TOKENS,
        ragged: bool = False) -> dict[str, Any]:
    """Every available backend at every batch size; the report is rewritten to ``out`` after each point.

    ``backends``: (name, options) pairs, options passed to ``load_backend`` (device and dtype must match the model).
    A point is not started when the time already spent plus the projected cost of that point passes ``budget_s``.
    """
    from llava_accel.backends.base import resolve_dtype
    from llava_accel.metrics import environment
    from llava_accel.registry import backend_class, load_backend, row_label

    start = time.monotonic()
    device = str(loaded.model.device)
    report: dict[str, Any] = {"model": loaded.model_id, "weights": loaded.weights, "new_tokens": new_tokens,
                              "text_tokens": text_tokens, "ragged": ragged, "environment": environment.collect(device),
                              "bandwidth_bytes_per_s": memory_bandwidth(torch.device(device)),
                              "note": "random weights: valid for latency, energy and FLOPs at a fixed output "
                                      "length, not for quality", "points": [], "skipped": [], "failed": []}
    print(versions_line(report["environment"]), flush=True)
    print(HEADER, flush=True)
    samples = random_samples(loaded.processor, max(batches) * timed_batches, text_tokens, ragged=ragged)
    references: dict[int, Any] = {}  # eager's result per batch size
    shared_bytes = sum(t.numel() * t.element_size() for t in [*loaded.model.parameters(), *loaded.model.buffers()])
    for name, options in backends:
        label = row_label(name, options)
        reason = backend_class(name).unavailable_reason(**{
            k: v for k, v in options.items() if k in ("device", "dtype", "attention")})
        if not reason and options.get("quantize"):
            options, reason = quantized_row(options, device, loaded.model.dtype)
        if reason:
            report["skipped"].append({"backend": label, "reason": reason})
            continue
        model = loaded
        if options.get("quantize"):  # quantised in place: a copy with the same random weights
            model = random_llava(loaded.model.config, device, resolve_dtype(options["dtype"]), name=loaded.model_id)
        if name == "eagle" and "head" not in options:
            options = {**options, "head": random_head(model)}
        try:
            backend = load_backend(name, model=model, **options)
        except Exception as e:  # one backend's failure must not cost the others' points (a lent GPU's minutes)
            failed(report, label, None, e)
            continue
        last = None  # this backend's last point: (seconds, of which compiling, batch)
        for batch in batches:
            elapsed = time.monotonic() - start
            projected = 0.0 if last is None else (last[0] - last[1]) * batch / last[2] + last[1]
            if elapsed + projected > budget_s:
                report["skipped"].append({"backend": label, "batch": batch, "reason": f"time budget: {elapsed:.0f} s "
                                          f"of {budget_s:.0f} s used, this point needs ~{projected:.0f} s"})
                continue
            compiled_before = len(backend.describe().get("compile_events", []))
            try:
                row, result = point(backend, samples[:batch * timed_batches], batch, references.get(batch),
                                    report["bandwidth_bytes_per_s"], new_tokens)
            except Exception as e:
                failed(report, label, batch, e)
                out.write_text(json.dumps(report, indent=1, default=str))
                break  # the larger batches of a backend that failed would fail the same way, or worse
            compiling = sum(e["first_call_s"] for e in row["describe"].get("compile_events", [])[compiled_before:])
            # a quantised row's device peak includes the shared fp16 model kept for the rows after it
            row["memory"]["shared_model_bytes"] = 0 if model is loaded else shared_bytes
            last = (time.monotonic() - start - elapsed, compiling, batch)
            if label == "eager":  # not eager+int8: a quantised row is measured against eager, never the reference
                references[batch] = result
            report["points"].append(row)
            print(format_row(row), flush=True)
            out.write_text(json.dumps(report, indent=1, default=str))
        del backend, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["duration_s"] = time.monotonic() - start
    out.write_text(json.dumps(report, indent=1, default=str))
    return report


def failed(report: dict[str, Any], label: str, batch: int | None, error: Exception) -> None:
    """Record (and print, with its traceback) a backend that raised; the sweep goes on with the next one."""
    import traceback

    traceback.print_exc()
    report["failed"].append({"backend": label, "batch": batch, "error": f"{type(error).__name__}: {error}"})
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


HEADER = (f"{'backend':<12} {'dtype':<8} {'batch':>5} {'latency ms':>10} {'p90 ms':>8} {'floor ms':>8} "
          f"{'x floor':>7} {'TTFT ms':>8} {'TPOT ms':>8} {'J/sample':>9} {'MFU %':>6} {'peak GiB':>8} {'agree':>6}")


def format_row(row: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{1000 * x:.1f}"

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lat, flr, fl = row.get("latency_s") or {}, row.get("floor") or {}, row.get("flops") or {}
    agree = row.get("agreement_with_eager", {}).get("identical_answers")
    peak = row["memory"]["device_peak_bytes"] and row["memory"]["device_peak_bytes"] - row["memory"]["shared_model_bytes"]
    return (f"{row['backend']:<12} {row['describe']['dtype']:<8} {row['batch']:>5} {ms(lat.get('mean')):>10} "
            f"{ms(lat.get('p90')):>8} {ms(flr.get('latency_s')):>8} {num(row.get('latency_over_floor'), '.2f'):>7} "
            f"{ms((row.get('ttft_s') or {}).get('mean')):>8} {ms((row.get('tpot_s') or {}).get('mean')):>8} "
            f"{num(row['energy']['joules_per_sample'], '.2f'):>9} "
            f"{num(fl.get('mfu') and 100 * fl['mfu'], '.1f'):>6} {num(peak and peak / 2**30, '.1f'):>8} "
            f"{num(agree, '.2f'):>6}")


def versions_line(env: dict[str, Any]) -> str:
    v, gpu = env["versions"], env["gpu"]
    where = f"{gpu['name']}, driver {gpu['driver']}" if gpu else f"{env['cpu']['model']} (no GPU)"
    return (f"{where}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
            f"flash-attn {v.get('flash-attn', 'not installed')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="JSON report, rewritten after every point")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--compile-mode", default=None, help="compile backend mode (default: reduce-overhead)")
    parser.add_argument("--ragged", action="store_true",
                        help="prompts of 102-204 text tokens: left-padded batches (what unpadding costs flash)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting new points after this")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():  # before anything slow: this script has nothing to do without a GPU
        print(f"gpu_check: needs a CUDA GPU; torch {torch.__version__} sees none here (nothing was run)",
              file=sys.stderr)
        return 2
    from llava_accel.models.architecture import load_config

    started = time.monotonic()
    loaded = random_llava(load_config(MODEL_ID), "cuda", torch.float16)
    print(f"gpu_check: {MODEL_ID} with random fp16 weights built in {time.monotonic() - started:.0f} s on "
          f"{torch.cuda.get_device_name()}; random weights: latency, energy, FLOPs only", flush=True)
    backends = [(name, {**options, **({"mode": args.compile_mode} if name == "compile" and args.compile_mode else {})})
                for name, options in parse_rows(args.backends, {"device": "cuda", "dtype": "float16"})]
    report = run(loaded, backends, [int(b) for b in args.batches.split(",")], Path(args.out),
                 args.budget_s - (time.monotonic() - started), ragged=args.ragged)
    for skipped in report["skipped"]:
        print(f"skipped: {skipped}")
    for failure in report["failed"]:
        print(f"FAILED: {failure}")
    print(f"gpu_check: {time.monotonic() - started:.0f} s in all; report: {args.out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
