"""``llava-accel demo`` end to end on the CPU: every row of the table, the JSON it writes, and skipped backends."""

import json
from dataclasses import asdict, fields
from pathlib import Path

from llava_accel.backends.base import resolve_dtype
from llava_accel.cli import main
from llava_accel.demo import DEMO_TASKS, DemoRow, demo_backends, format_rows, run_demo
from llava_accel.quantize import preferred_dtype
from llava_accel.registry import backend_class


def test_demo_measures_each_backend_on_each_task_and_writes_json(tmp_path):
    backends = [("eager", {"device": "cpu", "dtype": "float32"}), ("cpu", {"dtype": "float32"}), ("no-such", {})]
    rows, out = run_demo(limit=2, batch_size=2, out_dir=tmp_path, backends=backends, log=lambda _: None)
    assert [(r.backend, r.task) for r in rows] == [(b, t) for b, _ in backends for t in DEMO_TASKS]
    for r in rows[:6]:
        assert r.device == "cpu" and r.dtype == "float32" and r.reference == "eager" and not r.skipped
        assert r.wer_percent is not None and r.native and r.latency_ms_per_sample > 0 and r.gflops_per_sample > 0
        assert r.energy_source and r.energy_j_per_sample is not None
        assert (out / f"{r.backend}-{r.task}.json").exists()
    # eager and cpu in fp32 on the same samples give the same tokens (the backends' own tests say so too)
    assert [r.agreement for r in rows[:6]] == [1.0] * 6
    assert all("unknown backend 'no-such'" in r.skipped for r in rows[6:])
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 9 and set(summary[0]) == {f.name for f in fields(DemoRow)}
    table = format_rows(rows)
    assert table.splitlines()[0].split()[:4] == ["backend", "device", "dtype", "task"]
    assert table.count("skipped: unknown backend 'no-such'") == 1  # one line for all its tasks


def test_a_quantised_row_is_labelled_and_compared_with_the_reference(tmp_path):
    backends = [("cpu", {"dtype": "float32"}), ("cpu", {"quantize": "int8-dynamic"})]
    rows, out = run_demo(tasks=["synthetic-coco"], limit=2, batch_size=2, out_dir=tmp_path, backends=backends,
                         log=lambda _: None)
    assert [r.backend for r in rows] == ["cpu", "cpu+int8-dynamic"]
    picked = preferred_dtype("int8-dynamic", "cpu", resolve_dtype(backend_class("cpu").default_dtype))
    assert rows[1].dtype == str(picked).removeprefix("torch.")  # the mode's dtype for the cpu backend's default
    assert rows[1].agreement is not None and rows[1].reference == "cpu"
    saved = json.loads((out / "cpu+int8-dynamic-synthetic-coco.json").read_text())
    assert saved["config"]["backend"]["quantize"] == "int8-dynamic"
    assert saved["config"]["backend"]["quantization"]["quantized_linears"] > 0  # really quantised


def test_demo_defaults_to_every_backend_that_runs_here_reference_first_quantised_last():
    from llava_accel.quantize import MODES
    from llava_accel.registry import backend_class

    cpu_dtype = backend_class("cpu").default_dtype
    chosen = demo_backends()
    assert chosen[0] == ("cpu", {})  # no CUDA on this machine: cpu is the reference
    # those that only lack CUDA run on the CPU in the reference's dtype, so lossless ones must agree 100%
    for name in ("eager", "eagle", "compile"):
        assert (name, {"device": "cpu", "dtype": cpu_dtype}) in chosen
    assert ("flash", {}) in chosen  # cannot run here: listed, shown as skipped with its reason
    quantized = [options["quantize"] for name, options in chosen if "quantize" in options]
    assert quantized == list(MODES)  # the test extra installs every quantisation library
    assert all("quantize" in options for _, options in chosen[-len(MODES):])
    assert [c for c in demo_backends(quantized=False) if "quantize" in c[1]] == []
    assert demo_backends(["eager", "cpu+int8", "cpu"]) == [
        ("cpu", {}), ("eager", {"device": "cpu", "dtype": cpu_dtype}), ("cpu", {"quantize": "int8"})]


def test_demo_command_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--backends", "cpu", "--limit", "1", "--batch-size", "1", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"results go to {tmp_path}/" in err
    assert "ms/sample" in out and "GFLOP/sample" in out and str(tmp_path) in out
    assert len(list(tmp_path.glob("cpu-synthetic-*.json"))) == 3
    head, first = out.splitlines()[:2]
    assert head.split()[4] == "batch" and head.split()[-1] == "valid"
    assert first.split()[4] == "1" and first.split()[-1] == "NO" and " ±" in first  # one timed batch: not valid
    # the reason is named once, with every row it holds for
    assert "not valid, 1 full timed batches, fewer than 5: cpu coco, cpu textvqa, cpu scienceqa" in out


def test_demo_defaults_give_enough_timed_batches_and_write_under_runs(tmp_path, monkeypatch, capsys):
    import llava_accel.demo as demo
    from llava_accel.measure import MIN_TIMED_BATCHES

    seen = {}

    def fake_run_demo(model, tasks, limit, batch_size, out_dir, backends, source):
        seen.update(limit=limit, batch_size=batch_size, out_dir=out_dir)
        return [demo.DemoRow("cpu", tasks[0])], out_dir
    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--backends", "cpu"]) == 0
    # the timed batches a valid result needs (the warm-up batch reruns the first one)
    assert seen["limit"] // seen["batch_size"] >= MIN_TIMED_BATCHES
    assert seen["out_dir"] is None  # run_demo picks runs/demo-TIMESTAMP
    assert demo.default_out_dir().parts[0] == "runs" and demo.default_out_dir().name.startswith("demo-")


def test_demo_rows_in_other_formats():
    from llava_accel.formats import render

    rows = [DemoRow("cpu", "synthetic-coco", "cpu", "float32", 1, 0.0, "cider 6.3", 10.0, 0.5, valid=False,
                    reasons=["2 full timed batches, fewer than 5: pass more samples"])]
    dicts = [asdict(r) for r in rows]
    assert json.loads(render(dicts, "json"))[0]["latency_ms_per_sample_sd"] == 0.5
    header, line = render(dicts, "csv").splitlines()
    assert header.split(",")[:5] == ["backend", "task", "device", "dtype", "batch_size"]
    assert line.startswith("cpu,synthetic-coco,cpu,float32,1,") and ",False," in line
    md = render(dicts, "md").splitlines()
    assert md[0].startswith("| backend | task |") and md[1].startswith("|---|") and "| no |" in md[2]


def test_demo_on_a_named_task_from_a_folder(tmp_path, capsys):
    source = Path(__file__).parent / "fixtures" / "textvqa" / "folder"
    assert main(["demo", "--backends", "cpu", "--task", "textvqa", "--source", str(source), "--limit", "2",
                 "--batch-size", "2", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "cpu-textvqa.json").read_text())
    assert saved["config"]["dataset"] == "textvqa" and saved["config"]["source"].startswith(str(source))
    assert len(saved["predictions"]) == 2 and "vqa_accuracy" in saved["native"]


def test_a_task_that_cannot_load_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import llava_accel.demo as demo

    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was loaded before the tasks were checked")
    monkeypatch.setattr(demo, "load_backend", no_backend)
    assert main(["demo", "--backends", "cpu", "--task", "synthetic-coco,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'nope'" in err
