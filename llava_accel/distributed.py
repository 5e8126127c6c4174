"""Data parallelism under ``accelerate launch``: which process this is, which batches are its own, and the exchanges
that turn N processes' batches into one result.

lmms-eval scales the same way: ``accelerate launch --num_processes N`` starts N copies of the command, each on its
own device (``cuda:LOCAL_RANK``; the CPU with gloo where there is no GPU). Every copy loads every sample and times
every N-th batch. Whole batches are dealt out, never single samples, so each batch is exactly the batch one process
would have run and the predictions are the same. The copies meet at fixed points (after warm-up, at the end) over a
gloo group of their own with a configurable timeout (``LLAVA_ACCEL_DP_TIMEOUT_S``, default 30 min): a process that
fails makes every process fail with its error, and one that hangs or dies makes the others fail with its number,
instead of hanging the job. A plain ``python`` process never touches ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch

from .errors import LlavaAccelError
from .metrics.memory import MemoryResult
from .result import EnergyResult, FlopsResult, LatencyResult, MeasureResult, ProcessResult

T = TypeVar("T")
TIMEOUT_ENV = "LLAVA_ACCEL_DP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
# process counts as launchers set them: torchrun (accelerate launch), Intel MPI, Open MPI, MVAPICH
WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_WORLD_ENV = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


class DataParallelError(LlavaAccelError, RuntimeError):
    """A process of a data-parallel job failed or stopped answering; every process raises the same one."""


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def launched_processes() -> int:
    """Processes the launcher started for this job (1 for a plain process); reads the environment only."""
    return _env_int(WORLD_ENV, 1)


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = DEFAULT_TIMEOUT_S if raw is None else float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise LlavaAccelError(f"{TIMEOUT_ENV} must be a positive number of seconds, got '{raw}'")
    return value


def failure_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


@dataclass
class DataParallel:
    """This process's place in the job; ``exchange`` is the only way processes talk to each other."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device  # accelerate's device for this process: cuda:LOCAL_RANK, or the CPU
    host: str
    timeout_s: float
    group: Any = field(default=None, repr=False)  # the gloo group of the exchanges

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """Items ``rank``, ``rank + world``, ...: balanced to one item, none lost, none repeated."""
        return list(items[self.rank::self.world])

    def where(self) -> str:
        return f"process {self.rank} ({self.device} on {self.host})"

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world, "processes_per_node": self.local_world,
                "sharding": f"batch i runs on process i mod {self.world}", "timeout_s": self.timeout_s}

    def exchange(self, payload: Any, what: str) -> list[Any]:
        """Every process's ``payload`` in rank order, on every process. Raises a ``DataParallelError`` naming the
        processes that did not arrive within the timeout, or that arrived at a different point of the program."""
        try:
            gathered = self._all_gather((what, payload))
        except RuntimeError as exc:
            late = re.search(r"Ranks? ([\d, ]+) failed to pass", str(exc))
            who = (f"process {late.group(1).strip()}" if late else
                   "the main process" if not self.is_main else "a process")
            raise DataParallelError(
                f"{what}: {who} did not arrive within {self.timeout_s:g} s (it failed, hung or was killed: see its "
                f"output above); set {TIMEOUT_ENV} higher if it needs longer") from exc
        points = {w for w, _ in gathered}
        if points != {what}:
            raise DataParallelError("processes out of step: " + ", ".join(
                f"process {r} at '{w}'" for r, (w, _) in enumerate(gathered)))
        return [p for _, p in gathered]

    def _all_gather(self, item: Any) -> list[Any]:
        """The transport: a monitored barrier first, so that a missing process is named rather than waited for."""
        import torch.distributed as dist

        timeout = timedelta(seconds=self.timeout_s)
        gathered: list[Any] = [None] * self.world
        dist.monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=True)
        dist.all_gather_object(gathered, item, group=self.group)
        return gathered

    def check(self, failures: Sequence[str | None], own: BaseException | None, what: str) -> None:
        """Raise on every process when any failed. When all failed alike, each re-raises its own error (so it is
        classified as in one process, e.g. out of memory); otherwise all raise the same ``DataParallelError``."""
        failed = [(r, f) for r, f in enumerate(failures) if f is not None]
        if not failed:
            return
        texts = {f.split(": ", 1)[-1] for _, f in failed}  # the error, without the process's name
        if own is not None and len(failed) == self.world and len(texts) == 1:
            raise own
        raise DataParallelError(f"{what}: " + "; ".join(f for _, f in failed)
                                + f" ({len(failed)} of {self.world} processes failed)") from own

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run a block on every process; if it raised on any, raise on every one (see ``check``)."""
        try:
            yield
        except BaseException as exc:
            self.check(self.exchange(f"{self.where()} failed: {failure_text(exc)}", what), exc, what)
            raise
        self.check(self.exchange(None, what), None, what)


_context: DataParallel | None = None


def data_parallel() -> DataParallel | None:
    """This process's data-parallel context, or None when the launcher started one process.

    Set up once, on first use, through accelerate (``PartialState``: the process group, ``cuda:LOCAL_RANK`` as the
    current device), plus a gloo group with our timeout for the exchanges.
    """
    global _context
    if _context is None and launched_processes() > 1:
        _context = _start()
    return _context


def _start() -> DataParallel:
    import torch.distributed as dist
    from accelerate import PartialState

    limit = timeout_s()
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=limit))
    if state.num_processes != launched_processes() or not dist.is_initialized():
        raise DataParallelError(f"the launcher started {launched_processes()} processes but accelerate set up "
                                f"{state.num_processes} ({state.distributed_type}); start the job with "
                                "`accelerate launch --num_processes N` (see docs/scaling.md)")
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=limit))
    return DataParallel(rank=state.process_index, world=state.num_processes,
                        local_rank=state.local_process_index,
                        local_world=_env_int(LOCAL_WORLD_ENV, state.num_processes),
                        device=state.device if state.device.type != "cpu" else torch.device("cpu"),
                        host=socket.gethostname(), timeout_s=limit, group=group)


def step(what: str) -> contextlib.AbstractContextManager:
    """``DataParallel.step`` in a data-parallel job, nothing otherwise."""
    dp = data_parallel()
    return dp.step(what) if dp else contextlib.nullcontext()


def process_rank() -> int:
    """This process's rank as the launcher set it (0 for a plain process); reads the environment only."""
    return _env_int(RANK_ENV, 0) if launched_processes() > 1 else 0


