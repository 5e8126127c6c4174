"""``llava-accel``: the command line. Each subcommand is one small function; user errors are one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

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
    return {k: v for k, v in (("device", args.device), ("dtype", args.dtype), ("attention", args.attention))
            if v is not None}


def _add_backend_args(p: argparse.ArgumentParser, backend_default: str | None = "cpu") -> None:
    p.add_argument("--backend", default=backend_default, help="backend name (see `llava-accel backends`)")
    p.add_argument("--model", default=None, help="hub id or local folder (default: the embedded tiny model)")
    p.add_argument("--device", default=None, help="override the backend's device (cuda, cpu)")
    p.add_argument("--dtype", default=None, help="override the backend's dtype (float16, bfloat16, float32)")
    p.add_argument("--attention", default=None, help="attention implementation (eager, sdpa, flash_attention_2)")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_backend_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .study.spec import load_spec
    from .study.sweep import run_sweep

    summary = run_sweep(load_spec(args.spec), args.out, retry_failed=args.retry_failed, dry_run=args.dry_run)
    if not args.dry_run:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
        print(f"done: {counts}; {summary.skipped} were already done; results in {summary.results}")
    return 0


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (.toml, or .yaml); see benchmarks/reference_study*.toml")
    p.add_argument("--out", required=True, help="folder for results.jsonl; rerun the same command to resume")
    p.add_argument("--retry-failed", action="store_true", help="run again the points recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="list the points still to run, run nothing")


# name -> (function, help, adds the command's arguments). A new subcommand is one function and one row here.
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "backends": (cmd_backends, "list the backends and whether each can run here", lambda p: None),
    "generate": (cmd_generate, "answer one prompt about one image", _add_generate_args),
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
        print(f"llava-accel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llava-accel: interrupted", file=sys.stderr)
        return 130
