"""Large CPU tensors in 2 MiB pages (Linux's transparent huge pages), for the streams a decode step reads.

Why: a CPU decode step reads every weight once and the whole KV cache, gigabytes in a stream. In 4 KiB pages each
page costs a TLB miss and a page walk, and the hardware prefetchers stop at every page boundary. On the 2-core Xeon
(KVM), the 7B's int4 matmuls took 152-161 ms a token with the weights in 2 MiB pages against 170 in 4 KiB ones, and
attention over its bf16 cache 23.5 ms against 27 (docs/backends.md). Linux backs anonymous memory with such pages
where asked (THP mode "madvise", the default of many distributions, or "always"), in two ways used here:
``advise`` marks memory not yet touched, so that its first touch maps 2 MiB pages (free of cost: for tensors we
make, such as the KV cache); ``collapse`` moves memory already written into them (``MADV_COLLAPSE``, Linux 6.1+:
about 3 s a GB here, so it is done once, at load, and its time is reported). Only the 2 MiB-aligned interior of a
tensor's memory is touched; the values never change.
"""

from __future__ import annotations

import ctypes
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

PAGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's THP mode ("always", "madvise", "never"), or None where there is no such setting (not Linux)."""
    try:
        return THP_MODE.read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def unavailable_reason() -> str | None:
    """Why tensors cannot be put in huge pages here (one line), or None."""
    mode = thp_mode()
    if mode is None:
        return "this system has no transparent huge pages (Linux only)"
    if mode == "never":
        return f"transparent huge pages are off ({THP_MODE} says 'never')"
    return None


@functools.cache
def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """glibc's madvise, loaded once (None: not glibc)."""
    try:
        madvise = ctypes.CDLL("libc.so.6", use_errno=True).madvise
    except OSError:
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def _madvise(start: int, length: int, advice: int) -> bool:
    madvise = _libc_madvise()
    return madvise is not None and madvise(start, length, advice) == 0


def _interior(t: torch.Tensor) -> tuple[int, int]:
    """(start, length) of the whole 2 MiB pages inside the memory of ``t``'s storage (length 0: none)."""
    storage = t.untyped_storage()
    start = -(-storage.data_ptr() // PAGE) * PAGE
    end = (storage.data_ptr() + storage.nbytes()) // PAGE * PAGE
    return start, max(end - start, 0)


def advise(t: torch.Tensor) -> torch.Tensor:
    """Ask for 2 MiB pages under ``t`` before anything writes it (a fresh ``torch.empty``); returns ``t``. A no-op
    off the CPU, on small tensors and where ``unavailable_reason`` says why."""
    if t.device.type == "cpu" and unavailable_reason() is None:
        start, length = _interior(t)
        if length:
            _madvise(start, length, MADV_HUGEPAGE)
    return t


def _dense(tensors: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The tensors that hold memory: a tensor subclass without storage of its own (a quantisation library's weight)
    stands for the tensors it is made of (``__tensor_flatten__``); one without such tensors is skipped."""
    for t in tensors:
        try:
            t.untyped_storage().data_ptr()
            yield t
        except RuntimeError:  # no storage of its own
            if hasattr(t, "__tensor_flatten__"):
                yield from _dense(getattr(t, name) for name in t.__tensor_flatten__()[0])


@dataclass(frozen=True)
class Collapsed:
    """What ``collapse`` did: bytes of the tensors' memory now in 2 MiB pages, of how many it tried, in how long."""
    bytes: int
    of_bytes: int
    seconds: float

    def __str__(self) -> str:
        if not self.of_bytes:
            return "no tensor spans a 2 MiB page"
        return f"{self.bytes / 1e9:.2f} of {self.of_bytes / 1e9:.2f} GB in 2 MiB pages ({self.seconds:.1f} s)"


def collapse(tensors: Iterable[torch.Tensor]) -> Collapsed:
    """Move the memory of these CPU tensors (each storage once) into 2 MiB pages, where the kernel can: memory it
    cannot move (file-backed, no huge page free) stays as it is and is not counted."""
    begun, done, tried, seen = time.perf_counter(), 0, 0, set()
    for t in _dense(tensors):
        if t.device.type != "cpu" or t.untyped_storage().data_ptr() in seen:
            continue
        seen.add(t.untyped_storage().data_ptr())
        start, length = _interior(t)
        if length:
            tried += length
            _madvise(start, length, MADV_HUGEPAGE)  # and keeps them so, should the kernel ever split them
            done += length if _madvise(start, length, MADV_COLLAPSE) else 0
    return Collapsed(done, tried, time.perf_counter() - begun)
