"""``llava-accel measure`` and ``llava-accel flops`` from the command line."""

import json

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
