"""``cpu``: the fastest CPU path. bf16 only where the CPU computes it natively, else fp32 where the model fits in it
(bf16 weights on such a CPU run their many-row matmuls in fp32: ``llava_accel.upcast``), an explicit thread count,
and greedy decoding in our own loop (``llava_accel.lean.greedy``: the same tokens as ``generate``, less work per
step), with ``generate`` kept where that loop does not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import checks, gemv, hugepages
from ..cpuinfo import cpu_has_native_bf16
from ..distributed import local_share
from ..errors import BackendUnavailableError, OptionError
from ..lean.greedy import GreedyDecoder, unsupported_reason
from ..quantize import mmap_large_buffers
from ..upcast import LOW_PRECISION, OWN_MIN_ELEMENTS, UPCAST_MIN_ROWS, cpu_gemms, own_kernel_max_rows
from .base import default_threads
from .eager import EagerBackend

LOOPS = ("lean", "generate")


def cpu_linears(backend: Any, upcast: bool | None, speculative: bool = False) -> tuple[str, str]:
    """Give a CPU backend's bf16 Linear layers their CPU forward (``llava_accel.upcast``): many-row inputs
    in fp32 where that pays (``upcast`` None: bf16/fp16 weights on a CPU without native bf16) or where asked, few-row
    inputs on our kernel where it is faster (``speculative``: wherever a verification needs it to be lossless).
    Returns what ``describe()`` says of each: (upcast, gemv)."""
    checks.optional(checks.boolean, upcast, "upcast")
    if upcast is None:
        upcast = backend.dtype in LOW_PRECISION and not cpu_has_native_bf16()
    upcast_layers, own = cpu_gemms(backend.model, upcast, own_kernel_max_rows(cpu_has_native_bf16(), speculative))
    said = f"{upcast_layers} Linear layers compute inputs of >= {UPCAST_MIN_ROWS} rows in float32" if upcast else "off"
    if own.layers:
        return said, f"{gemv.describe()} for inputs of <= {own.max_rows} rows in {own.layers} bf16 Linear layers"
    if gemv.unavailable_reason():
        return said, gemv.describe()
    return said, f"torch's kernels (no bf16 Linear layer of {OWN_MIN_ELEMENTS} weights or more)"


def weights_in_huge_pages(backend: Any, enabled: bool | None) -> str:
    """Move a CPU backend's weights into 2 MiB pages (``llava_accel.hugepages``: a decode step streams them all)
    unless ``enabled`` is False. Returns what ``describe()`` says of it."""
    if enabled is False:
        return "off (asked)"
    reason = hugepages.unavailable_reason()
    if reason:
        return f"off: {reason}"
    return str(hugepages.collapse([*backend.model.parameters(), *backend.model.buffers()]))


def fp32_shortfall(model: Any) -> str | None:
    """Why ``model``'s float32 weights do not fit in the memory available now (None: they fit, or their size is not
    known offline: a hub id whose config is neither shipped nor cached, or a model object). Counted on the meta
    device from its config: nothing is allocated."""
    from ..models.architecture import SHIPPED_CONFIGS, build_model, load_config
    from ..models.no_weights import memory_need

    if not isinstance(model, str) or not (model in SHIPPED_CONFIGS or (Path(model) / "config.json").is_file()):
        return None
    need, block, free = memory_need(build_model(load_config(model)), torch.device("cpu"), torch.float32)
    if need + block <= free:
        return None
    return f"its float32 weights need about {(need + block) / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is available"


def cpu_dtype(model: Any) -> tuple[str, str]:
    """(dtype, why) for ``model`` on this CPU: bf16 where the CPU has it natively, else fp32 where the fp32 weights fit
    in memory, else bf16 (half the memory; the prefill still in fp32: ``llava_accel.upcast``)."""
    if cpu_has_native_bf16():
        return "bfloat16", "default bfloat16 (native bf16)"
    shortfall = fp32_shortfall(model)
    if shortfall:
        return "bfloat16", f"bfloat16: {shortfall}"
    return "float32", "default float32 (no native bf16 on this CPU)"


class CpuBackend(EagerBackend):
    name = "cpu"
    default_device = "cpu"
    default_dtype = "bfloat16" if cpu_has_native_bf16() else "float32"

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 attention: str | None = None, threads: int | None = None, loop: str | None = None,
                 upcast: bool | None = None, huge_pages: bool | None = None, **options: Any) -> None:
        """``loop``: "lean" (our greedy loop; the default where it applies) or "generate" (transformers').
        ``upcast``: many-row matmuls of bf16/fp16 weights in fp32 (default: where the CPU has no native bf16); the
        few-row ones (decode steps) run our own kernel where it is faster (``llava_accel.upcast``).
        ``huge_pages``: the weights in 2 MiB pages once loaded (default: where Linux offers them; a few seconds a GB of
        weights not made in them).
        ``options``: those of ``EagerBackend`` (``quantize``, ``quantize_vision``)."""
        if device not in (None, "cpu"):
            raise OptionError(f"the 'cpu' backend runs on the CPU only, not on '{device}'; leave the device out, or "
                              "use the 'eager' backend for CUDA (CLI: --backend eager)")
        if loop not in (None, *LOOPS):
            raise OptionError(f"unknown loop '{loop}'; use one of {', '.join(LOOPS)}")
        checks.optional(checks.positive_int, threads, "threads")
        checks.optional(checks.boolean, huge_pages, "huge_pages")
        gemv.prefetch_hint()  # a nonsense LLAVA_ACCEL_PREFETCH is refused here, before the model loads
        self.threads = threads or local_share(default_threads())  # shared with data-parallel peers
        torch.set_num_threads(self.threads)
        self.dtype_reason = "asked"
        if dtype is None and not options.get("quantize"):  # a quantize mode picks the dtype its kernels need
            dtype, self.dtype_reason = cpu_dtype(model)
        mmap_large_buffers()  # before the model's buffers: they and a prefill's then return to the system when freed
        super().__init__(model, "cpu", dtype, attention, **options)
        self.upcast, self.gemv = cpu_linears(self, upcast)
        self.huge_pages = weights_in_huge_pages(self, huge_pages)
        self.loop_reason = unsupported_reason(self.model)  # why the lean loop cannot run this model, if it cannot
        if loop == "lean" and self.loop_reason:
            raise BackendUnavailableError(f"loop='lean' is not available: {self.loop_reason}; use loop='generate'")
        self.loop = loop or ("generate" if self.loop_reason else "lean")
        tokenizer = self.processor.tokenizer
        self.decoder = GreedyDecoder(self.model, tokenizer.eos_token_id, tokenizer.pad_token_id) \
            if self.loop == "lean" else None

    @classmethod
    def unavailable_reason(cls, device: str | None = None, dtype: str | None = None,
                           attention: str | None = None) -> str | None:
        """Never a missing GPU: another device than the CPU is a wrong option, which ``__init__`` refuses as such."""
        return None

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        if self.decoder is None:
            return super().generate_ids(inputs, max_new_tokens, min_new_tokens, streamer)
        return self.decoder.generate(inputs, max_new_tokens, min_new_tokens, streamer)

    def describe(self) -> dict[str, Any]:
        loop = {"loop": self.loop, **({"loop_reason": self.loop_reason} if self.loop_reason else {})}
        return {**super().describe(), "threads": self.threads, "dtype_reason": self.dtype_reason,
                "upcast": self.upcast, "gemv": self.gemv, "huge_pages": self.huge_pages, **loop}
