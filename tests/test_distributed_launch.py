"""Data parallelism for real: ``accelerate launch`` starts two processes on the CPU (gloo), as a user would.

One launch, because each costs tens of seconds on a small machine. Its script runs, in order: the ``measure`` command
(same predictions, WER and native metric as one process on the same samples; an uneven split; one results file;
the table printed once), a sweep resumed from a file that one process started, a measurement where one process
fails, and one where a process hangs.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import llava_accel as la
from llava_accel.backends.base import default_threads
from llava_accel.result import MeasureResult
from llava_accel.study import read_records

ACCELERATE = Path(sys.executable).with_name("accelerate")
pytestmark = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
MEASURE = ["--backend", "cpu", "--dtype", "float32", "--task", "synthetic-textvqa", "--limit", "5", "--seed", "3",
           "--batch-size", "2", "--max-new-tokens", "4", "--warmup", "1", "--no-flops"]


def launch(args, cwd, timeout=400, **env):
    """``accelerate launch`` with two processes, on the CPU whatever the machine has (torchrun underneath)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    """The single-process reference runs with the thread count each of the two processes gets on 2 cores."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SCRIPT = """
    import json, os, sys, time
    import llava_accel as la
    from llava_accel import distributed
    from llava_accel.backends.cpu import CpuBackend
    from llava_accel.cli import main

    rank = int(os.environ["RANK"])


    def say(**fields):
        if rank == 0:
            print("STAGE " + json.dumps(fields), flush=True)


    class Flaky(CpuBackend):
        \"\"\"Process 1 fails, or hangs, in its first timed batch (call 2: call 1 is the warm-up).\"\"\"

        def __init__(self, mode):
            super().__init__(dtype="float32")
            self.mode, self.calls = mode, 0

        def generate(self, *args, **kwargs):
            self.calls += 1
            if rank == 1 and self.calls == 2:
                if self.mode == "fail":
                    raise ValueError("bad pixel")
                time.sleep(600)
            return super().generate(*args, **kwargs)


    say(stage="measure", code=main(["measure", *sys.argv[3:], "--json", "result.json"]))
    say(stage="sweep", code=main(["sweep", sys.argv[1], "--out", sys.argv[2]]))

    options = dict(batch_size=1, max_new_tokens=2, warmup=1, count_flops=False, idle_seconds=0, progress=False)
    samples = la.load_task("synthetic-coco", limit=4)
    try:
        la.measure(Flaky("fail"), samples, checkpoint="partial.json", **options)
    except distributed.DataParallelError as exc:
        say(stage="fail", error=str(exc))

    distributed.data_parallel().timeout_s = 5.0  # the barrier's wait; the launch's group timeout stays longer
    start = time.monotonic()
    try:
        la.measure(Flaky("hang"), samples, checkpoint="hung.json", **options)
    except distributed.DataParallelError as exc:
        say(stage="hang", error=str(exc), after_s=time.monotonic() - start)
        sys.exit(3)
"""

SPEC = """
    name = "dp"
    backends = ["cpu"]
    dtypes = ["float32"]
    tasks = ["synthetic-coco"]
    batch_sizes = {sizes}
    limit = 3
    max_new_tokens = 2
    warmup = 1

    [measure_options]
    count_flops = false
    idle_seconds = 0
"""


def test_measure_sweep_failure_and_hang_under_accelerate_launch(tmp_path, one_thread):
    from llava_accel.study import load_spec
    from llava_accel.study.sweep import run_sweep

    (tmp_path / "one.toml").write_text(textwrap.dedent(SPEC.format(sizes="[1]")))
    (tmp_path / "two.toml").write_text(textwrap.dedent(SPEC.format(sizes="[1, 2]")))
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    run_sweep(load_spec(tmp_path / "one.toml"), tmp_path / "out", log=lambda m: None)  # one process: point bs=1
    files = set(os.listdir(tmp_path))

    started = time.monotonic()
    done = launch(["script.py", "two.toml", "out", *MEASURE], tmp_path, LLAVA_ACCEL_DP_TIMEOUT_S="120")
    print(f"accelerate launch, 2 processes: {time.monotonic() - started:.0f} s")
    stages = {s["stage"]: s for s in (json.loads(line[6:]) for line in done.stdout.splitlines()
                                      if line.startswith("STAGE "))}
    assert set(stages) == {"measure", "sweep", "fail", "hang"}, done.stdout[-2000:] + done.stderr[-3000:]

    # measure: one result file, written by the main process; the table printed once; the single-process result
    assert stages["measure"]["code"] == 0 and done.stdout.count("verdict") == 1
    assert set(os.listdir(tmp_path)) - files == {"result.json", "partial.json", "hung.json"}  # the last two: below
    dp = MeasureResult.from_json(tmp_path / "result.json")
    backend = la.load_backend("cpu", dtype="float32", threads=max(1, default_threads() // 2))
    one = la.measure(backend, la.load_task("synthetic-textvqa", limit=5, seed=3), batch_size=2, max_new_tokens=4,
                     warmup=1, count_flops=False, progress=False)
    assert [(p.id, p.prediction, p.token_ids) for p in dp.predictions] == \
           [(p.id, p.prediction, p.token_ids) for p in one.predictions]
    assert (dp.wer, dp.native) == (one.wer, one.native) and dp.native
    # 3 batches of 2, 2 and 1 samples: process 0 runs batches 0 and 2, process 1 batch 1; none lost or repeated
    assert [(p.rank, p.samples, p.batches, p.device) for p in dp.processes] == [(0, 3, 2, "cpu"), (1, 2, 1, "cpu")]
    assert dp.config["data_parallel"]["processes"] == 2 and dp.config["backend"]["threads"] == backend.threads
    assert dp.validity.checks["complete"] and len({p.id for p in dp.predictions}) == 5

    # the sweep: bs=1 was kept, bs=2 measured by both processes and written once, by the main process
    records, _ = read_records(tmp_path / "out" / "results.jsonl")
    assert [r["point"]["batch_size"] for r in records] == [1, 2] and stages["sweep"]["code"] == 0
    assert records[0]["result"]["processes"] == [] and len(records[1]["result"]["processes"]) == 2
    assert len(records[1]["result"]["predictions"]) == 3
    assert done.stdout.count("done: 1 ok; 1 were already done") == 1

    # a failing process: every process raised its error; the main one kept what both measured
    assert "process 1 (cpu on" in stages["fail"]["error"] and "ValueError: bad pixel" in stages["fail"]["error"]
    samples = la.load_task("synthetic-coco", limit=4)
    partial = MeasureResult.from_json(tmp_path / "partial.json")
    assert [p.id for p in partial.predictions] == [samples[0].id, samples[2].id]  # process 1 had timed none
    assert not partial.validity.checks["complete"]

    # a hung process: the main one gave up after the barrier's timeout, named it, kept its own batches (0 and 2),
    # and the launcher ended the job
    assert "gathering the results: process 1 did not arrive within 5 s" in stages["hang"]["error"]
    assert stages["hang"]["after_s"] < 60 and done.returncode != 0
    hung = MeasureResult.from_json(tmp_path / "hung.json")
    assert [p.id for p in hung.predictions] == [samples[0].id, samples[2].id]
    assert not hung.validity.checks["complete"] and "only process 0's batches" in hung.notes[-1]
