"""Known noise from our dependencies, silenced precisely: each filter drops named messages and nothing else.

What is dropped, and why it is noise here:
- torchao: "Failed to load .../torchao/_C_*.so" on a torch without CUDA (those libraries hold CUDA kernels only).
- torch: "... is an Enum subclass ... Calling register_constant() on Enum subclasses is deprecated" (torchao
  registers its enums with torch's pytree at import; nothing a user can act on).
- kineto (torch.profiler's C++ side): "USDT:... profiler_start" / "profiler_stop" written to stderr by every
  profiling session, 16-32 lines per ``llava-accel profile``.
- transformers: the "Loading weights" progress bar while we load a model (``quiet_loading``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

KINETO_LINE = re.compile(r"^USDT:.*\] profiler_(start|stop)\s*$")


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str, when=lambda: True) -> None:
        super().__init__()
        self.pattern, self.when = re.compile(pattern), when

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.when() and self.pattern.search(record.getMessage()))


def _torch_without_cuda() -> bool:
    import torch

    return torch.version.cuda is None


def install_log_filters() -> None:
    """Attach the filters to the emitting loggers (by name: the libraries need not be imported yet). Idempotent."""
    cuda_libraries = _DropMessages(r"^Failed to load \S*torchao[/\\]_C\w*\.\S*\.so: ", _torch_without_cuda)
    for name, flt in (("torchao", cuda_libraries),
                      ("torch.utils._pytree", _DropMessages(r"Calling register_constant\(\) on Enum subclasses is "
                                                            r"deprecated"))):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(flt)


@contextmanager
def drop_stderr_lines(pattern: re.Pattern = KINETO_LINE) -> Iterator[None]:
    """Lines that C++ code writes to file descriptor 2 and match ``pattern`` are dropped; the others are written
    to stderr when the block ends, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not pattern.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars off while a model loads (a 0.55M model's bar only clutters), then as they were."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


install_log_filters()  # on import: llava_accel imports this module first
