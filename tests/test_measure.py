"""measure(): every field on the tiny model, JSON round trip, WER recomputed from the saved predictions, latency of a
fake sleeping backend, warm-up exclusion, validity verdict, and partial results on interruption or failure."""

import json
import sys
import time

import pytest
import torch

import llava_accel as la
from llava_accel.backends.base import Backend, GenerationOutput
from llava_accel.measure import measure
from llava_accel.metrics.wer import corpus_wer
from llava_accel.result import MeasureResult
from llava_accel.tasks import synthetic_samples


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the CPU peak cache


@pytest.fixture(scope="module")
def tiny_result():
    backend = la.load_backend("cpu")
    return measure(backend, "synthetic-coco", batch_size=2, limit=4, max_new_tokens=4, warmup=1,
                   flop_counter="fvcore")


def test_every_field(tiny_result):
    m = tiny_result
    assert len(m.predictions) == 4 and all(p.references for p in m.predictions)
    assert m.wer is not None and m.wer >= 0
    assert m.latency.per_batch.n == 2 and m.latency.per_batch.mean > 0 and m.latency.per_sample_s > 0
    assert 0 < m.latency.ttft.mean < m.latency.per_batch.mean
    assert m.latency.tokens_per_s > 0 and m.latency.timed_batches == 2
    # no counter on this machine: the estimate is labelled so, everywhere
    assert (m.energy.source, m.energy.label) == ("estimated", "estimated")
    assert m.energy.joules_per_sample > 0 and m.energy.mean_power_w > 0 and m.energy.idle_power_w is None
    assert m.flops.prefill_per_sample > 0 and m.flops.total > 0 and 0 < m.flops.mfu < 1
    assert m.memory.rss_peak_bytes > 0 and m.memory.device_peak_bytes is None
    c = m.config
    assert c["backend"]["backend"] == "cpu" and c["backend"]["weights"] == "tiny-trained"
    assert (c["batch_size"], c["samples"], c["max_new_tokens"], c["max_input_len"], c["warmup"]) == (2, 4, 4, None, 1)
    assert c["dataset"] == "synthetic-coco"
    env = m.environment
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert env["cpu"]["model"] and env["cpu"]["torch_threads"] >= 1 and env["gpu"] is None


@pytest.fixture(scope="module")
def flop_model():
    from llava_accel.metrics.flops import FlopModel

    cfg = la.load_backend("cpu").model.config
    return FlopModel.fit(cfg, (cfg.vision_config.image_size,) * 2, logits="last")


def test_flops_match_the_batches_shapes(tiny_result, flop_model):
    """Total = sum over batches of prefill(S) + decode steps; per-sample prefill from the same records."""
    total = sum(flop_model.prefill(r.prompt_len, r.size) + flop_model.decode(r.prompt_len, r.steps, r.size)
                for r in tiny_result.batches)
    assert tiny_result.flops.total == pytest.approx(total)
    assert tiny_result.flops.prefill_per_sample == pytest.approx(
        sum(flop_model.prefill(r.prompt_len, r.size) for r in tiny_result.batches) / 4)


def test_fvcore_cross_check_recorded(tiny_result, flop_model):
    pytest.importorskip("fvcore")
    check, first = tiny_result.flops.cross_check, tiny_result.batches[0]
    assert check["flopcounter_prefill_flops"] == flop_model.prefill(first.prompt_len, first.size)
    assert 0.5 < check["ratio"] < 1  # fvcore skips SDPA and the unused last CLIP layer


def test_json_round_trip_and_wer_recomputed(tiny_result, tmp_path):
    path = tmp_path / "m.json"
    text = tiny_result.to_json(path)
    data = json.loads(path.read_text())
    assert json.loads(text) == data
    assert {"wer", "predictions"} <= set(data) and data["energy"]["label"] == "estimated"
    assert MeasureResult.from_json(path) == tiny_result
    preds = data["predictions"]
    assert corpus_wer([p["prediction"] for p in preds], [p["references"] for p in preds]).wer == data["wer"]


def test_table_labels_estimates_and_gives_a_verdict(tiny_result):
    table = str(tiny_result)
    energy_lines = [line for line in table.splitlines() if line.strip().startswith(("J /", "mean power"))]
    assert len(energy_lines) == 4 and all("(estimated)" in line for line in energy_lines)
    assert "measured" not in "\n".join(energy_lines)
    # 2 timed batches < 5: the verdict says so rather than looking fine
    assert not tiny_result.validity.valid and "NOT VALID" in table
    assert any("fewer than 5" in r for r in tiny_result.validity.reasons)


