"""Data-parallel measurement, in one pytest process: N "processes" are threads that meet through an in-memory
transport (``DataParallel._all_gather``), so sharding, the merge into one result, failures and timeouts are checked
fast and exactly. tests/test_distributed_launch.py runs the real thing under ``accelerate launch`` (gloo).
"""

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch

import llava_accel as la
from llava_accel import distributed
from llava_accel.backends.base import GenerationOutput
from llava_accel.distributed import DataParallel, DataParallelError, Part, _merge_meters, own_gpus
from llava_accel.measure import measure
from llava_accel.result import MeasureResult
from llava_accel.tasks import load_task

from .test_measure import SleepingBackend


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the CPU peak cache


class ThreadedDP(DataParallel):
    """A process of a job whose processes are threads: the exchange is a barrier on a shared board."""

    def _all_gather(self, item):
        board = self.group
        board["slots"][self.rank] = item
        try:
            board["barrier"].wait()
            gathered = list(board["slots"])
            board["barrier"].wait()  # everyone has read before anyone writes again
        except threading.BrokenBarrierError:
            raise RuntimeError("timed out waiting for the other ranks") from None
        return gathered


def run_threads(world, work, timeout_s=60.0, monkeypatch=None):
    """``work(dp)`` on ``world`` threads, each seeing its own ``data_parallel()``; returns results or exceptions."""
    board = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=timeout_s)}
    local = threading.local()
    monkeypatch.setattr(distributed, "data_parallel", lambda: getattr(local, "dp", None))
    outcomes = [None] * world

    def target(rank):
        local.dp = ThreadedDP(rank, world, rank, world, torch.device("cpu"), "host", timeout_s, board)
        try:
            outcomes[rank] = work(local.dp)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcomes[rank] = exc

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 30)
    return outcomes


class EchoBackend(SleepingBackend):
    """Answers an image's sample with its reference for even samples and 'wrong' for odd ones, so a prediction that
    lands on another sample changes the native metric; fails at call ``fail_at``, or hangs in its first call."""

    def __init__(self, samples, fail_at=None, error=None, hang_s=0.0):
        super().__init__(prefill_s=0.0, step_s=0.0, slow_calls=1 if hang_s else 0, slow_s=hang_s, fail_at=fail_at,
                         fail_with=error)
        self.answers = {id(s.image): s.references[0] if i % 2 == 0 else "wrong" for i, s in enumerate(samples)}

    def generate(self, images, prompts, **options):
        outputs = super().generate(images, prompts, **options)
        return [GenerationOutput(self.answers[id(i)], o.token_ids) for i, o in zip(images, outputs)]


@pytest.fixture(scope="module")
def textvqa():
    return load_task("synthetic-textvqa", limit=5, seed=3)


def same_result(a, b):
    """Every process returns the same result, but for when it started and how long it took in all."""
    clock = ("started_at", "duration_s")
    return (dataclasses.replace(a, config={k: v for k, v in a.config.items() if k not in clock})
            == dataclasses.replace(b, config={k: v for k, v in b.config.items() if k not in clock}))


def quiet(backend, samples, **kw):
    kw = {"batch_size": 2, "max_new_tokens": 2, "warmup": 1, "count_flops": False, "idle_seconds": 0,
          "progress": False, **kw}
    return measure(backend, samples, **kw)


# -- sharding -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_deals_every_item_once_balanced(world):
    for n in range(10):
        items = list(range(n))
        shards = [DataParallel(r, world, r, world, torch.device("cpu"), "h", 1.0).shard(items) for r in range(world)]
        assert sorted(x for s in shards for x in s) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


