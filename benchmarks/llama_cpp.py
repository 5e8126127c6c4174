"""llama.cpp's decode on the same random model as our ``cpu`` backend: the LLaVA-1.5-7B text model that
``no_weights`` makes (same seed, same bf16 weights), exported for llama.cpp and timed with its own ``llama-bench``.

    bash benchmarks/build_llama_cpp.sh            # once: llama-bench, llama-quantize (15-25 min on 2 cores)
    python benchmarks/llama_cpp.py prepare [--model llava-hf/llava-1.5-7b-hf] [--dir D] [--seed 0]
    python benchmarks/llama_cpp.py bench --gguf D/llava-1.5-7b-hf-q4_0.gguf [--threads 2] [--depth 780]
                                         [--new-tokens 32] [--repetitions 1]

``prepare`` (each step skipped when its output exists; D defaults to ~/.cache/llava_accel/llama.cpp/gguf):
1. export: the language model + LM head of ``no_weights``' random LLaVA, as a Hugging Face ``LlamaForCausalLM``
   folder (config.json, safetensors shards, our shipped tokenizer). The weights come from ``no_weights``' own
   ``materialize`` with the same seed, and each shard is written and dropped as soon as its blocks are made, so
   about one shard (2 GB) is held at a time instead of the 14 GB model.
2. convert: llama.cpp's ``convert_hf_to_gguf.py`` to a bf16 GGUF (needs ``pip install -e .[llamacpp]``).
3. quantise: ``llama-quantize`` to Q8_0 and Q4_0 (its defaults: Q4_0 keeps the output matrix in Q6_K).
Then the safetensors folder is deleted (13.5 GB for the 7B). Disk needed at the peak: about 38 GB for the 7B.

``bench`` runs ``llama-bench -p 0 -n NEW -d DEPTH -t THREADS -r REPS -lm none -o json``: NEW tokens decoded one at a
time after a DEPTH-token context (made untimed, once), model read into memory (``-lm none``: no mmap, which avoids
page-fault spikes in the first repetition), and on a CPU with AMX ``-ub 1`` for q8_0 and q4_0 (``amx_batch``). It
prints ms/token and tokens/s, and the JSON record. Needs memory for the whole GGUF (bf16 7B: 13.5 GB) and refuses in
one line when that is not available.

Paths: the llama.cpp source (``convert_hf_to_gguf.py``) is $LLAMA_CPP_SRC, else ~/.cache/llava_accel/llama.cpp/src;
its binaries are $LLAMA_CPP_BIN, else ~/.cache/llava_accel/llama.cpp/build/bin (where build_llama_cpp.sh puts them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llava_accel.errors import LlavaAccelError

MODEL_ID = "llava-hf/llava-1.5-7b-hf"
LLAMA_CPP_DIR = Path.home() / ".cache" / "llava_accel" / "llama.cpp"
DEFAULT_DIR = LLAMA_CPP_DIR / "gguf"
QUANTS = ("q8_0", "q4_0")
TEXT_PREFIX = "model.language_model."  # LlavaForConditionalGeneration's name for what LlamaForCausalLM calls "model."
SHARD_BYTES = 2 * 2**30


class LlamaCppError(LlavaAccelError):
    """llama.cpp is not built or not found, or one of its tools failed."""


def llama_cpp_src() -> Path:
    return Path(os.environ.get("LLAMA_CPP_SRC", LLAMA_CPP_DIR / "src"))


def llama_cpp_bin() -> Path:
    return Path(os.environ.get("LLAMA_CPP_BIN", LLAMA_CPP_DIR / "build" / "bin"))


def _tool(name: str) -> Path:
    path = llama_cpp_bin() / name
    if not path.exists():
        raise LlamaCppError(f"{path} not found: build llama.cpp with `bash benchmarks/build_llama_cpp.sh` "
                            f"(or set LLAMA_CPP_BIN to the folder holding {name})")
    return path


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a llama.cpp tool; its stdout, or one line with the end of its stderr when it fails."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise LlamaCppError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def _text_name(llava_name: str) -> str | None:
    """The ``LlamaForCausalLM`` name of a LLaVA parameter, None for the vision tower and projector."""
    if llava_name.startswith(TEXT_PREFIX):
        return "model." + llava_name[len(TEXT_PREFIX):]
    return llava_name if llava_name.startswith("lm_head.") else None


def _plan_shards(model: torch.nn.Module, dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Text parameters (LLaVA names, in the order they are made) grouped into shards of at most ``max_bytes``."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, param in model.named_parameters():
        if _text_name(name) is None:
            continue
        nbytes = param.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _text_config(config: Any, dtype: torch.dtype) -> dict[str, Any]:
    text = config.text_config.to_dict()
    name = str(dtype).removeprefix("torch.")
    text.update(architectures=["LlamaForCausalLM"], dtype=name, torch_dtype=name)
    return text


def export_text_model(model_id: str, out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the language model + LM head of ``no_weights``' random ``model_id`` (same seed: the same weights as the
    ``cpu`` backend's ``no_weights`` run in ``dtype``) as a ``LlamaForCausalLM`` folder. Every block of the LLaVA
    is made in ``no_weights``' order (the vision tower's too, or the generator would drift), then written to its
    shard or dropped, so only one shard is held at a time."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from llava_accel.models.no_weights import materialize, no_weights_config
    from llava_accel.models.processor import llava_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = no_weights_config(model_id)
    with init_empty_weights(include_buffers=False):
        net = LlavaForConditionalGeneration(config)
    shards = _plan_shards(net, dtype, max_shard_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    shard_of = {name: i for i, names in enumerate(shards) for name in names}
    pending: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    total = 0

    def write_or_drop(model: torch.nn.Module, module_names: list[str]) -> None:
        nonlocal total
        for module_name in module_names:
            module = model.get_submodule(module_name)
            for pname, param in list(module.named_parameters(recurse=False)):
                name = f"{module_name}.{pname}"
                if name in shard_of:
                    pending[name] = param.data
                # the made tensor lives on in ``pending`` (until its shard is written) or nowhere
                module._parameters[pname] = torch.nn.Parameter(param.data.to("meta"), requires_grad=False)
        for i, names in enumerate(shards):
            if names and all(n in pending for n in names):
                tensors = {_text_name(n): pending.pop(n).contiguous() for n in names}
                save_file(tensors, out / files[i], metadata={"format": "pt"})
                weight_map.update({k: files[i] for k in tensors})
                total += sum(t.numel() * t.element_size() for t in tensors.values())
                names.clear()  # written

    materialize(net, torch.device("cpu"), dtype, seed, on_block=write_or_drop)
    if any(shards):  # a parameter never made: its shard was never written
        raise RuntimeError(f"export of {model_id}: {sum(map(len, shards))} parameters not written")
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (out / "config.json").write_text(json.dumps(_text_config(config, dtype), indent=2, default=str))
    tokenizer = llava_tokenizer()
    # llama.cpp sizes its embedding and output matrices by the GGUF's token list: pad the tokenizer (32002 tokens)
    # to the model's vocabulary (32064 rows) with unused tokens, named as convert_hf_to_gguf.py names its own pads
    tokenizer.add_tokens([f"[PAD{i}]" for i in range(len(tokenizer), config.text_config.vocab_size)],
                         special_tokens=True)
    tokenizer.save_pretrained(out)
    return out


def convert(hf_dir: str | Path, gguf_path: str | Path, outtype: str = "bf16") -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``hf_dir``, run with this Python; written under a temporary name
    and renamed when complete, so a stopped run leaves no file that looks finished."""
    script = llama_cpp_src() / "convert_hf_to_gguf.py"
    if not script.exists():
        raise LlamaCppError(f"{script} not found: run `bash benchmarks/build_llama_cpp.sh` (it unpacks the llama.cpp "
                            f"source) or set LLAMA_CPP_SRC to a llama.cpp source folder")
    gguf_path = Path(gguf_path)
    part = gguf_path.with_name(gguf_path.name + ".part")
    _run([sys.executable, script, hf_dir, "--outfile", part, "--outtype", outtype], f"convert_hf_to_gguf.py {hf_dir}")
    part.replace(gguf_path)
    return gguf_path


