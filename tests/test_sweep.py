"""Sweeps: the spec parser, the crash-safe results file, resume after a kill, failing and out-of-memory points.

The measurement is replaced by fakes here (seams of ``run_sweep``), so these tests check the orchestration exactly
and fast; tests/test_sweep_tiny.py runs the real thing end to end on the tiny model.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llava_accel.cli import main
from llava_accel.outputs import OutputPathError
from llava_accel.study import ResultStore, SpecError, load_spec, parse_spec, read_records
from llava_accel.study.lock import SweepLockedError
from llava_accel.study.store import ResultsFileError
from llava_accel.study.sweep import OOM, run_sweep

SPEC = """
name = "t"
backends = ["cpu"]
tasks = ["synthetic-textvqa"]
batch_sizes = [1, 2]
limit = 2

[[grid]]
name = "batch size"
batch_sizes = [1, 2, 4]

[[grid]]
name = "length"
batch_sizes = [2]
max_input_lens = [50, 100]
"""


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


class FakeMeasure:
    """Returns a result computed from the point; raises for chosen batch sizes; remembers what it ran."""

    def __init__(self, fail=None):
        self.fail, self.ran = fail or {}, []

    def __call__(self, backend, point, samples):
        self.ran.append(point.key)
        if point.batch_size in self.fail:
            raise self.fail[point.batch_size]
        return {"latency": {"per_batch_s": {"mean": 0.1 * point.batch_size}}, "n_samples": len(samples)}


def fake_load(point):
    return object()


def fake_samples(task, limit, seed, source):
    return [f"{task}/{seed}/{i}" for i in range(limit or 4)]


def sweep(spec, out, **kw):
    kw.setdefault("measure", FakeMeasure())
    logs = []
    summary = run_sweep(spec, out, load=fake_load, samples=fake_samples, log=logs.append, **kw)
    return summary, logs


def test_grids_are_a_union_each_point_once(tmp_path):
    points = load_spec(write(tmp_path, SPEC)).points(["cpu"])
    keys = [p.key for p, _ in points]
    assert len(keys) == len(set(keys)) == 5  # bs 1, 2, 4 at no length + bs 2 at 50 and 100
    by_shape = {(p.batch_size, p.max_input_len): grids for p, grids in points}
    assert by_shape == {(1, None): ["batch size"], (2, None): ["batch size"], (4, None): ["batch size"],
                        (2, 50): ["length"], (2, 100): ["length"]}
    assert [p.batch_size for p, _ in points if p.max_input_len is None] == [1, 2, 4]  # upwards: OOM stops larger


def test_shared_point_is_measured_once_and_labelled_with_both_grids(tmp_path):
    spec = parse_spec({"backends": ["cpu"], "tasks": ["synthetic-coco"], "grid": [
        {"name": "a", "batch_sizes": [1, 4]}, {"name": "b", "batch_sizes": [4], "max_input_lens": [1]},
        {"name": "c", "batch_sizes": [4, 8]}]})
    points = spec.points(["cpu"])
    grids = {(p.batch_size, p.max_input_len): g for p, g in points}
    assert grids[(4, None)] == ["a", "c"] and grids[(4, 1)] == ["b"] and len(points) == 4


def test_grid_names_are_the_grids_own(tmp_path):
    spec = parse_spec({"name": "study", "backends": "cpu", "tasks": "t", "batch_sizes": 1,
                       "grid": [{}, {"name": "b", "batch_sizes": 2}], "profile": {"batch_sizes": [1]}})
    assert spec.name == "study" and spec.grid_names() == ["grid 1", "b", "per-layer profile"]


def test_available_expands_to_the_backends_that_can_run(tmp_path):
    spec = parse_spec({"backends": "available", "tasks": "synthetic-coco", "batch_sizes": 1})
    assert sorted(p.backend for p, _ in spec.points(["cpu", "eager"])) == ["cpu", "eager"]


@pytest.mark.parametrize("text, field", [
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_size=[1]\n", "batch_size"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[0]\n", "batch_sizes"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=['x']\n", "batch_sizes"),
    ("backends=['cpu']\nbatch_sizes=[1]\n", "tasks"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[1]\nrepetitions=0\n", "repetitions"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[1]\nlimit='all'\n", "limit"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[1, 1]\n", "batch_sizes"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\n[[grid]]\nbatch_sizes=[1]\nmax_input_len=[5]\n", "max_input_len"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[1]\n[profile]\nrepeats=2\n", "batch_sizes"),
    ("backends=['cpu']\ntasks=['synthetic-coco']\nbatch_sizes=[1]\nbackend_options={cpu=3}\n", "backend_options"),
    ("backends=['cpu']\ntasks=['textvqa']\nbatch_sizes=[1]\ntask_sources={textvqa=3}\n", "task_sources"),
    ("backends=['cpu'\n", "invalid TOML"),
])
def test_bad_spec_is_one_line_naming_the_field(tmp_path, capsys, text, field):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and field in message and str(path) in message
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and field in stderr and "Traceback" not in stderr


def test_unknown_field_suggests_the_right_one(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'batch_sizes'"):
        load_spec(write(tmp_path, "backends=['cpu']\ntasks=['t']\nbatch_size=[1]\n"))


def test_unknown_backend_is_an_error_before_any_point(tmp_path):
    spec = load_spec(write(tmp_path, "backends=['cpu', 'nosuch']\ntasks=['synthetic-coco']\nbatch_sizes=[1]\n"))
    with pytest.raises(SpecError, match="'backends'.*'nosuch'"):
        sweep(spec, tmp_path / "out")
    results = tmp_path / "out" / "results.jsonl"
    assert not results.exists() or read_records(results)[0] == []


def test_yaml_spec(tmp_path):
    spec = load_spec(write(tmp_path, "backends: [cpu]\ntasks: [synthetic-coco]\nbatch_sizes: [1, 2]\n", "s.yaml"))
    assert [p.batch_size for p, _ in spec.points([])] == [1, 2]


# -- the results file -------------------------------------------------------------------------------------------
def test_torn_last_line_is_dropped_and_the_file_stays_valid(tmp_path):
    path = tmp_path / "results.jsonl"
    good = [{"key": "a", "status": "ok"}, {"key": "b", "status": "ok"}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text + '{"key": "c", "status": "o')  # a write cut short by a kill
    assert read_records(path)[0] == good
    store = ResultStore(path)
    assert store.records == good and store.dropped_bytes == len('{"key": "c", "status": "o')
    assert path.read_text() == text  # cut at the last complete line
    store.append({"key": "c", "status": "ok", "value": float("nan")})
    records = read_records(path)[0]
    assert [r["key"] for r in records] == ["a", "b", "c"] and records[2]["value"] is None  # strict JSON: NaN -> null


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}')
    store = ResultStore(path)
    store.append({"key": "c"})
    assert [r["key"] for r in read_records(path)[0]] == ["a", "b", "c"]


def test_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ResultsFileError, match="line 2"):
        ResultStore(path)


# -- running ----------------------------------------------------------------------------------------------------
def test_resume_skips_finished_points(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    first, logs = sweep(spec, tmp_path / "out")
    assert first.ran == first.total == 5 and first.statuses == {"ok": 5}
    assert any("ETA" in line for line in logs) and any("[5/5]" in line for line in logs)
    again = FakeMeasure()
    second, _ = sweep(spec, tmp_path / "out", measure=again)
    assert second.ran == 0 and second.skipped == 5 and again.ran == []
    records = read_records(tmp_path / "out" / "results.jsonl")[0]
    assert len({r["key"] for r in records}) == len(records) == 5
    assert (tmp_path / "out" / "spec.toml").read_text() == Path(spec.path).read_text()


def test_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = parse_spec({"backends": ["cpu"], "tasks": ["synthetic-coco", "synthetic-textvqa"],
                       "batch_sizes": [1, 2, 4, 8]})
    fake = FakeMeasure(fail={2: ValueError("boom\nsecond line"), 4: RuntimeError("CUDA out of memory. Tried 2 GiB")})
    summary, _ = sweep(spec, tmp_path / "out", measure=fake)
    lines = read_records(tmp_path / "out" / "results.jsonl")[0]
    records = {(r["point"]["task"], r["point"]["batch_size"]): r for r in lines}
    assert len(records) == 8 and summary.ran == 8
    for task in ("synthetic-coco", "synthetic-textvqa"):
        assert records[(task, 1)]["status"] == "ok" and records[(task, 1)]["result"]["n_samples"] == 4
        assert records[(task, 2)]["status"] == "error" and records[(task, 2)]["error"] == "ValueError: boom"
        assert "Traceback" in records[(task, 2)]["traceback"]
        assert records[(task, 4)]["status"] == OOM and "out of memory" in records[(task, 4)]["error"]
        assert records[(task, 8)]["status"] == OOM and "batch size 4" in records[(task, 8)]["error"]
    assert len(fake.ran) == 6  # batch 8 was not tried after batch 4 ran out of memory
    # a plain rerun keeps the failures; --retry-failed runs them again and the new lines win
    assert sweep(spec, tmp_path / "out")[0].ran == 0
    retried, _ = sweep(spec, tmp_path / "out", retry_failed=True)
    assert retried.ran == 6
    store = ResultStore(tmp_path / "out" / "results.jsonl")
    assert all(r["status"] == "ok" for r in store.latest().values()) and len(store.latest()) == 8


def test_ctrl_c_stops_the_sweep_and_keeps_what_finished(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    fake = FakeMeasure(fail={4: KeyboardInterrupt()})
    logs = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "out", load=fake_load, samples=fake_samples, measure=fake, log=logs.append)
    done = read_records(tmp_path / "out" / "results.jsonl")[0]
    assert [r["point"]["batch_size"] for r in done] == [1, 2] and "rerun the same command" in logs[-1]


def test_task_sources_reach_the_loader(tmp_path):
    data = tmp_path / "textvqa"
    data.mkdir()
    (data / "samples.jsonl").write_text("")
    spec = parse_spec({"backends": "cpu", "tasks": ["textvqa", "synthetic-coco"], "batch_sizes": 1,
                       "task_sources": {"textvqa": str(data)}})
    seen = []
    run_sweep(spec, tmp_path / "out", load=fake_load, measure=FakeMeasure(), log=lambda s: None,
              samples=lambda task, limit, seed, source: seen.append((task, source)) or [1])
    assert sorted(seen) == [("synthetic-coco", None), ("textvqa", str(data))]


def test_backend_that_fails_to_load_fails_its_points_only(tmp_path):
    from llava_accel.errors import BackendUnavailableError

    spec = parse_spec({"backends": ["cpu", "eager"], "tasks": ["synthetic-coco"], "batch_sizes": [1, 2]})

    def load(point):
        if point.backend == "eager":
            raise BackendUnavailableError("backend 'eager' is not available here: needs a CUDA GPU")
        return object()

    logs = []
    run_sweep(spec, tmp_path / "out", load=load, samples=fake_samples, measure=FakeMeasure(), log=logs.append)
    statuses = {(r["point"]["backend"], r["point"]["batch_size"]): r["status"]
                for r in read_records(tmp_path / "out" / "results.jsonl")[0]}
    assert statuses == {("cpu", 1): "ok", ("cpu", 2): "ok", ("eager", 1): "unavailable", ("eager", 2): "unavailable"}


KILLED_RUN = """
import sys, time
from llava_accel.study import load_spec
from llava_accel.study.sweep import run_sweep

