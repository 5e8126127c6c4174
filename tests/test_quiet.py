"""Known dependency noise is dropped, precisely: other messages on the same channels still come through."""

import logging
import os

import torch

import llava_accel  # noqa: F401  (installs the log filters)
from llava_accel.quiet import drop_stderr_lines, quiet_loading
from llava_accel.study.profile import ProfilerTimer


def test_profiler_sessions_leave_no_usdt_lines_but_other_stderr_survives(capfd):
    timer = ProfilerTimer()
    with timer.session():
        torch.mm(torch.ones(8, 8), torch.ones(8, 8))
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "profiler_st" not in err and "a real warning" in err


def test_drop_stderr_lines_drops_only_the_kineto_lines(capfd):
    with drop_stderr_lines():
        os.write(2, b"USDT:2026-12-03 16:53:38 7301:7301 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"USDT: something else\n")
    assert capfd.readouterr().err == "USDT: something else\n"


def test_torchao_and_pytree_noise_is_filtered_other_records_are_not():
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addHandler(handler)
    try:
        logging.getLogger("torchao").warning("Failed to load /x/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-"
                                             "linux-gnu.so: Could not load this library")
        logging.getLogger("torchao").warning("Failed to load something else")
        logging.getLogger("torch.utils._pytree").warning(
            "<enum 'X'> is an Enum subclass and is now natively supported by torch.compile as an opaque value type. "
            "Calling register_constant() on Enum subclasses is deprecated and will be an error in a future release.")
        logging.getLogger("torch.utils._pytree").warning("another pytree warning")
    finally:
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).removeHandler(handler)
    expected = ["Failed to load something else", "another pytree warning"]
    if torch.version.cuda is not None:  # with CUDA a torchao library that fails to load is news
        expected.insert(0, seen[0])
    assert seen == expected


def test_quiet_loading_restores_the_progress_bar_setting():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    with quiet_loading():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == before