def is_main_process() -> bool:
    """True in a plain process and in the main process of a data-parallel job: the one that writes and prints."""
    return process_rank() == 0


def process_tag() -> str:
    """' (process r of N)' in a data-parallel job, '' otherwise: for messages every process prints."""
    return f" (process {process_rank()} of {launched_processes()})" if launched_processes() > 1 else ""


def place(device: str) -> str:
    """The device a process uses: under data parallelism a bare accelerator type ('cuda') means this process's own
    (``cuda:LOCAL_RANK``, as accelerate assigns it); anything else is kept."""
    dp = data_parallel()
    return str(dp.device) if dp and dp.device.type != "cpu" and str(device) == dp.device.type else device


def local_share(n: int) -> int:
    """This process's share of ``n`` (e.g. CPU threads) when the job runs several processes on this machine."""
    dp = data_parallel()
    return max(1, n // dp.local_world) if dp else n


def own_gpus(count: int) -> list[int]:
    """The GPUs this process spreads its model over (``device_map``) when the node's ``count`` GPUs are shared by
    its processes: an equal, contiguous share each, so that no two processes use the same GPU."""
    dp = data_parallel()
    if dp is None:
        return list(range(count))
    share = count // dp.local_world
    if share < 1:
        raise LlavaAccelError(f"device_map: {dp.local_world} processes on {dp.host} but {count} GPU(s); every process "
                              "needs its own GPUs (launch fewer processes, or drop device_map)")
    return list(range(dp.local_rank * share, (dp.local_rank + 1) * share))


# -- one result from N processes ------------------------------------------------------------------------------------
@dataclass
class Part:
    """What one process sends at the end of a measurement: its timed batches and its own figures."""

    rank: int
    host: str
    device: str
    records: list  # BatchRecord, in the order it ran them (its batch k is batch rank + k * world)
    predictions: list  # Prediction, in the same order
    truncated: list[str]  # ids of its samples whose prompt was cut
    image_tokens: int | None
    interrupted: bool
    error: str | None
    flops: FlopsResult | None
    flop_error: str | None
    meter: dict[str, Any]  # source, measured, scope, note
    idle_w: float | None
    latency: LatencyResult
    energy: EnergyResult
    memory: MemoryResult
    environment: dict[str, Any]
    backend_stats: dict[str, Any]


def part(dp: DataParallel, run: Any, error: BaseException | None) -> Part:
    """This process's ``Part`` of a measurement (``run``: measure's ``_Run`` over this process's batches)."""
    from .metrics import environment

    latency = run._latency()
    m = run.meter
    return Part(dp.rank, dp.host, str(run.backend.device), list(run.records), list(run.predictions),
                list(run.truncated), run.image_tokens, run.interrupted,
                None if error is None else f"{dp.where()} failed: {failure_text(error)}", run.flops, run.flop_error,
                {"source": m.source, "measured": m.measured, "scope": m.scope, "note": m.note}, run.idle_w, latency,
                run._energy(latency), run.memory.result(), environment.collect(run.backend.device),
                dict(getattr(run.backend, "stats", dict)()))


@dataclass
class MeterSummary:
    """Stands in for the meters of all processes when the merged energy is computed."""

    source: str
    measured: bool
    scope: str
    note: str

    @property
    def label(self) -> str:
        return "measured" if self.measured else "estimated"


def merge(run: Any, parts: list[Part], world: int) -> Any:
    """One ``_Run`` holding the processes' batches in the original order, as if one process had timed them all;
    throughput and energy rates are over the slowest process's timed time. ``parts``: all ``world`` processes', or
    fewer when some did not answer."""
    ordered = []
    for p in parts:
        offset = 0
        for k, record in enumerate(p.records):
            ordered.append((p.rank + k * world, record, p.predictions[offset:offset + record.size]))
            offset += record.size
    ordered.sort(key=lambda item: item[0])
    busy = [p for p in parts if p.records]
    merged = dataclasses.replace(
        run, records=[r for _, r, _ in ordered], predictions=[x for _, _, preds in ordered for x in preds],
        truncated=[i for p in parts for i in p.truncated],
        image_tokens=next((p.image_tokens for p in parts if p.image_tokens is not None), None),
        interrupted=len(parts) < world or any(p.interrupted or p.error for p in parts), meter=_merge_meters(parts),
        idle_w=None if any(p.idle_w is None for p in parts) else sum(p.idle_w for p in parts),
        wall_s=max(p.latency.total_s for p in parts), flops=None,
        flop_error=next((p.flop_error for p in busy if p.flop_error), None),
        config={**run.config, "data_parallel": {**run.config.get("data_parallel", {}),
                                                "hosts": sorted({p.host for p in parts})}})
    # the samples that were scored, in the original order (after a failure, not always a prefix of all samples)
    merged.samples = [s for index, _, _ in ordered for s in merged.batches[index]]
    if busy and all(p.flops is not None for p in busy):
        merged.flops = _merge_flops(busy, merged.wall_s)
    return merged


def complete(result: MeasureResult, parts: list[Part], lost: Exception | None = None) -> MeasureResult:
    """What ``_Run.result`` reads from the live process, replaced by every process's: the result is the same on all.
    ``lost``: why only this process's part is there."""
    busy = [p for p in parts if p.records] or parts
    result.memory = _merge_memory(parts)
    result.environment = parts[0].environment
    result.backend_stats = busy[0].backend_stats
    result.processes = [ProcessResult(p.rank, p.host, p.device, sum(r.size for r in p.records), len(p.records),
                                      p.latency, p.energy, p.memory, p.backend_stats, p.error) for p in parts]
    result.notes.append(f"data parallel over {len(parts)} processes: quality on all predictions; latency statistics "
                        "over all batches (each process's in processes); throughput, J/s and FLOP/s over the slowest "
                        "process's timed time" + ("; backend counters: process 0's" if busy[0].backend_stats else ""))
    idle = [str(p.rank) for p in parts if not p.records and not p.error]
    if idle:
        result.notes.append(f"process(es) {', '.join(idle)} had no batch: fewer batches than processes")
    result.notes += [p.error for p in parts if p.error] + ([f"only process {parts[0].rank}'s batches: {lost}"]
                                                          if lost else [])
    return result


def _merge_meters(parts: list[Part]) -> MeterSummary:
    sources = [p.meter["source"] for p in parts]
    source = sources[0] if len(set(sources)) == 1 else "mixed: " + ", ".join(
        f"process {p.rank} {s}" for p, s in zip(parts, sources))
    scopes = list(dict.fromkeys(p.meter["scope"] for p in parts))
    notes = list(dict.fromkeys(p.meter["note"] for p in parts if p.meter["note"]))
    shared: dict[tuple[str, str], list[int]] = {}
    for p in parts:
        shared.setdefault((p.host, "socket" if p.meter["source"] == "rapl" else p.device), []).append(p.rank)
    notes += [f"processes {', '.join(map(str, ranks))} share {where} on {host}: its energy is counted once per "
              "process, so the sum over-counts" for (host, where), ranks in shared.items()
              if len(ranks) > 1 and (where == "socket" or where.startswith("cuda"))]
    return MeterSummary(source, all(p.meter["measured"] for p in parts),
                        f"sum over {len(parts)} processes, each from its own meter: " + "; ".join(scopes),
                        "; ".join(notes))


def _merge_flops(parts: list[Part], wall: float) -> FlopsResult:
    """Totals add; per-sample and per-token figures are weighted by each process's samples and decode rows."""
    flops = [p.flops for p in parts]
    samples = [sum(r.size for r in p.records) for p in parts]
    rows = [sum(r.size * (r.steps - 1) for r in p.records) for p in parts]
    total = sum(f.total for f in flops)
    per_token = [(f.per_generated_token, n) for f, n in zip(flops, rows) if f.per_generated_token is not None]
    peak = None if any(f.peak_flops_per_s is None for f in flops) else sum(f.peak_flops_per_s for f in flops)
    achieved = total / wall if wall else None
    return FlopsResult(
        counter=flops[0].counter, convention=flops[0].convention,
        prefill_per_sample=sum(f.prefill_per_sample * n for f, n in zip(flops, samples)) / sum(samples),
        per_generated_token=sum(x * n for x, n in per_token) / sum(n for _, n in per_token) if per_token else None,
        total=total, achieved_flops_per_s=achieved, peak_flops_per_s=peak,
        peak_source=f"sum over {len(flops)} devices of: {flops[0].peak_source}",
        mfu=achieved / peak if achieved and peak else None, cross_check=flops[0].cross_check)


def _merge_memory(parts: list[Part]) -> MemoryResult:
    def largest(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    mems = [p.memory for p in parts]
    return MemoryResult(largest([m.device_peak_bytes for m in mems]), largest([m.device_reserved_peak_bytes
                                                                              for m in mems]),
                        max(m.rss_peak_bytes for m in mems),
                        f"{mems[0].rss_scope}, the largest of {len(parts)} processes")
