"""``llava-accel``: the command line. Each subcommand is one small function; user errors are one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .distributed import is_main_process, process_tag
from .errors import LlavaAccelError


def cmd_backends(args: argparse.Namespace) -> int:
    from .registry import list_backends

    infos = list_backends()
    rows = [("name", "available", "why not", "package")]
    rows += [(i.name, "yes" if i.available else "no", i.reason or "", i.package) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .preprocessing import load_image
    from .registry import load_backend

    image = load_image(args.image)  # fail on a bad image before spending time on the model
    backend = load_backend(args.backend, model=args.model, **_backend_options(args))
    print(backend.generate([image], [args.prompt], max_new_tokens=args.max_new_tokens)[0].text)
    return 0


def _backend_options(args: argparse.Namespace) -> dict:
    options = {k: v for k, v in (("device", args.device), ("dtype", args.dtype), ("attention", args.attention),
                                 ("quantize", args.quantize), ("device_map", args.device_map),
                                 ("max_memory", args.max_memory and _max_memory(args.max_memory)),
                                 ("offload_folder", args.offload_folder), ("loop", args.loop)) if v is not None}
    return {**options, "quantize_vision": True} if args.quantize_vision else options


def _max_memory(text: str) -> dict:
    """'0=7GiB,1=7GiB,cpu=30GiB' -> {0: '7GiB', 1: '7GiB', 'cpu': '30GiB'} (accelerate's max_memory)."""
    memory: dict = {}
    for item in text.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if not key or not value:
            raise LlavaAccelError(f"--max-memory takes DEVICE=SIZE pairs like 0=7GiB,1=7GiB,cpu=30GiB; got '{text}'")
        memory[int(key) if key.isdigit() else key] = value
    return memory


def _add_backend_args(p: argparse.ArgumentParser, backend_default: str | None = "cpu") -> None:
    p.add_argument("--backend", default=backend_default, help="backend name (see `llava-accel backends`)")
    p.add_argument("--model", default=None, help="hub id or local folder (default: the embedded tiny model)")
    p.add_argument("--device", default=None, help="override the backend's device (cuda, cpu)")
    p.add_argument("--dtype", default=None, help="override the backend's dtype (float16, bfloat16, float32)")
    p.add_argument("--attention", default=None, help="attention implementation (eager, sdpa, flash_attention_2)")
    p.add_argument("--quantize", default=None, help="quantised weights: int8, int8-dynamic (CPU), int4 (see "
                                                    "docs/backends.md)")
    p.add_argument("--quantize-vision", action="store_true", help="quantise the vision tower and projector too")
    p.add_argument("--loop", default=None, choices=("lean", "generate"),
                   help="cpu backend: our greedy loop (lean, the default where it applies) or transformers' generate")
    p.add_argument("--device-map", default=None, help="spread the model over the GPUs, then the CPU, then disk "
                                                      "(accelerate big-model inference): auto, balanced, sequential; "
                                                      "see docs/scaling.md")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map: memory per device, like 0=7GiB,1=7GiB,cpu=30GiB")
    p.add_argument("--offload-folder", default=None, help="with --device-map: folder for weights that fit on no device")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .study.spec import load_spec
    from .study.sweep import run_sweep

    summary = run_sweep(load_spec(args.spec), args.out, retry_failed=args.retry_failed, dry_run=args.dry_run)
    if not args.dry_run and is_main_process():
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
        print(f"done: {counts}; {summary.skipped} were already done; results in {summary.results}")
    return 0


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (.toml, or .yaml); see benchmarks/reference_study*.toml")
    p.add_argument("--out", required=True, help="folder for results.jsonl; rerun the same command to resume")
    p.add_argument("--retry-failed", action="store_true", help="run again the points recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="list the points still to run, run nothing")


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    from .registry import load_backend
    from .study.profile import profile_layers
    from .tasks import load_task

    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    backend = load_backend(args.backend, model=args.model, **_backend_options(args))
    samples = load_task(args.task, limit=max(batch_sizes), seed=args.seed)
    profile = profile_layers(backend, samples, batch_sizes=batch_sizes, img_size=args.img_size, repeats=args.repeats)
    print(profile.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(profile.to_dict(), f, indent=1)
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise LlavaAccelError(f"{flag} must be positive integers separated by commas, like 1,4,8,16; got '{text}'")
    return values


def _add_profile_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    p.add_argument("--batch-sizes", default="1,4,8,16", help="comma-separated batch sizes (default 1,4,8,16)")
    p.add_argument("--task", default="synthetic-textvqa", help="task whose images and prompts are fed")
    p.add_argument("--img-size", type=int, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per batch size and phase (mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the profile as JSON here (input to `llava-accel report`)")


def cmd_measure(args: argparse.Namespace) -> int:
    import functools

    from .measure import measure
    from .result import MeasureResult
    from .registry import load_backend
    from .tasks import load_task
    from .tasks.folder import load_folder

    # bad data fails before the model loads
    if args.data:
        samples = load_folder(args.data, args.limit)
    else:
        samples = load_task(args.task, split=args.split, limit=args.limit, source=args.source, seed=args.seed)
    options = _backend_options(args)
    run = functools.partial(measure, dataset=samples, batch_size=args.batch_size, max_input_len=args.max_input_len,
                            max_new_tokens=args.max_new_tokens, limit=args.limit, warmup=args.warmup, seed=args.seed,
                            fixed_new_tokens=args.fixed_new_tokens, img_size=args.img_size,
                            flop_counter=args.flop_counter)
    reference = MeasureResult.from_json(args.reference) if args.reference else None
    backend = load_backend(args.backend, model=args.model, **options)
    if reference is None and options.get("quantize"):
        # a quantised result always carries its drift from the same backend unquantised, in the same dtype
        same = {**{k: v for k, v in options.items() if k not in ("quantize", "quantize_vision")},
                "dtype": backend.dtype}
        reference = run(load_backend(args.backend, model=args.model, **same), count_flops=False)
    result = run(backend, count_flops=not args.no_flops, checkpoint=args.json, reference=reference)
    if is_main_process():  # under `accelerate launch` every process holds the same result: one prints it
        print(result)
        if args.json:
            print(f"wrote {args.json}", file=sys.stderr)
    return 130 if not result.validity.checks.get("complete", True) else 0


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--task", help="task name (coco, scienceqa, textvqa, synthetic-coco, ...)")
    data.add_argument("--data", help="folder with samples.jsonl (image, prompt, references[, id] per line)")
    p.add_argument("--limit", type=int, default=None, help="first N samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--source", default=None, help="where a named task's data is: hub id, save_to_disk folder or folder "
                                                  "with samples.jsonl (default: the task's hub id; docs/tasks.md)")
    p.add_argument("--split", default=None, help="dataset split (default: the one lmms-eval evaluates)")
    p.add_argument("--max-input-len", type=int, default=200,
                   help="max text tokens per prompt; longer prompts lose context, then question tail (docs/tasks.md)")
    p.add_argument("--img-size", type=int, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: the task's, else 32)")
    p.add_argument("--fixed-new-tokens", action="store_true",
                   help="generate exactly --max-new-tokens per answer (equal work for speed comparisons)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    p.add_argument("--no-flops", action="store_true", help="skip the (untimed) FLOP pass")
    p.add_argument("--flop-counter", choices=("torch", "fvcore"), default="torch",
                   help="'fvcore' adds an fvcore cross-check of the prefill count")
    p.add_argument("--json", default=None, help="write the whole result here (also rewritten during the run)")
    p.add_argument("--reference", default=None, help="a result JSON on the same samples: report the drift from it "
                                                     "(without it, --quantize first measures the backend unquantised)")


def cmd_flops(args: argparse.Namespace) -> int:
    import json

    from .metrics.flops import architecture_flops
    from .models.architecture import load_config

    counts = architecture_flops(load_config(args.model), args.batch_size, args.text_tokens, logits=args.logits,
                                image_size=args.image_size)
    print(json.dumps({"model": args.model, **counts}, indent=1))
    return 0


def _add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llava-hf/llava-1.5-7b-hf",
                   help="hub id or local folder; the shipped 7B config is used offline (default: llava-1.5-7b-hf)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--text-tokens", type=int, default=204, help="prompt tokens besides the image tokens")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--logits", choices=("all", "last"), default="all",
                   help="LM head on every prompt position (a plain forward; default) or the last one (as generate)")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import cli

    return cli(args.model, args.limit, args.batch_size, args.out, args.backends, not args.no_quantized, args.task,
               args.source)


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="hub id or local folder (default: the embedded tiny model)")
    p.add_argument("--backends", default=None, help="comma-separated backends, NAME+MODE for quantised weights "
                                                     "(default: every one that runs here)")
    p.add_argument("--task", default=None, help="comma-separated tasks (default: the three synthetic ones), e.g. "
                                                "textvqa with --model llava-hf/llava-1.5-7b-hf")
    p.add_argument("--source", default=None, help="where a named task's data lives: a save_to_disk folder or a folder "
                                                  "with samples.jsonl (default: the hub)")
    p.add_argument("--limit", type=int, default=8, help="samples per task (default 8)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=None, help="folder for the JSON results (default: llava-accel-demo-TIMESTAMP)")
    p.add_argument("--no-quantized", action="store_true",
                   help="leave out the cpu backend's quantised rows (int8, int8-dynamic, int4)")


def cmd_report(args: argparse.Namespace) -> int:
    from .study.report import write_report

    path = write_report(args.results, args.out, latency_budget=args.latency_budget, energy_budget=args.energy_budget)
    print(f"report: {path}")
    return 0


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results.jsonl files (or sweep folders) and profile JSON files")
    p.add_argument("--out", required=True, help="folder for report.md and plots/")
    p.add_argument("--latency-budget", type=float, default=None, help="seconds per sample: recommend a configuration")
    p.add_argument("--energy-budget", type=float, default=None, help="joules per sample: recommend a configuration")


def cmd_eagle_train(args: argparse.Namespace) -> int:
    from .eagle.train import TrainConfig, train_head

    given = {"tasks": args.task.split(",") if args.task else None, "samples_per_task": args.samples,
             "epochs": args.epochs, "lr": args.lr, "max_new_tokens": args.max_new_tokens, "device": args.device,
             "dtype": args.dtype, "split": args.split, "source": args.source, "profile_samples": args.profile_samples}
    result = train_head(args.model, args.out, TrainConfig(**{k: v for k, v in given.items() if v is not None}))
    print(f"EAGLE head written to {result.out_dir}: {result.examples} examples, {result.steps} steps in "
          f"{result.seconds:.0f} s; last epoch: loss {result.loss:.4f}, top-1 agreement {result.top1:.3f}")
    return 0


def _add_eagle_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="target: hub id or local folder (default: the embedded tiny model)")
    p.add_argument("--task", default=None, help="task(s) whose prompts the target answers, comma-separated "
                                                "(default: the three synthetic tasks)")
    p.add_argument("--out", required=True, help="folder for the head (model.safetensors + eagle_head.json)")
    p.add_argument("--samples", type=int, default=None, help="samples per task (default 256)")
    p.add_argument("--epochs", type=int, default=None, help="default 20")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer budget while collecting (default 32)")
    p.add_argument("--device", default=None, help="device of the target and the head (default cpu)")
    p.add_argument("--dtype", default=None, help="dtype of the target while collecting (default float32)")
    p.add_argument("--split", default=None, help="a named task's split (train on another than you benchmark on)")
    p.add_argument("--source", default=None, help="a named task's data folder or hub id (see load_task)")
    p.add_argument("--profile-samples", type=int, default=None,
                   help="held-out prompts per task for the acceptance profile that sizes the draft tree (default 16; "
                        "0: none, the backend then keeps its default tree)")


# name -> (function, help, adds the command's arguments). A new subcommand is one function and one row here.
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "backends": (cmd_backends, "list the backends and whether each can run here", lambda p: None),
    "demo": (cmd_demo, "every backend that runs here on the synthetic tasks: one comparison table", _add_demo_args),
    "generate": (cmd_generate, "answer one prompt about one image", _add_generate_args),
    "eagle-train": (cmd_eagle_train, "train an EAGLE draft head for a model", _add_eagle_train_args),
    "measure": (cmd_measure, "quality, latency, energy, FLOPs and memory of a backend on a task", _add_measure_args),
    "flops": (cmd_flops, "FLOPs of an architecture for one prompt shape, without weights (JSON)", _add_flops_args),
    "profile": (cmd_profile, "time and FLOPs of every layer, prefill and decode, per batch size", _add_profile_args),
    "report": (cmd_report, "Markdown report with tables and PNG plots from sweep results", _add_report_args),
    "sweep": (cmd_sweep, "measure every point of a sweep spec, resumably, into DIR/results.jsonl", _add_sweep_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # a command line prints results, not transformers' progress bars and advisory warnings
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LlavaAccelError as exc:
        print(f"llava-accel: error{process_tag()}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llava-accel: interrupted", file=sys.stderr)
        return 130
