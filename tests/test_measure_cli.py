"""``llava-accel measure`` and ``llava-accel flops`` from the command line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava_accel.cli import main
from llava_accel.metrics.wer import corpus_wer


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_measure_prints_table_and_writes_json(capsys, tmp_path):
    out = tmp_path / "m.json"
    assert main(["measure", "--task", "synthetic-textvqa", "--limit", "3", "--max-new-tokens", "3",
                 "--warmup", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for row in ("WER", "latency / batch", "TTFT", "J / sample", "FLOPs prefill / sample", "peak RSS", "verdict"):
        assert row in table
    data = json.loads(out.read_text())
    assert len(data["predictions"]) == 3 and data["config"]["dataset"] == "synthetic-textvqa"
    assert data["wer"] == corpus_wer([p["prediction"] for p in data["predictions"]],
                                     [p["references"] for p in data["predictions"]]).wer


def test_flops_logits_last_saves_the_lm_head_on_other_positions(capsys):
    from llava_accel.models.architecture import load_config

    args = ["flops", "--model", "llava-hf/llava-1.5-7b-hf", "--text-tokens", "204"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(args + ["--logits", "last"]) == 0
    last = json.loads(capsys.readouterr().out)
    t = load_config("llava-hf/llava-1.5-7b-hf").text_config
    assert full["prefill_flops"] - last["prefill_flops"] == 2 * t.hidden_size * t.vocab_size * (780 - 1)
    assert full["decode_flops_per_token"] == last["decode_flops_per_token"]


def test_flops_unknown_model_is_one_line(capsys):
    assert main(["flops", "--model", "./no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-accel: error: ") and err.count("\n") == 1


# Ctrl-C after the last timed batch: the CLI on a fake backend, in a process of its own, held at one phase of the
# end of the run (the FLOP pass, or building the result) until the test has sent SIGINT.
CTRL_C_RUN = """
import signal, sys, time
from pathlib import Path
import llava_accel.registry
from llava_accel.cli import main
from tests.test_measure import SleepingBackend

phase, flag = sys.argv[1], Path(sys.argv[2])
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, also where the suite runs in the background

def wait_for_ctrl_c(*args, **kwargs):
    flag.touch()
    sent = flag.with_name("sent")
    for _ in range(1200):  # the FLOP pass is stopped here by SIGINT; building the result goes on once it was sent
        if sent.exists():
            break
        time.sleep(0.05)
    return original(*args, **kwargs)

module = sys.modules["llava_accel.measure"]  # llava_accel.measure is the function
target = {"flops": module._Run, "result": module.environment}[phase]
name = {"flops": "count_flops", "result": "collect"}[phase]
original = getattr(target, name)
setattr(target, name, wait_for_ctrl_c)
llava_accel.registry.load_backend = lambda *a, **k: SleepingBackend(prefill_s=0, step_s=0, slow_calls=0)
sys.exit(main(["measure", "--task", "synthetic-coco", "--limit", "3", "--warmup", "0", "--max-new-tokens", "2",
               "--json", sys.argv[3]] + sys.argv[4:]))
"""


@pytest.mark.parametrize("phase, extra, reason", [
    ("flops", [], "interrupted (Ctrl-C) after the last batch: FLOPs not counted"),
    ("result", ["--no-flops"], "interrupted (Ctrl-C) after the last batch"),
])
def test_ctrl_c_after_the_last_batch_keeps_the_result(tmp_path, phase, extra, reason):
    root = Path(__file__).parents[1]
    script, flag, out = tmp_path / "run.py", tmp_path / "reached", tmp_path / "m.json"
    script.write_text(CTRL_C_RUN)
    proc = subprocess.Popen([sys.executable, str(script), phase, str(flag), str(out), *extra], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(tmp_path / "cache")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached the end of its timed batches"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        flag.with_name("sent").touch()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "verdict" in stdout and f"NOT VALID: {reason}" in stdout  # the table, marked partial
    data = json.loads(out.read_text())
    assert len(data["predictions"]) == 3 and data["validity"]["checks"]["complete"] is False
    assert data["validity"]["reasons"][0] == reason and f"wrote {out}" in stderr


def test_ctrl_c_while_measuring_the_unquantised_reference_keeps_it_and_stops(tmp_path, capsys, monkeypatch):
    from tests.test_measure import SleepingBackend

    quantised = SleepingBackend(prefill_s=0, step_s=0, slow_calls=0)
    reference = SleepingBackend(prefill_s=0, step_s=0, slow_calls=0, fail_at=3, fail_with=KeyboardInterrupt())
    backends = iter([quantised, reference])
    monkeypatch.setattr("llava_accel.registry.load_backend", lambda *a, **k: next(backends))
    out = tmp_path / "m.json"
    assert main(["measure", "--task", "synthetic-coco", "--limit", "4", "--warmup", "1", "--max-new-tokens", "2",
                 "--quantize", "int8", "--json", str(out)]) == 130
    assert "interrupted after 1 of 4 batches" in capsys.readouterr().out and quantised.calls == 0
    assert len(json.loads(out.read_text())["predictions"]) == 1


def test_measure_as_csv_markdown_and_json_rows(capsys):
    args = ["measure", "--task", "synthetic-textvqa", "--limit", "2", "--max-new-tokens", "3", "--warmup", "1",
            "--no-flops"]
    assert main(args + ["--format", "csv"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    row = dict(zip(header.split(","), line.split(",")))
    assert row["backend"] == "cpu" and row["task"] == "synthetic-textvqa" and row["batch_size"] == "1"
    assert float(row["latency_ms_per_sample"]) > 0 and row["valid"] == "False" and "vqa_accuracy" in row
    assert main(args + ["--format", "json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["timed_batches"] == 2 and summary["reasons"] and summary["prefill_flops_per_sample"] is None
    assert main(args + ["--format", "md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| backend | device |") and md[1].startswith("|---|") and len(md) == 3
