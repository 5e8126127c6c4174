"""compile vs eager-on-CPU vs the cpu backend, side by side in one run, against the memory-bandwidth floor.

    python benchmarks/cpu_backends.py [--models tiny,250m] [--batches 1,4,8] [--rounds 3] [--new-tokens 16]

Models: the embedded tiny default, and a ~250M-parameter LLaVA with random weights (the 7B config shrunk: CLIP 224/14
with 6 layers of width 1024, Llama with 8 layers of width 1024, vocabulary 32064). For each batch size each backend
first runs once (the first call: compilation for ``compile``), then the backends take turns for ``rounds`` timed
calls each, so that a machine busy with other work slows all of them alike; medians are reported. Every call
generates exactly ``new-tokens`` tokens. Token agreement is measured against ``eager`` on the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from gpu_check import MODEL_ID, floor, memory_bandwidth, random_llava
from llava_accel.quantize import decode_weight_bytes

BACKENDS = ("eager", "cpu", "compile")


def config_250m() -> Any:
    """The shipped 7B config with CLIP at 224 px and 6 layers, and an 8-layer Llama of width 1024 (~247M params)."""
    from transformers import LlavaConfig

    from llava_accel.models.architecture import load_config

    d = load_config(MODEL_ID).to_dict()
    d["vision_config"].update(image_size=224, num_hidden_layers=6)
    d["text_config"].update(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                            num_key_value_heads=16, head_dim=64)
    return LlavaConfig(**d)


def load_model_under_test(name: str, dtype: torch.dtype):
    """"tiny": the embedded default model from disk; "250m": random weights in memory (shared by the backends)."""
    if name == "tiny":
        import llava_accel as la

        return la.DEFAULT_MODEL
    return random_llava(config_250m(), "cpu", dtype, name="random-250m")


def timed_call(backend: Any, images: list, prompts: list, new_tokens: int) -> dict[str, Any]:
    """Wall times of one call, and the process CPU time it took (all threads): on a machine shared with other work
    the CPU time is the steadier comparison, since waiting for a core is not counted."""
    from llava_accel.metrics.latency import TimingStreamer

    streamer = TimingStreamer()
    cpu = time.process_time()
    start = streamer.stamp()
    outputs = backend.generate(images, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               streamer=streamer)
    end = streamer.stamp()
    return {"latency_s": end - start, "cpu_s": time.process_time() - cpu, "ttft_s": streamer.first_token_at - start,
            "decode_step_s": (streamer.end_at - streamer.first_token_at) / max(streamer.steps - 1, 1),
            "tokens": [o.token_ids for o in outputs]}


def sweep(model_name: str, batches: list[int], rounds: int, new_tokens: int, dtype: str | None,
          bandwidth: float, threads: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yields each batch size's rows (one per backend) as soon as they are measured."""
    import llava_accel as la
    from llava_accel.metrics.drift import drift
    from llava_accel.metrics.flops import FlopModel
    from llava_accel.metrics.mfu import device_peak
    from llava_accel.tasks import synthetic_samples

    dtype = dtype or la.registry.backend_class("cpu").default_dtype  # the cpu backend's choice for this CPU
    model = load_model_under_test(model_name, torch.float32 if dtype in ("float32", "fp32") else torch.bfloat16)
    backends = {name: la.load_backend(name, model=model, dtype=dtype, **(
        {"threads": threads} if name == "cpu" else {"device": "cpu"})) for name in BACKENDS}
    net = backends["eager"].model
    samples = synthetic_samples("synthetic-coco", max(batches), seed=3)
    flop_model = None
    for batch in batches:
        images, prompts = [s.image for s in samples[:batch]], [s.prompt for s in samples[:batch]]
        calls: dict[str, list[dict]] = {name: [] for name in BACKENDS}
        first: dict[str, float] = {}
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.generate(images, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            first[name] = time.perf_counter() - start
        for _ in range(rounds):
            for name, backend in backends.items():
                calls[name].append(timed_call(backend, images, prompts, new_tokens))
        inputs = backends["eager"].prepare(images, prompts)
        prompt_len = inputs["input_ids"].shape[1]
        flop_model = flop_model or FlopModel.fit(net.config, tuple(inputs["pixel_values"].shape[-2:]))
        peak = device_peak("cpu")
        bound = floor(net, batch, prompt_len, new_tokens, flop_model.prefill(prompt_len, batch),
                      flop_model.decode_step(prompt_len + new_tokens / 2, batch), peak.flops_per_s, bandwidth)
        reference = calls["eager"][0]["tokens"]
        rows = []
        for name in BACKENDS:
            med = {k: statistics.median(c[k] for c in calls[name])
                   for k in ("latency_s", "cpu_s", "ttft_s", "decode_step_s")}
            agree = drift(reference, calls[name][0]["tokens"])
            rows.append({"model": model_name, "load_average_1min": os.getloadavg()[0],
                         "params": sum(p.numel() for p in net.parameters()),
                         "dtype": str(net.dtype).removeprefix("torch."), "batch": batch, "backend": name,
                         "prompt_len": prompt_len, "first_call_s": first[name], **med,
                         "rounds": [{k: c[k] for k in med} for c in calls[name]],
                         "floor": {"decode_step_s": bound.decode_step_s, "prefill_s": bound.prefill_s,
                                   "latency_s": bound.latency_s, "lm_weight_bytes": decode_weight_bytes(net),
                                   "peak_flops_per_s": peak.flops_per_s, "peak_source": peak.source},
                         "identical_rows": agree.identical, "describe": backends[name].describe()})
            print(format_row(rows[-1], rows[0]), flush=True)  # rows[0]: eager
        yield rows


HEADER = (f"{'model':<6} {'batch':>5} {'backend':<8} {'first s':>8} {'latency s':>9} {'CPU s':>7} {'TTFT s':>7} "
          f"{'decode ms':>9} {'floor ms':>8} {'x floor':>7} {'vs eager':>8} {'CPU vs':>6} {'same':>5}")


def format_row(row: dict[str, Any], eager: dict[str, Any]) -> str:
    """``vs eager``: eager's decode step over this backend's; ``CPU vs``: the same for the whole call's CPU time
    (above 1: faster than eager)."""
    step, flr = row["decode_step_s"], row["floor"]["decode_step_s"]
    return (f"{row['model']:<6} {row['batch']:>5} {row['backend']:<8} {row['first_call_s']:>8.2f} "
            f"{row['latency_s']:>9.3f} {row['cpu_s']:>7.2f} {row['ttft_s']:>7.3f} {1000 * step:>9.1f} "
            f"{1000 * flr:>8.1f} {step / flr:>7.2f} {eager['decode_step_s'] / step:>8.2f} "
            f"{eager['cpu_s'] / row['cpu_s']:>6.2f} {row['identical_rows']:>5.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,250m")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="default: what the cpu backend picks on this CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the CPUs this process may use); 1 avoids OpenMP waits on a "
                             "machine busy with other work")
    parser.add_argument("--out", default="cpu_backends.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from llava_accel.metrics import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"environment": environment.collect("cpu"), "bandwidth_bytes_per_s": memory_bandwidth(torch.device("cpu")),
              "new_tokens": args.new_tokens, "rows": []}
    print(f"{report['environment']['cpu']['model']}, {torch.get_num_threads()} threads, copy bandwidth "
          f"{report['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, load average {os.getloadavg()[0]:.1f}; "
          f"250m: random weights; tiny: the embedded default")
    print(HEADER, flush=True)
    for model_name in args.models.split(","):
        for rows in sweep(model_name, [int(b) for b in args.batches.split(",")], args.rounds, args.new_tokens,
                          args.dtype, report["bandwidth_bytes_per_s"], args.threads):
            report["rows"] += rows
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