# -- one result from two processes ----------------------------------------------------------------------------------
def test_two_processes_give_the_single_process_result(textvqa, monkeypatch):
    single = quiet(EchoBackend(textvqa), textvqa)
    results = run_threads(2, lambda dp: quiet(EchoBackend(textvqa), textvqa), monkeypatch=monkeypatch)
    assert all(isinstance(r, MeasureResult) for r in results), results
    a, b = results
    assert same_result(a, b)
    assert [p.id for p in a.predictions] == [s.id for s in textvqa]  # original order, none lost or repeated
    assert a.predictions == single.predictions
    assert (a.wer, a.native) == (single.wer, single.native) and 0 < a.native["vqa_accuracy"] < 100
    # batches 0 and 2 on process 0, batch 1 on process 1: an uneven split, merged back in order
    assert [(p.rank, p.samples, p.batches) for p in a.processes] == [(0, 3, 2), (1, 2, 1)]
    assert [r.size for r in a.batches] == [2, 2, 1] and a.config["samples"] == 5 and a.config["batches"] == 3
    assert a.validity.checks["complete"] and a.config["data_parallel"]["processes"] == 2
    # throughput over the slowest process's timed time; latency statistics over every full batch
    slowest = max(p.latency.total_s for p in a.processes)
    assert a.latency.total_s == slowest and a.latency.per_batch.n == 2
    assert a.latency.tokens_per_s == pytest.approx(sum(r.new_tokens for r in a.batches) / slowest)
    assert a.energy.total_j == pytest.approx(sum(p.energy.total_j for p in a.processes))
    assert a.energy.label == "estimated" and a.energy.scope.startswith("sum over 2 processes")


def test_flops_of_two_processes_add_up_to_the_single_process_count(monkeypatch):
    samples = load_task("synthetic-coco", limit=5, seed=1)
    kw = {"count_flops": True, "max_new_tokens": 3}
    single = quiet(la.load_backend("cpu", dtype="float32", threads=1), samples, **kw)
    backends = [la.load_backend("cpu", dtype="float32", threads=1) for _ in range(2)]
    a, b = run_threads(2, lambda dp: quiet(backends[dp.rank], samples, **kw), monkeypatch=monkeypatch)
    assert same_result(a, b) and [p.token_ids for p in a.predictions] == [p.token_ids for p in single.predictions]
    f, g = a.flops, single.flops
    assert f.total == pytest.approx(g.total)
    assert f.prefill_per_sample == pytest.approx(g.prefill_per_sample)
    assert f.per_generated_token == pytest.approx(g.per_generated_token)
    assert f.peak_flops_per_s == pytest.approx(2 * g.peak_flops_per_s)  # two devices' peak
    assert f.achieved_flops_per_s == pytest.approx(f.total / a.latency.total_s)
    assert [(r.prompt_len, r.flops) for r in a.batches] == [(r.prompt_len, r.flops) for r in single.batches]


def test_more_processes_than_batches(textvqa, monkeypatch):
    results = run_threads(3, lambda dp: quiet(EchoBackend(textvqa[:4]), textvqa[:4]), monkeypatch=monkeypatch)
    a = results[0]
    assert isinstance(a, MeasureResult), results
    assert [p.samples for p in a.processes] == [2, 2, 0] and len(a.predictions) == 4
    assert a.validity.checks["complete"] and any("2 had no batch" in n for n in a.notes)


# -- failures ------------------------------------------------------------------------------------------------------
def test_a_process_that_fails_while_timing_fails_all_and_the_checkpoint_keeps_every_process_batches(
        textvqa, monkeypatch, tmp_path):
    path = tmp_path / "m.json"

    def work(dp):  # process 1: warm-up (call 1), its first batch (call 2), then fails
        backend = EchoBackend(textvqa, fail_at=3 if dp.rank == 1 else None, error=ValueError("bad pixel"))
        return quiet(backend, textvqa * 2, batch_size=1, checkpoint=path)

    results = run_threads(2, work, monkeypatch=monkeypatch)
    assert all(isinstance(r, DataParallelError) for r in results), results
    assert str(results[0]) == str(results[1])
    assert "process 1 (cpu on host) failed: ValueError: bad pixel" in str(results[0])
    assert isinstance(results[1].__cause__, ValueError)
    saved = MeasureResult.from_json(path)  # written once, by process 0, with both processes' batches
    assert len(saved.predictions) == 5 + 1 and not saved.validity.checks["complete"]
    assert [p.id for p in saved.predictions] == [s.id for s in (textvqa * 2)[:3]] + [s.id for s in
                                                                                     (textvqa * 2)[4:10:2]]
    assert any("bad pixel" in n for n in saved.notes)


def test_a_process_that_fails_to_start_fails_all_before_timing(textvqa, monkeypatch):
    backends = [EchoBackend(textvqa), EchoBackend(textvqa, fail_at=1, error=RuntimeError("no kernel"))]
    results = run_threads(2, lambda dp: quiet(backends[dp.rank], textvqa), monkeypatch=monkeypatch)
    assert all(isinstance(r, DataParallelError) for r in results) and "warm-up" in str(results[0])
    assert backends[0].calls == 1  # process 0 stopped after its warm-up: no batch was timed