spec, out, block_at, flag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
calls = []

def measure(backend, point, samples):
    calls.append(point.key)
    if len(calls) == block_at:  # the point in progress when the process is killed
        open(flag, "w").close()
        time.sleep(600)
    return {"latency": {"per_batch_s": {"mean": point.batch_size}}, "n_samples": len(samples)}

run_sweep(load_spec(spec), out, measure=measure, load=lambda p: object(),
          samples=lambda t, limit, seed, source: list(range(limit or 4)), log=lambda s: None)
"""


def start_blocked_sweep(tmp_path: Path, point: int) -> tuple[Path, Path, subprocess.Popen]:
    """A sweep of SPEC in a process of its own, returned once it is blocked inside its ``point``-th point:
    (spec path, results folder, the process)."""
    spec_path = write(tmp_path, SPEC)
    script = write(tmp_path, KILLED_RUN, "killed_run.py")
    out, flag = tmp_path / "out", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(script), str(spec_path), str(out), str(point), str(flag)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the sweep never reached point {point} (exit code {proc.poll()})")
        time.sleep(0.05)
    return spec_path, out, proc


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path):
    spec_path, out, proc = start_blocked_sweep(tmp_path, 4)
    try:
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = read_records(out / "results.jsonl")[0]
    assert len(before) == 3  # three points finished and synced; the fourth was in progress
    fake = FakeMeasure()
    summary, _ = sweep(load_spec(spec_path), out, measure=fake)
    assert summary.skipped == 3 and summary.ran == 2 and len(fake.ran) == 2
    assert not set(fake.ran) & {r["key"] for r in before}  # nothing measured twice
    after = read_records(out / "results.jsonl")[0]
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 5 and after[:3] == before  # nothing lost, nothing duplicated
    assert {p.key for p, _ in load_spec(spec_path).points([])} == set(keys)
    assert all(r["status"] == "ok" and r["result"]["n_samples"] > 0 for r in after)


def test_dry_run_lists_points_without_running(tmp_path):
    fake = FakeMeasure()
    summary, logs = sweep(load_spec(write(tmp_path, SPEC)), tmp_path / "out", measure=fake, dry_run=True)
    assert summary.ran == 0 and fake.ran == [] and sum("synthetic-textvqa" in line for line in logs) == 5


def test_dry_run_writes_nothing(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    sweep(spec, tmp_path / "new", dry_run=True)
    assert not (tmp_path / "new").exists()  # no folder, no spec.toml, no results.jsonl, no lock
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.jsonl").write_bytes(b'{"key": "a", "status": "ok"}\n{"key": "b", "sta')  # a torn last line
    summary, logs = sweep(spec, out, dry_run=True)
    assert (out / "results.jsonl").read_bytes().endswith(b'"sta') and sorted(os.listdir(out)) == ["results.jsonl"]
    assert summary.total == 5 and any("torn last line" in line for line in logs)


def test_two_sweeps_on_one_folder_the_second_refuses_in_one_line(tmp_path):
    """A sweep holds its folder (flock on DIR/sweep.lock): a second one refuses at once, before any point; a dry run
    still lists; the kernel drops the lock when the holder dies (even by SIGKILL), so the folder is usable again."""
    spec_path, out, proc = start_blocked_sweep(tmp_path, 1)
    try:
        fake = FakeMeasure()
        with pytest.raises(SweepLockedError, match=f"another sweep is writing to {out} \\(pid {proc.pid} ") as err:
            sweep(load_spec(spec_path), out, measure=fake)
        assert fake.ran == [] and "\n" not in str(err.value)
        spec_copy = (out / "spec.toml").read_bytes()
        summary, _ = sweep(load_spec(spec_path), out, dry_run=True)
        assert summary.skipped == 0 and (out / "spec.toml").read_bytes() == spec_copy
        result = subprocess.run([sys.executable, "-m", "llava_accel", "sweep", str(spec_path), "--out", str(out)],
                                capture_output=True, text=True, env={**os.environ,
                                                                     "PYTHONPATH": str(Path(__file__).parents[1])})
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "another sweep is writing to" in result.stderr
    finally:
        proc.kill()
        proc.wait()
    summary, _ = sweep(load_spec(spec_path), out)  # the holder is gone: the lock with it
    keys = [r["key"] for r in read_records(out / "results.jsonl")[0]]
    assert summary.ran == 5 and len(keys) == len(set(keys)) == 5


def test_a_line_that_cannot_be_written_is_saved_elsewhere(tmp_path, capsys, monkeypatch):
    """The results folder replaced by a file in the middle of a sweep: the finished point is saved to a temporary
    file (stderr and the error say where) and the sweep stops with a one-line error."""
    out = tmp_path / "out"
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the fallback folder

    def measure(backend, point, samples):
        shutil.rmtree(out)
        out.write_text("not a folder any more")
        return {"n_samples": len(samples)}

    with pytest.raises(OutputPathError, match="the finished point is in ") as err:
        sweep(load_spec(write(tmp_path, SPEC)), out, measure=measure)
    saved = Path(str(err.value).split("the finished point is in ")[1].split(":")[0])
    (record,) = read_records(saved)[0]
    assert record["result"] == {"n_samples": 2} and "\n" not in str(err.value)
    assert f"saved it to {saved} instead" in capsys.readouterr().err
