"""The real thing end to end on the tiny model: `llava-accel sweep` with measure(), resumed, then the report."""

import json

from llava_accel.cli import main
from llava_accel.study import read_records

SPEC = """
name = "tiny-e2e"
backends = ["cpu"]
tasks = ["synthetic-textvqa"]
batch_sizes = [1, 2]
limit = 2
warmup = 1
max_new_tokens = 3
"""


def test_sweep_measures_resumes_and_reports(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    records = read_records(out / "results.jsonl")[0]
    assert [r["status"] for r in records] == ["ok", "ok"]
    for r in records:  # the line holds measure()'s whole result and the point it measured
        result = r["result"]
        assert result["config"]["batch_size"] == r["point"]["batch_size"]
        assert result["config"]["backend"]["backend"] == "cpu" and len(result["predictions"]) == 2
        assert result["latency"]["per_sample_s"] > 0 and result["energy"]["label"] == "estimated"
        assert json.loads(r["key"])["batch_size"] == r["point"]["batch_size"]
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out)]) == 0  # nothing left to do
    assert "0 to run" in capsys.readouterr().out
    assert len(read_records(out / "results.jsonl")[0]) == 2
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## 1. Grid 1" in text, text
    assert "| 2 |" in text, text
    assert (tmp_path / "report" / "plots" / "latency_vs_batch.png").exists()