def quantize(src_gguf: str | Path, dst_gguf: str | Path, kind: str) -> Path:
    """``llama-quantize`` ``src_gguf`` to ``kind`` (q8_0, q4_0, ... as llama-quantize names them)."""
    dst = Path(dst_gguf)
    part = dst.with_name(dst.name + ".part")
    _run([_tool("llama-quantize"), src_gguf, part, kind.upper()], f"llama-quantize {src_gguf} {kind}")
    part.replace(dst)
    return dst


def bench(gguf: str | Path, threads: int = 2, new_tokens: int = 32, depth: int = 780,
          repetitions: int = 1) -> dict[str, Any]:
    """llama-bench's decode of ``new_tokens`` tokens after a ``depth``-token context: ms per token and tokens/s
    (means over ``repetitions``), each repetition's ms per token, and llama-bench's JSON record."""
    from llava_accel.models.no_weights import available_bytes

    tool = _tool("llama-bench")
    gguf = Path(gguf)
    if not gguf.exists():
        raise LlamaCppError(f"{gguf} not found: make it with `python benchmarks/llama_cpp.py prepare`")
    free = available_bytes(torch.device("cpu"))
    if gguf.stat().st_size + 2**30 > free:
        raise LlamaCppError(f"llama-bench on {gguf.name} needs about {(gguf.stat().st_size + 2**30) / 2**30:.1f} GiB "
                            f"of memory and {free / 2**30:.1f} GiB is available: free memory first")
    out = _run([tool, "-m", gguf, "-p", 0, "-n", new_tokens, "-d", depth, "-t", threads, "-r", repetitions,
                "-lm", "none", *amx_batch(gguf), "-o", "json"], f"llama-bench {gguf.name}")
    [record] = json.loads(out)
    per_token = [ns / new_tokens / 1e6 for ns in record["samples_ns"]]
    return {"gguf": str(gguf), "threads": threads, "new_tokens": new_tokens, "depth": depth,
            "repetitions": repetitions, "ms_per_token": record["avg_ns"] / new_tokens / 1e6,
            "tokens_per_s": record["avg_ts"], "ms_per_token_samples": per_token, "record": record}


