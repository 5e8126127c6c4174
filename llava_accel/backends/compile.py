"""``compile``: torch.compile of the decode step over a static KV cache, the path transformers supports natively.

A decode step is one token per row through 32 layers: on a GPU it is bound by kernel launches and weight reads, so
fusing it into one graph (and, in ``reduce-overhead`` mode, one CUDA graph) is where compile helps. That needs fixed
shapes: a ``StaticCache`` plus a ``CompileConfig`` makes transformers' ``generate`` compile only the decode step
(prefill stays eager, its shape changes with every prompt). A new batch size still means a new graph, so batches are
padded up to a bucket (repeating the last row) and the cache length is rounded up, and every compilation is counted
and timed: compile cost is paid on a first call and reported apart from steady state.

The backend keeps one static cache and resets it between calls, where transformers' own
``cache_implementation="static"`` allocates a new one per call: CUDA graphs record the cache's addresses, and new
addresses make cudagraph trees record the graph again on every call.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from ..errors import LlavaAccelError
from ..models.compat import cache_kwarg
from ..models.loading import LoadedModel
from .eager import EagerBackend

MODES = ("default", "reduce-overhead", "max-autotune")
PARTS = ("decode", "vision", "decode+vision")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


@dataclass
class CompileEvent:
    """One call that compiled new graphs: its shape bucket, how many graphs, and the call's wall time."""

    batch: int          # padded batch size
    cache_len: int      # static cache length (tokens)
    graphs: int         # dynamo graphs compiled during the call
    first_call_s: float  # wall time of the whole call, compilation included