class SleepingBackend(Backend):
    """Sleeps a known time per batch: prefill, then per step; the first calls are slow (one-off costs)."""

    name = "sleeping"

    def __init__(self, prefill_s=0.03, step_s=0.01, slow_calls=1, slow_s=0.3, fail_at=None, fail_with=None,
                 text="a red circle"):
        self.device, self.dtype, self.text = torch.device("cpu"), torch.float32, text
        self.prefill_s, self.step_s, self.slow_calls, self.slow_s = prefill_s, step_s, slow_calls, slow_s
        self.fail_at, self.fail_with, self.calls = fail_at, fail_with, 0

    def describe(self):
        return {"backend": self.name, "device": "cpu", "dtype": "float32"}

    def generate_ids(self, *args, **kwargs):
        raise NotImplementedError

    def generate(self, images, prompts, max_new_tokens=32, min_new_tokens=None, streamer=None, **encode_options):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.fail_with
        if self.calls <= self.slow_calls:
            time.sleep(self.slow_s)
        if streamer:
            streamer.put(torch.zeros(len(prompts), 5, dtype=torch.long))
        time.sleep(self.prefill_s)
        for _ in range(max_new_tokens):
            if streamer:
                streamer.put(torch.zeros(len(prompts), dtype=torch.long))
            time.sleep(self.step_s)
        if streamer:
            streamer.end()
        return [GenerationOutput(self.text, [7] * max_new_tokens) for _ in prompts]


def test_latency_of_a_sleeping_backend_warmup_excluded():
    backend = SleepingBackend()
    image = synthetic_samples("synthetic-coco", 1)[0].image
    samples = [la.Sample(image, "Caption it.", ["A red circle.", "a blue square"]) for _ in range(6)]
    m = measure(backend, samples, batch_size=1, max_new_tokens=4, warmup=1, count_flops=False)
    expected = 0.03 + 4 * 0.01
    lat = m.latency
    assert lat.per_batch.n == 6
    assert expected <= lat.per_batch.min and lat.per_batch.mean < expected * 1.5 + 0.02
    assert lat.per_batch.max < 0.3  # the slow first call was the warm-up, not timed
    assert 0.03 <= lat.ttft.mean < 0.03 * 1.5 + 0.02
    assert 0.01 <= lat.tpot.mean < 0.01 * 1.5 + 0.01  # decode: 3 steps after the first token
    assert all(r.steps == 4 and r.new_tokens == 4 for r in m.batches)
    assert m.wer == 0.0 and m.config["dataset"] == "custom"
    assert m.flops is None and "flops" not in m.validity.checks


def test_without_warmup_the_slow_batch_is_timed_and_flagged():
    m = measure(SleepingBackend(), synthetic_samples("synthetic-coco", 6), max_new_tokens=2, warmup=0,
                count_flops=False)
    assert m.latency.per_batch.max >= 0.3
    assert not m.validity.checks["warmup"] and not m.validity.valid


def test_valid_when_every_check_passes():
    m = measure(SleepingBackend(prefill_s=0.05, step_s=0.05), synthetic_samples("synthetic-coco", 5),
                max_new_tokens=3, warmup=1, count_flops=False, fixed_new_tokens=True)
    assert m.validity.checks == {"complete": True, "warmup": True, "timed_batches": True, "stable": True,
                                 "weights": True}
    assert m.validity.valid and "VALID" in str(m)


def test_interrupt_returns_partial_result_and_checkpoint(tmp_path):
    path = tmp_path / "partial.json"
    backend = SleepingBackend(slow_calls=0, fail_at=4, fail_with=KeyboardInterrupt())  # warm-up + 2 timed, then ^C
    m = measure(backend, synthetic_samples("synthetic-coco", 5), max_new_tokens=2, warmup=1, checkpoint=path)
    assert len(m.predictions) == 2 and m.latency.timed_batches == 2
    assert not m.validity.checks["complete"] and "interrupted after 2 of 5 batches" in m.validity.reasons[0]
    assert json.loads(path.read_text())["predictions"] == [p.__dict__ for p in m.predictions]


