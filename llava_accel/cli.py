"""The command line. Each subcommand is one small function; user errors are one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable

from .checks import arg, non_negative_int, positive_float, positive_int, prompt
from .distributed import is_main_process, process_tag
from .errors import LlavaAccelError
from .formats import FORMATS, render
from .measure import FLOP_COUNTERS
from .metrics.flops import LOGITS
from .metrics.ptb import PTB_PYTHON, PTB_TOKENIZERS

if TYPE_CHECKING:  # imported where used
    from .outputs import OutputFile
    from .result import MeasureResult

POSITIVE, NON_NEGATIVE, POSITIVE_FLOAT = arg(positive_int), arg(non_negative_int), arg(positive_float, float)


def cmd_backends(args: argparse.Namespace) -> int:
    from .registry import list_backends

    infos = list_backends()
    if args.format != "text":
        print(render([{"name": i.name, "available": i.available, "why_not": i.reason, "package": i.package}
                      for i in infos], args.format))
        return 0
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
                                 ("offload_folder", args.offload_folder), ("loop", args.loop), ("head", args.head),
                                 ("upcast", None if args.upcast is None else args.upcast == "on"),
                                 ("huge_pages", None if args.huge_pages is None else args.huge_pages == "on"))
               if v is not None}
    flags = {k: True for k in ("quantize_vision", "no_weights") if getattr(args, k)}
    return {**options, **flags}


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
    p.add_argument("--no-weights", action="store_true",
                   help="the model's shipped architecture (llava-hf/llava-1.5-7b-hf) with random weights made here in "
                        "the dtype asked: for speed and memory without the checkpoint; quality figures are meaningless")
    p.add_argument("--loop", default=None, choices=("lean", "generate"),
                   help="cpu backend: our greedy loop (lean, the default where it applies) or transformers' generate")
    p.add_argument("--upcast", default=None, choices=("on", "off"),
                   help="cpu backend: many-row matmuls of bf16 weights in float32 (default: on where the CPU has no "
                        "native bf16)")
    p.add_argument("--huge-pages", default=None, choices=("on", "off"),
                   help="cpu backend: the weights in 2 MiB pages once loaded (default: on where Linux offers them)")
    p.add_argument("--head", default=None, help="eagle backend: the draft head's folder (eagle-train writes one), or "
                                                "'random' (a seeded random head: speed and losslessness checks only)")
    p.add_argument("--device-map", default=None, help="spread the model over the GPUs, then the CPU, then disk "
                                                      "(accelerate big-model inference): auto, balanced, "
                                                      "balanced_low_0, sequential; see docs/scaling.md")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map: memory per device, like 0=7GiB,1=7GiB,cpu=30GiB")
    p.add_argument("--offload-folder", default=None, help="with --device-map: folder for weights that fit on no device")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, type=arg(prompt, str),
                   help="the question (UTF-8 text); the LLaVA-1.5 chat template and the image are added for you")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=32, help="answer length budget in tokens")


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

    from .outputs import check_file, save, write_atomic
    from .registry import load_backend
    from .study.profile import profile_layers
    from .tasks import load_task

    out = check_file(args.json, "--json") if args.json else None
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    _check_img_size(args)
    samples = load_task(args.task, limit=max(batch_sizes), seed=args.seed)  # a bad task fails before the model loads
    backend = load_backend(args.backend, model=args.model, **_backend_options(args))
    profile = profile_layers(backend, samples, batch_sizes=batch_sizes, img_size=args.img_size, repeats=args.repeats)
    print(profile.table() if args.format == "text" else profile.formatted(args.format))
    if out:
        text = json.dumps(profile.to_dict(), indent=1) + "\n"
        print(f"wrote {save(lambda p: write_atomic(p, text), out, 'the profile')}", file=sys.stderr)
    return 0


def _check_img_size(args: argparse.Namespace) -> None:
    """An image side the model cannot take fails before it loads (its config is read without the weights)."""
    if args.img_size is not None:
        from .image_size import check_img_size
        from .models.architecture import load_config
        from .models.loading import DEFAULT_MODEL

        check_img_size(load_config(args.model or DEFAULT_MODEL), args.img_size)


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
    p.add_argument("--img-size", type=POSITIVE, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--repeats", type=POSITIVE, default=5, help="timed forwards per batch size and phase (mean)")
    p.add_argument("--seed", type=int, default=0, help="which samples a synthetic task draws")
    p.add_argument("--json", default=None, help="write the profile as JSON here (input to `llava-accel report`)")
    _add_format_arg(p, "the per-layer tables (md: one per phase; csv, json: one row per module and phase)")


def cmd_measure(args: argparse.Namespace) -> int:
    import functools

    from .measure import measure
    from .outputs import OutputFile, check_file
    from .metrics.ptb import check_ptb_tokenizer
    from .result import MeasureResult
    from .registry import load_backend
    from .tasks import load_task
    from .tasks.folder import load_folder

    check_ptb_tokenizer(args.ptb_tokenizer)  # a bad tokenizer choice fails before the model loads
    # a bad output path or bad data fails before the model loads
    json_file = OutputFile(check_file(args.json, "--json")) if args.json and is_main_process() else None
    _check_img_size(args)
    if args.data:
        samples = load_folder(args.data, args.limit)
    else:
        samples = load_task(args.task, split=args.split, limit=args.limit, source=args.source, seed=args.seed)
    options = _backend_options(args)
    run = functools.partial(measure, dataset=samples, batch_size=args.batch_size, max_input_len=args.max_input_len,
                            max_new_tokens=args.max_new_tokens, limit=args.limit, warmup=args.warmup, seed=args.seed,
                            fixed_new_tokens=args.fixed_new_tokens, img_size=args.img_size,
                            flop_counter=args.flop_counter, ptb_tokenizer=args.ptb_tokenizer)
    reference = MeasureResult.from_json(args.reference) if args.reference else None
    backend = load_backend(args.backend, model=args.model, **options)
    if reference is None and options.get("quantize") and not options.get("no_weights"):
        # a quantised result always carries its drift from the same backend unquantised, in the same dtype (not with
        # random weights: no quality to lose, and the unquantised 7B may not fit where its quantised copy does)
        same = {**{k: v for k, v in options.items() if k not in ("quantize", "quantize_vision")},
                "dtype": backend.dtype}
        reference = run(load_backend(args.backend, model=args.model, **same), count_flops=False)
        if not reference.validity.checks.get("complete", True):  # Ctrl-C while measuring it: keep it, stop there
            if json_file:
                json_file.write_text(reference.to_json())
            return _show(reference, json_file, args.format)
    result = run(backend, count_flops=not args.no_flops, checkpoint=json_file, reference=reference)
    return _show(result, json_file, args.format)


def _show(result: MeasureResult, json_file: OutputFile | None, fmt: str) -> int:
    """Print a measurement in ``fmt`` (and where its JSON went); exit code 130 for one cut short by Ctrl-C."""
    if is_main_process():  # under `accelerate launch` every process holds the same result: one prints it
        print(result if fmt == "text" else render([result.summary()], fmt))
        if json_file:
            print(f"wrote {json_file}", file=sys.stderr)
    return 130 if not result.validity.checks.get("complete", True) else 0


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--task", help="task name (coco, scienceqa, textvqa, synthetic-coco, ...)")
    data.add_argument("--data", help="folder with samples.jsonl (image, prompt, references[, id] per line)")
    p.add_argument("--limit", type=POSITIVE, default=None, help="first N samples (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which samples a synthetic task draws")
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="samples per generate call")
    p.add_argument("--source", default=None, help="where a named task's data is: hub id, save_to_disk folder or folder "
                                                  "with samples.jsonl (default: the task's hub id; docs/tasks.md)")
    p.add_argument("--split", default=None, help="dataset split (default: the one lmms-eval evaluates)")
    p.add_argument("--max-input-len", type=POSITIVE, default=None,
                   help="max text tokens per prompt; longer prompts lose context, then question tail (default: no cut, "
                        "as lmms-eval; docs/tasks.md)")
    p.add_argument("--ptb-tokenizer", choices=PTB_TOKENIZERS, default=PTB_PYTHON,
                   help="caption tokenizer for the COCO metrics: 'python' (default) or 'java' (pycocoevalcap's own "
                        "jar; needs pycocoevalcap and Java)")
    p.add_argument("--img-size", type=POSITIVE, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=None, help="generation budget (default: the task's, else 32)")
    p.add_argument("--fixed-new-tokens", action="store_true",
                   help="generate exactly --max-new-tokens per answer (equal work for speed comparisons)")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=2, help="untimed batches first (default 2)")
    p.add_argument("--no-flops", action="store_true", help="skip the (untimed) FLOP pass")
    p.add_argument("--flop-counter", choices=FLOP_COUNTERS, default="torch",
                   help="'fvcore' adds an fvcore cross-check of the prefill count")
    p.add_argument("--json", default=None, help="write the whole result here (also rewritten during the run)")
    p.add_argument("--reference", default=None, help="a result JSON on the same samples: report the drift from it "
                                                     "(without it, --quantize first measures the backend unquantised)")
    _add_format_arg(p, "the result (md, csv, json: one row of its main figures; --json keeps everything)")


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
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="prompts per forward")
    p.add_argument("--text-tokens", type=NON_NEGATIVE, default=204, help="prompt tokens besides the image tokens")
    p.add_argument("--image-size", type=POSITIVE, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--logits", choices=LOGITS, default="all",
                   help="LM head on every prompt position (a plain forward; default) or the last one (as generate)")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import cli

    return cli(args.model, args.limit, args.batch_size, args.out, args.backends, not args.no_quantized, args.task,
               args.source, args.format)


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="hub id or local folder (default: the embedded tiny model)")
    p.add_argument("--backends", default=None, help="comma-separated backends, NAME+MODE for quantised weights "
                                                     "(default: every one that runs here)")
    p.add_argument("--task", default=None, help="comma-separated tasks (default: the three synthetic ones), e.g. "
                                                "textvqa with --model llava-hf/llava-1.5-7b-hf")
    p.add_argument("--source", default=None, help="where a named task's data lives: a save_to_disk folder or a folder "
                                                  "with samples.jsonl (default: the hub)")
    p.add_argument("--limit", type=POSITIVE, default=None, help="samples per task (default: 5 timed batches, the "
                                                            "fewest a valid measurement needs)")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="samples per generate call (default 1)")
    p.add_argument("--out", default=None, help="folder for the JSON results (default: runs/demo-TIMESTAMP in the "
                                               "working directory)")
    _add_format_arg(p, "the table")
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
    p.add_argument("--latency-budget", type=POSITIVE_FLOAT, default=None,
                   help="seconds per sample: recommend a configuration")
    p.add_argument("--energy-budget", type=POSITIVE_FLOAT, default=None,
                   help="joules per sample: recommend a configuration")


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
    p.add_argument("--samples", type=POSITIVE, default=None, help="samples per task (default 256)")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="default 20")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=None, help="answer budget while collecting (default 32)")
    p.add_argument("--device", default=None, help="device of the target and the head (default cpu)")
    p.add_argument("--dtype", default=None, help="dtype of the target while collecting (default float32)")
    p.add_argument("--split", default=None, help="a named task's split (train on another than you benchmark on)")
    p.add_argument("--source", default=None, help="a named task's data folder or hub id (see load_task)")
    p.add_argument("--profile-samples", type=int, default=None,
                   help="held-out prompts per task for the acceptance profile that sizes the draft tree (default 16; "
                        "0: none, the backend then keeps its default tree)")


# name -> (function, help, adds the command's arguments). A new subcommand is one function and one row here.
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "backends": (cmd_backends, "list the backends and whether each can run here",
                 lambda p: _add_format_arg(p, "the list")),
    "demo": (cmd_demo, "every backend that runs here on the synthetic tasks: one comparison table", _add_demo_args),
    "generate": (cmd_generate, "answer one prompt about one image", _add_generate_args),
    "eagle-train": (cmd_eagle_train, "train an EAGLE draft head for a model", _add_eagle_train_args),
    "measure": (cmd_measure, "quality, latency, energy, FLOPs and memory of a backend on a task", _add_measure_args),
    "flops": (cmd_flops, "FLOPs of an architecture for one prompt shape, without weights (JSON)", _add_flops_args),
    "profile": (cmd_profile, "time and FLOPs of every layer, prefill and decode, per batch size", _add_profile_args),
    "report": (cmd_report, "Markdown report with tables and PNG plots from sweep results", _add_report_args),
    "sweep": (cmd_sweep, "measure every point of a sweep spec, resumably, into DIR/results.jsonl", _add_sweep_args),
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of the command line (its default prints the
    whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_format_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--format", default="text", choices=FORMATS,
                   help=f"how to print {what}: aligned text, Markdown, CSV or JSON")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already names it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is x for x in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


DESCRIPTION = "Fast LLaVA-1.5 inference backends, measured: quality, latency, energy and FLOPs."
EPILOG = """examples:
  llava-accel backends
  llava-accel demo
  llava-accel measure --backend cpu --task synthetic-textvqa --limit 16 --format md
  llava-accel COMMAND -h        options of one command

Errors caused by input or machine are one line on stderr, exit status 2. Documentation: README.md and docs/."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="llava-accel", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:] + ".",
                           formatter_class=_HelpFormatter)
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