def bucket_batch(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``; past the largest, the next multiple of it. No buckets: ``n`` itself."""
    if not buckets:
        return n
    fitting = [b for b in buckets if b >= n]
    return min(fitting) if fitting else -(-n // max(buckets)) * max(buckets)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 0 else n


def pad_rows(inputs: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """Repeat the last sample until the batch has ``rows`` rows (real data, so no row is degenerate)."""
    n = inputs["input_ids"].shape[0]
    if rows == n:
        return inputs
    index = torch.cat([torch.arange(n), torch.full((rows - n,), n - 1)])
    return {k: v.index_select(0, index.to(v.device)) for k, v in inputs.items()}


class FirstRows:
    """A streamer that forwards only the caller's rows: padding rows must not count as generated tokens."""

    def __init__(self, streamer: Any, rows: int) -> None:
        self.streamer, self.rows = streamer, rows

    def put(self, value: torch.Tensor) -> None:
        self.streamer.put(value[: self.rows])

    def end(self) -> None:
        self.streamer.end()


def missing_compiler(device: str) -> str | None:
    """What compiler torch.compile lacks on ``device``, or None (the search order of Inductor and Triton)."""
    if device.startswith("cpu"):
        cxx = os.environ.get("CXX", "g++")
        return None if shutil.which(cxx) else f"a C++ compiler on the CPU ('{cxx}' not found; install g++ or set CXX)"
    if os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"):
        return None
    return "a C compiler for Triton (no gcc or clang found; install gcc or set CC)"


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (counted on cache hits too: each is a (re)compilation)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class CompileBackend(EagerBackend):
    name = "compile"
    device_map_refusal = ("its static KV cache and compiled decode graph need the whole model on one device; use "
                          "'eager' (or 'flash') with device_map")

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None, dtype: str | None = None,
                 attention: str | None = None, mode: str | None = None, fullgraph: bool = False,
                 parts: str = "decode", batch_buckets: Sequence[int] | None = BATCH_BUCKETS,
                 cache_bucket: int = 128, dynamic: bool | None = False, **eager_options: Any) -> None:
        """``dynamic=False``: one graph specialised to each bucket's shapes. torch's default (None) turns a dimension
        symbolic once it has seen two sizes, so the third bucket on would run a generic graph, unlike the first two.
        ``eager_options`` (e.g. ``quantize``) go to ``EagerBackend``."""
        if mode is not None and mode not in MODES:
            raise LlavaAccelError(f"unknown compile mode '{mode}'; use one of {', '.join(MODES)}")
        if parts not in PARTS:
            raise LlavaAccelError(f"unknown compile parts '{parts}'; use one of {', '.join(PARTS)}")
        super().__init__(model, device, dtype, attention, **eager_options)
        from transformers import CompileConfig

        # CUDA graphs remove the per-kernel launch cost that dominates a decode step; they do not exist on CPU
        self.mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        self.fullgraph, self.parts, self.dynamic = fullgraph, parts, dynamic
        self.batch_buckets, self.cache_bucket = tuple(batch_buckets or ()), cache_bucket
        self.compile_config = CompileConfig(mode=self.mode, fullgraph=fullgraph, dynamic=dynamic)
        self.compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        for attr in ("_compiled_call", "_last_compile_config"):  # a model shared with an earlier backend
            self.model.__dict__.pop(attr, None)
        if "vision" in parts:  # never fullgraph: transformers' hidden-state capture takes a lock dynamo cannot trace
            self.model.model.vision_tower.compile(mode=self.mode, dynamic=dynamic)
        self.events: list[CompileEvent] = []
        self.decode_compiled: bool | None = None  # known after the first call
        self.cache: Any = None  # the StaticCache, kept across calls
        self._cache_shape = (0, 0)  # (batch, length) it was made for
        self._cache_kwarg = cache_kwarg(self.model)
        self._events_at_reset = 0

    @classmethod
    def unavailable_reason(cls, device: str | None = None, dtype: str | None = None,
                           attention: str | None = None) -> str | None:
        """Inductor emits C++ on the CPU (needs a C++ compiler); Triton builds its launcher with a C compiler."""
        reason = super().unavailable_reason(device, dtype, attention)
        missing = None if reason else missing_compiler(str(device or cls.default_device))
        return f"torch.compile needs {missing}" if missing else reason

    def generation_kwargs(self) -> dict[str, Any]:
        if "decode" not in self.parts:
            return {}
        return {self._cache_kwarg: self.cache, "compile_config": self.compile_config}

    def _prepare_cache(self, batch: int, length: int) -> None:
        """Reset the cache, or replace it when the batch changes or it is too short; it never shrinks, so that a
        shorter prompt reuses the compiled graph of a longer one."""
        from transformers import StaticCache

        if self._cache_shape[0] == batch and self._cache_shape[1] >= length:
            self.cache.reset()
            return
        length = max(length, self._cache_shape[1] if self._cache_shape[0] == batch else 0)
        self.cache = None  # free the old one first
        self.cache = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=length)
        self._cache_shape = (batch, length)

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        rows, length = inputs["input_ids"].shape
        batch = bucket_batch(rows, self.batch_buckets)
        if "decode" in self.parts:
            self._prepare_cache(batch, round_up(length + max_new_tokens, self.cache_bucket))
        graphs, start = dynamo_graphs(), time.perf_counter()
        out = super().generate_ids(pad_rows(inputs, batch), max_new_tokens, min_new_tokens,
                                   FirstRows(streamer, rows) if streamer is not None and batch != rows else streamer)
        seconds, graphs = time.perf_counter() - start, dynamo_graphs() - graphs
        if graphs:
            self.events.append(CompileEvent(batch, self._cache_shape[1], graphs, seconds))
        if "decode" in self.parts and self.decode_compiled is None:
            self._check_decode_compiled()
        return out[:rows]

    def _check_decode_compiled(self) -> None:
        """transformers skips compilation with only a warning (e.g. CPU offload); a 'compile' result must not lie."""
        self.decode_compiled = getattr(self.model, "_last_compile_config", None) == self.compile_config
        if not self.decode_compiled:
            raise LlavaAccelError("transformers did not compile the decode step here (static cache not usable with "
                                  "this model placement); use the 'eager' backend or keep the model on one device")

    def stats(self) -> dict[str, Any]:
        """Compilations since ``reset_stats()``: any inside timed batches means a shape missed its bucket."""
        new = self.events[self._events_at_reset:]
        return {"compilations": len(new), "compile_s": sum(e.first_call_s for e in new)}

    def reset_stats(self) -> None:
        self._events_at_reset = len(self.events)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compile_mode": self.mode, "fullgraph": self.fullgraph,
                "dynamic": self.dynamic,
                "compiled_parts": self.parts, "decode_compiled": self.decode_compiled,
                "batch_buckets": list(self.batch_buckets), "cache_bucket": self.cache_bucket,
                "static_cache": {"batch": self._cache_shape[0], "length": self._cache_shape[1]},
                "first_call_s": round(self.events[0].first_call_s, 3) if self.events else None,
                "recompiles": max(len(self.events) - 1, 0), "compile_events": [asdict(e) for e in self.events]}