def test_the_same_failure_everywhere_keeps_its_type(textvqa, monkeypatch):
    """All processes out of memory alike: each raises its own error, classified as in one process (sweeps: oom)."""
    def work(dp):
        return quiet(EchoBackend(textvqa, fail_at=1, error=torch.OutOfMemoryError("CUDA out of memory")), textvqa)

    results = run_threads(2, work, monkeypatch=monkeypatch)
    assert all(type(r) is torch.OutOfMemoryError for r in results), results


@pytest.mark.parametrize("warmup, where", [(1, "warm-up"), (0, "gathering the results")])
def test_a_hung_process_times_out_and_the_main_one_keeps_its_batches(textvqa, monkeypatch, tmp_path, warmup, where):
    failed_after, path = {}, tmp_path / "m.json"

    def work(dp):  # process 1 hangs in its first call (warm-up, or its first timed batch), far beyond the timeout
        start = time.monotonic()
        try:
            return quiet(EchoBackend(textvqa, hang_s=4.0 if dp.rank == 1 else 0.0), textvqa, warmup=warmup,
                         checkpoint=path)
        finally:
            failed_after[dp.rank] = time.monotonic() - start

    results = run_threads(2, work, timeout_s=0.5, monkeypatch=monkeypatch)
    assert isinstance(results[0], DataParallelError), results
    assert f"{where}: a process did not arrive within 0.5 s" in str(results[0])
    assert distributed.TIMEOUT_ENV in str(results[0])
    assert failed_after[0] < 3.0  # the main process did not wait for the hung one
    if warmup == 0:  # it had timed its batches 0 and 2: they are saved, marked incomplete
        saved = MeasureResult.from_json(path)
        assert [p.id for p in saved.predictions] == [s.id for s in textvqa[:2] + textvqa[4:]]
        assert not saved.validity.checks["complete"] and "only process 0's batches" in saved.notes[-1]
    else:
        assert not path.exists()  # nothing was timed


def test_processes_out_of_step_are_detected(monkeypatch):
    results = run_threads(2, lambda dp: dp.exchange(None, f"point {dp.rank}"), monkeypatch=monkeypatch)
    assert all(isinstance(r, DataParallelError) and "out of step" in str(r) for r in results)
    assert "process 0 at 'point 0', process 1 at 'point 1'" in str(results[0])


# -- the plain process, and pieces ----------------------------------------------------------------------------------
def test_a_plain_process_never_touches_torch_distributed(textvqa, monkeypatch):
    for name in distributed.WORLD_ENV:
        monkeypatch.delenv(name, raising=False)
    result = quiet(EchoBackend(textvqa), textvqa)
    assert distributed.data_parallel() is None and not torch.distributed.is_initialized()
    assert result.processes == [] and "data_parallel" not in result.config


def test_energy_of_processes_sharing_a_device_or_socket_is_flagged():
    def part(rank, device, source, host="a"):
        meter = {"source": source, "measured": source != "estimated", "scope": f"{source} scope", "note": ""}
        return Part(rank, host, device, [], [], [], None, False, None, None, None, meter, None, None, None, None, {},
                    {})

    gpus = _merge_meters([part(0, "cuda:0", "nvml-energy-counter"), part(1, "cuda:1", "nvml-energy-counter")])
    assert (gpus.source, gpus.label, gpus.note) == ("nvml-energy-counter", "measured", "")
    same = _merge_meters([part(0, "cuda:0", "nvml-energy-counter"), part(1, "cuda:0", "nvml-energy-counter")])
    assert "share cuda:0 on a" in same.note and "over-counts" in same.note
    rapl = _merge_meters([part(0, "cpu", "rapl"), part(1, "cpu", "rapl"), part(2, "cpu", "rapl", host="b")])
    assert "processes 0, 1 share socket on a" in rapl.note
    mixed = _merge_meters([part(0, "cuda:0", "nvml-energy-counter"), part(1, "cuda:1", "estimated")])
    assert mixed.label == "estimated" and mixed.source.startswith("mixed:")


