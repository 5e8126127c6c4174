"""Timing statistics and the timing streamer."""

import statistics
import time

import pytest

from llava_accel.metrics.latency import TimingStreamer, percentile, summarize


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summarize():
    st = summarize([1.0, 2.0, 3.0, 4.0])
    assert (st.mean, st.p50, st.min, st.max, st.n) == (2.5, 2.5, 1.0, 4.0, 4)
    assert st.stdev == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert st.cv == pytest.approx(st.stdev / 2.5)
    assert summarize([]) is None and summarize([2.0]).cv == 0.0


def test_streamer_stamps_phases_and_syncs():
    synced = []
    s = TimingStreamer(lambda: synced.append(1))
    s.put("prompt")
    time.sleep(0.02)
    for _ in range(3):
        s.put("token")
    s.end()
    assert s.steps == 3
    assert s.first_token_at - s.prompt_at >= 0.02
    assert s.end_at >= s.first_token_at
    assert len(synced) == 3  # prompt, first token, end: not every step
