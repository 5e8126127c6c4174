"""Peak RSS is reset at the start of a measurement and sees an allocation made during it."""

import sys

import pytest
import torch

from llava_accel.metrics.memory import MemoryTracker, rss_peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_rss_peak_covers_the_measurement():
    before = rss_peak_bytes()
    tracker = MemoryTracker("cpu")
    assert tracker.rss_scope == "measurement"
    baseline = tracker.result().rss_peak_bytes
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    del big
    result = tracker.result()
    assert result.rss_peak_bytes >= baseline + 60 * 2**20
    assert result.device_peak_bytes is None and result.device_reserved_peak_bytes is None
    assert before > 0