def test_own_gpus_gives_each_process_its_share(monkeypatch):
    dp = DataParallel(3, 4, 1, 2, torch.device("cuda", 1), "node", 1.0)
    monkeypatch.setattr(distributed, "data_parallel", lambda: dp)
    assert own_gpus(4) == [2, 3]
    with pytest.raises(la.LlavaAccelError, match="2 processes on node but 1 GPU"):
        own_gpus(1)
    monkeypatch.setattr(distributed, "data_parallel", lambda: None)
    assert own_gpus(2) == [0, 1]


def test_timeout_setting(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert distributed.timeout_s() == 2.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(la.LlavaAccelError, match="positive number of seconds, got 'soon'"):
        distributed.timeout_s()


# -- device_map (accelerate big-model inference) --------------------------------------------------------------------
def test_device_map_offload_gives_the_eager_tokens(mixed_batch, tmp_path):
    """Weights split between the CPU and disk (max_memory: half the weights), moved in by accelerate's hooks: the
    same greedy tokens."""
    images, prompts = mixed_batch
    half = (Path(la.DEFAULT_MODEL) / "model.safetensors").stat().st_size // 2
    plain = la.load_backend("eager", device="cpu", dtype="float32")
    spread = la.load_backend("eager", device="cpu", dtype="float32", device_map="auto", max_memory={"cpu": half},
                             offload_folder=str(tmp_path / "offload"))
    parts = spread.describe()["device_map_parts"]
    assert set(parts) == {"cpu", "disk"} and spread.device == torch.device("cpu") and spread.devices == [spread.device]
    assert ([o.token_ids for o in spread.generate(images, prompts, max_new_tokens=5)]
            == [o.token_ids for o in plain.generate(images, prompts, max_new_tokens=5)])


def test_a_spread_model_is_metered_on_every_gpu():
    from llava_accel.metrics.energy import DeviceSum, PowerSampler
    from llava_accel.models.loading import input_device, spread_devices

    class Spread(torch.nn.Module):
        hf_device_map = {"model.vision_tower": 1, "model.language_model.layers.0": 0, "lm_head": "cpu", "x": "disk"}

    assert spread_devices(Spread()) == [torch.device("cuda", 1), torch.device("cuda", 0)]
    assert input_device(Spread(), torch.device("cpu")) == torch.device("cuda", 1)
    meters = [PowerSampler(lambda: 100.0, background=False), PowerSampler(lambda: 50.0, background=False)]
    for m in meters:
        m.source, m.scope = "fake", "board power"
    total = DeviceSum(meters, [torch.device("cuda", 0), torch.device("cuda", 1)])
    time.sleep(0.05)
    both = total.read()
    assert both == pytest.approx(meters[0].joules + meters[1].joules) and both > 0
    assert meters[0].joules == pytest.approx(2 * meters[1].joules, rel=0.2)
    assert total.label == "measured" and total.scope == "sum over cuda:0, cuda:1: board power"


@pytest.mark.parametrize("name, options, match", [
    ("compile", {}, "static KV cache"),
    ("eagle", {}, "draft head"),
    ("eager", {"quantize": "int8-dynamic"}, "quantize with device_map"),
    ("eager", {"device_map": "everywhere"}, "unknown device_map 'everywhere'"),
])
def test_device_map_refused_in_one_line(name, options, match):
    options = {"device": "cpu", "dtype": "float32", "device_map": "auto", **options}
    with pytest.raises(la.LlavaAccelError, match=match) as info:
        la.load_backend(name, **options)
    assert "\n" not in str(info.value)


def test_cli_max_memory(capsys):
    from llava_accel.cli import _max_memory, main

    assert _max_memory("0=7GiB, 1=7GiB,cpu=30GiB") == {0: "7GiB", 1: "7GiB", "cpu": "30GiB"}
    assert main(["measure", "--task", "synthetic-coco", "--limit", "1", "--max-memory", "7GiB"]) == 2
    assert "DEVICE=SIZE pairs" in capsys.readouterr().err


def test_result_with_processes_round_trips(textvqa, monkeypatch, tmp_path):
    a = run_threads(2, lambda dp: quiet(EchoBackend(textvqa), textvqa), monkeypatch=monkeypatch)[0]
    a.to_json(tmp_path / "r.json")
    back = MeasureResult.from_json(tmp_path / "r.json")
    assert back == a and dataclasses.is_dataclass(back.processes[1].latency)
    assert "process 1" in str(a) and "cpu on host: 2 samples, 1 batches" in str(a)