def amx_batch(gguf: Path) -> list[Any]:
    """``-ub 1`` for a quantised GGUF on a CPU with AMX: ggml's AMX matmul, which holds q8_0 and q4_0 weights there
    and decodes them 1.8-2x faster than a build without it (2-core Xeon, 2026-12-06), segfaulted on every batch of 2
    tokens or more (llama.cpp issue #20824), so the untimed context is made a token at a time; the decode it times
    is one token a step either way."""
    from llava_accel.cpuinfo import cpu_flags

    return ["-ub", 1] if "amx_int8" in cpu_flags() and not gguf.name.endswith("-bf16.gguf") else []


def gguf_name(model_id: str, kind: str) -> str:
    return f"{model_id.rstrip('/').split('/')[-1]}-{kind}.gguf"


def prepare(model_id: str, folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export, convert to bf16, quantise to each of ``QUANTS``, delete the safetensors folder; skips every step
    whose output exists. Returns the GGUF paths and each step's seconds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_dir = folder / f"{model_id.rstrip('/').split('/')[-1]}-text-seed{seed}"
    ggufs = {kind: folder / gguf_name(model_id, kind) for kind in ("bf16",) + QUANTS}
    seconds: dict[str, float] = {}

    def step(name: str, output: Path, work: Any) -> None:
        if output.exists():
            print(f"{name}: {output} exists, skipped", flush=True)
            return
        start = time.perf_counter()
        work()
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {output} in {seconds[name]:.0f} s", flush=True)

    if not ggufs["bf16"].exists():
        step("export", hf_dir / "model.safetensors.index.json", lambda: export_text_model(model_id, hf_dir, seed))
    step("convert bf16", ggufs["bf16"], lambda: convert(hf_dir, ggufs["bf16"], "bf16"))
    for kind in QUANTS:
        step(f"quantize {kind}", ggufs[kind], lambda kind=kind: quantize(ggufs["bf16"], ggufs[kind], kind))
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
        print(f"deleted {hf_dir}", flush=True)
    return {"ggufs": {k: str(v) for k, v in ggufs.items()},
            "gib": {k: v.stat().st_size / 2**30 for k, v in ggufs.items()}, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export, convert to bf16 GGUF, quantise to q8_0 and q4_0")
    prep.add_argument("--model", default=MODEL_ID)
    prep.add_argument("--dir", default=str(DEFAULT_DIR))
    prep.add_argument("--seed", type=int, default=0)
    run = sub.add_parser("bench", help="llama-bench's decode of one GGUF")
    run.add_argument("--gguf", required=True)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--depth", type=int, default=780)
    run.add_argument("--new-tokens", type=int, default=32)
    run.add_argument("--repetitions", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if args.command == "prepare":
            print(json.dumps(prepare(args.model, args.dir, args.seed), indent=1))
        else:
            result = bench(args.gguf, args.threads, args.new_tokens, args.depth, args.repetitions)
            print(f"{Path(args.gguf).name}: {result['ms_per_token']:.1f} ms/token ({result['tokens_per_s']:.2f} "
                  f"tokens/s), {args.threads} threads, depth {args.depth}, load average {os.getloadavg()[0]:.2f}")
            print(json.dumps(result, indent=1))
    except LlavaAccelError as exc:
        print(f"llama_cpp.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