def test_failure_keeps_what_was_measured(tmp_path):
    path = tmp_path / "partial.json"
    backend = SleepingBackend(slow_calls=0, fail_at=4, fail_with=RuntimeError("CUDA out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        measure(backend, synthetic_samples("synthetic-coco", 5), max_new_tokens=2, warmup=1, checkpoint=path)
    saved = MeasureResult.from_json(path)
    assert len(saved.predictions) == 2 and not saved.validity.valid


def test_energy_arithmetic_with_a_constant_power_meter(monkeypatch):
    """A 100 W meter: joules follow the timed batches, per-sample and per-token are exact divisions."""
    from llava_accel.metrics.energy import PowerSampler

    module = sys.modules["llava_accel.measure"]  # la.measure is the function, which hides the module

    meter = PowerSampler(lambda: 100.0, background=False)
    meter.source, meter.scope = "fake-100W", "test"
    monkeypatch.setattr(module, "open_meter", lambda device: meter)
    m = measure(SleepingBackend(slow_calls=0), synthetic_samples("synthetic-coco", 3), max_new_tokens=3, warmup=1,
                count_flops=False, idle_seconds=0.05)
    e = m.energy
    assert (e.source, e.label) == ("fake-100W", "measured")
    assert e.total_j == pytest.approx(sum(r.energy_j for r in m.batches))
    assert e.joules_per_sample == pytest.approx(e.total_j / 3)
    assert e.joules_per_token == pytest.approx(e.total_j / 9)
    assert e.mean_power_w == pytest.approx(100.0, rel=0.02)  # reads bracket the timing stamps closely
    assert e.idle_power_w == pytest.approx(100.0, rel=0.02)  # reported beside, not subtracted
    assert all(r.energy_j == pytest.approx(100 * r.latency_s, rel=0.02) for r in m.batches)


def test_progress_only_when_asked_or_on_a_terminal(capsys):
    samples = synthetic_samples("synthetic-coco", 2)
    measure(SleepingBackend(slow_calls=0), samples, max_new_tokens=1, warmup=0, count_flops=False)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a TTY
    measure(SleepingBackend(slow_calls=0), samples, max_new_tokens=1, warmup=0, count_flops=False, progress=True)
    err = capsys.readouterr().err
    assert "measure: 1/2 samples" in err and "measure: 2/2 samples" in err and "ETA" in err


def test_task_budget_applies_and_answers_are_scored_whole():
    image = synthetic_samples("synthetic-coco", 1)[0].image
    samples = [la.Sample(image, "What is written?", ["cat"] * 10, id=str(i), task="textvqa") for i in range(2)]
    backend = SleepingBackend(prefill_s=0, step_s=0, slow_calls=0, text="Cat ASSISTANT: what else?")
    m = measure(backend, samples, warmup=1, count_flops=False)
    assert m.config["dataset"] == "textvqa" and m.config["max_new_tokens"] == 1024  # the task's budget
    # not cut at "ASSISTANT:": lmms-eval 0.7.3's llava_hf never applies the textvqa yaml's `until`
    assert [p.prediction for p in m.predictions] == ["Cat ASSISTANT: what else?"] * 2
    assert m.wer > 0 and m.native["vqa_accuracy"] == 0.0
    synthetic = measure(backend, synthetic_samples("synthetic-scienceqa", 1), warmup=0, count_flops=False)
    assert synthetic.config["max_new_tokens"] == 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive whole number"):
        measure(SleepingBackend(), synthetic_samples("synthetic-coco", 1), batch_size=0)
    with pytest.raises(la.DatasetError, match="no samples to measure: all 1 were skipped"):
        measure(SleepingBackend(), la.SampleSet([], [("x/0", "image not found: x.png")]))
    with pytest.raises(la.DatasetError, match="llava_accel.Sample"):
        measure(SleepingBackend(), ["not a sample"])


def test_caption_scoring_is_recorded_and_checked_first(monkeypatch, capsys):
    from llava_accel.cli import main
    from llava_accel.errors import MetricUnavailableError, OptionError
    from llava_accel.metrics import java as java_tools

    samples = synthetic_samples("synthetic-coco", 2)
    backend = SleepingBackend(prefill_s=0, step_s=0, slow_calls=0, text="a red circle")
    m = measure(backend, samples, warmup=0, count_flops=False, max_new_tokens=1)
    assert m.config["caption_scoring"] == {"ptb_tokenizer": "python",
                                           "meteor": "absent: not computed for synthetic tasks (speed runs)"}
    assert {"bleu_1", "bleu_4", "rouge_l", "cider"} <= set(m.native) and "meteor" not in m.native
    with pytest.raises(OptionError):
        measure(backend, samples, ptb_tokenizer="spacy")
    monkeypatch.setattr(java_tools.shutil, "which", lambda name: None)  # no Java here
    with pytest.raises(MetricUnavailableError, match="needs a Java runtime"):
        measure(backend, samples, ptb_tokenizer="java")
    rc = main(["measure", "--backend", "cpu", "--task", "synthetic-coco", "--limit", "1", "--ptb-tokenizer", "java"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("llava-accel: error: the Java PTB tokenizer needs") and "\n" not in err
