"""Resumable sweeps: measure every point of a spec, one results.jsonl line per finished point.

The sweep only orchestrates: it loads each backend by name through the registry (so new backends need no change
here), hands it to ``measure()`` (which never knows which backend it times) and appends the result at once. Running
the same command again skips the points already in the file; a point that raises is recorded with its error and the
sweep goes on; running out of memory is recorded as ``oom`` and the larger batch sizes of that configuration are not
tried.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import platform
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..distributed import data_parallel, is_main_process, step
from ..errors import BackendUnavailableError, LlavaAccelError
from ..outputs import OutputPathError, check_folder, save
from .lock import FolderLock
from .spec import Point, ProfilePoint, SpecError, SweepSpec
from .store import OK, ResultStore

RESULTS = "results.jsonl"
ERROR, OOM, UNAVAILABLE = "error", "oom", "unavailable"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or an allocator's 'out of memory' RuntimeError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def measure_point(backend: Any, point: Point, samples: list) -> dict[str, Any]:
    """The default measurement of one point: ``la.measure`` on preloaded samples, as a plain dict."""
    from ..measure import measure

    given = {"max_input_len": point.max_input_len, "max_new_tokens": point.max_new_tokens, "limit": point.limit,
             "img_size": point.img_size}  # unset: measure()'s own defaults
    options = {**{k: v for k, v in given.items() if v is not None}, **point.measure_options}
    result = measure(backend, samples, batch_size=point.batch_size, warmup=point.warmup, seed=point.seed, **options)
    if result.validity.checks.get("complete") is False:  # Ctrl-C inside measure(): stop, do not record a partial point
        raise KeyboardInterrupt
    return result.to_dict()


def profile_point(backend: Any, point: ProfilePoint, samples: list) -> dict[str, Any]:
    from .profile import profile_layers

    return profile_layers(backend, samples, batch_sizes=list(point.batch_sizes), img_size=point.img_size,
                          repeats=point.repeats).to_dict()


def load_point_backend(point: Point | ProfilePoint) -> Any:
    from ..registry import load_backend

    options = {k: v for k, v in (("device", point.device), ("dtype", point.dtype)) if v is not None}
    return load_backend(point.backend, model=point.model, **options, **point.backend_options)


def load_samples(task: str, limit: int | None, seed: int, source: str | None) -> list:
    from ..tasks import load_task

    return load_task(task, limit=limit, seed=seed, source=source)


@dataclass
class SweepSummary:
    total: int
    skipped: int = 0  # already in the results file
    ran: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    results: str = ""


class _Loaded:
    """The one backend held in memory: points are ordered so that each backend is loaded once."""

    def __init__(self, load: Callable[[Any], Any]) -> None:
        self.load, self.group, self.backend, self.error = load, None, None, None

    def get(self, point: Point | ProfilePoint) -> Any:
        if point.load_group() != self.group:
            self.release()
            self.group = point.load_group()
            try:
                self.backend = self.load(point)
            except Exception as exc:  # recorded for every point of the group, then the sweep goes on
                self.error = exc
        if self.error is not None:
            raise self.error
        return self.backend

    def release(self) -> None:
        self.backend = self.error = self.group = None
        _free_device_memory()


def run_sweep(spec: SweepSpec, out_dir: str | Path, retry_failed: bool = False, dry_run: bool = False,
              log: Callable[[str], None] = print, measure: Callable[..., dict] = measure_point,
              profile: Callable[..., dict] = profile_point, load: Callable[[Any], Any] = load_point_backend,
              samples: Callable[[str, int | None, int, str | None], list] = load_samples) -> SweepSummary:
    """Measure every point of ``spec`` not yet in ``out_dir/results.jsonl``. The callables are seams for tests.

    ``out_dir`` is checked before anything runs, and held by one sweep at a time (a second one refuses: see
    ``study/lock.py``). ``dry_run`` lists the points still to run and writes nothing."""
    out = check_folder(out_dir, "sweep folder")
    points = spec.points(_available_backends(spec))
    check_points(spec, [p for p, _ in points])
    # under `accelerate launch` every process measures each point data parallel; the main one keeps the file
    dp, main = data_parallel(), is_main_process()
    log = log if main else _quiet
    if dry_run:
        return _dry_run(spec, points, ResultStore(out / RESULTS, read_only=True), retry_failed, log)
    with contextlib.ExitStack() as stack:
        with step("opening the sweep folder"):  # a sweep already writing there fails every process now
            if main:
                stack.enter_context(FolderLock(out))
            store = ResultStore(out / RESULTS) if main else _Unwritten(out / RESULTS)
        if main:
            _keep_spec(spec, out)
        return _run(spec, points, store, retry_failed, dp, log, measure, profile, load, samples)


def _plan(spec: SweepSpec, points: list, store: Any, retry_failed: bool,
          log: Callable[[str], None]) -> tuple[list, SweepSummary]:
    """The points still to run and the summary so far, said in one line."""
    if store.dropped_bytes:
        log(f"dropped a torn last line ({store.dropped_bytes} bytes) left by an interrupted run; that point runs again")
    done = store.latest()
    todo = [(p, g) for p, g in points if p.key not in done or (retry_failed and done[p.key].get("status") != OK)]
    summary = SweepSummary(total=len(points), skipped=len(points) - len(todo), results=str(store.path))
    failed_before = sum(1 for p, _ in points if p.key in done and done[p.key].get("status") != OK)
    log(f"sweep '{spec.name}': {len(points)} points, {summary.skipped} already in {store.path}, {len(todo)} to run"
        + (f" ({failed_before} failed before; --retry-failed runs them again)" if failed_before and not retry_failed
           else ""))
    return todo, summary


def _dry_run(spec: SweepSpec, points: list, store: ResultStore, retry_failed: bool,
             log: Callable[[str], None]) -> SweepSummary:
    todo, summary = _plan(spec, points, store, retry_failed, log)
    for p, grids in todo:
        log(f"  {p.label()}  [{', '.join(grids)}]")
    return summary


def _run(spec: SweepSpec, points: list, store: Any, retry_failed: bool, dp: Any, log: Callable[[str], None],
         measure: Callable, profile: Callable, load: Callable, samples: Callable) -> SweepSummary:
    todo, summary = _plan(spec, points, store, retry_failed, log)
    if dp:  # the main process's plan, from its results file: every process runs the same points in the same order
        todo = dp.exchange(todo, "planning the sweep")[0]
        summary.skipped = len(points) - len(todo)
    loaded = _Loaded(load)
    data: dict[tuple, Any] = {}
    oom_at: dict[tuple, int] = {}
    started = time.monotonic()
    try:
        for i, (point, grids) in enumerate(todo):
            log(f"[{summary.skipped + i + 1}/{summary.total}] {point.label()} ...")
            t0 = time.monotonic()
            record = _run_point(point, loaded, data, oom_at, measure, profile, samples)
            record.update(grids=grids, grid_order=spec.grid_names(), sweep=spec.name,
                          elapsed_s=round(time.monotonic() - t0, 3))
            _append(store, record, point)
            summary.ran += 1
            summary.statuses[record["status"]] = summary.statuses.get(record["status"], 0) + 1
            eta = (time.monotonic() - started) / (i + 1) * (len(todo) - i - 1)
            status = record["status"] if record["status"] == OK else f"{record['status']}: {record['error']}"
            log(f"    {status} ({record['elapsed_s']:.1f} s); {summary.skipped + i + 1}/{summary.total} done, "
                f"ETA {_duration(eta)}")
    except KeyboardInterrupt:
        log(f"interrupted: {summary.skipped + summary.ran} of {summary.total} points are in {store.path}; "
            "rerun the same command to continue")
        raise
    finally:
        loaded.release()
    return summary


def _append(store: Any, record: dict[str, Any], point: Point | ProfilePoint) -> None:
    """Append the point's line; when the results file cannot take it (disk full, folder removed), the line is saved
    elsewhere and the sweep stops: the points after it would be lost the same way."""
    try:
        store.append(record)
    except OSError as exc:
        saved = save(lambda p: ResultStore(p).append(record), store.path, f"the result of {point.label()}")
        if saved != store.path:
            raise OutputPathError(f"cannot append to {store.path} ({exc.strerror or type(exc).__name__}); the "
                                  f"finished point is in {saved}: fix that, append it (cat {saved} >> {store.path}) "
                                  "and rerun the same command to continue") from None
        store.records.append(record)


def _run_point(point: Point | ProfilePoint, loaded: _Loaded, data: dict, oom_at: dict[tuple, int],
               measure: Callable, profile: Callable, samples: Callable) -> dict[str, Any]:
    record: dict[str, Any] = {"key": point.key, "point": asdict(point), "status": OK, "error": None, "result": None,
                              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "host": platform.node()}
    shape = _shape(point)
    if isinstance(point, Point) and shape in oom_at and point.batch_size > oom_at[shape]:
        record.update(status=OOM, error=f"not run: batch size {oom_at[shape]} already ran out of memory")
        return record
    try:
        with step(f"loading {point.label()}"):  # a process that cannot load fails the point on every process
            backend = loaded.get(point)
            limit = point.limit if isinstance(point, Point) else max(point.batch_sizes)
            data_key = (point.task, limit, point.seed, point.source)
            if data_key not in data:
                data[data_key] = samples(*data_key)
        run = measure if isinstance(point, Point) else profile
        record["result"] = run(backend, point, data[data_key])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a crashed point is recorded and the sweep goes on
        status = OOM if is_out_of_memory(exc) else UNAVAILABLE if isinstance(exc, BackendUnavailableError) else ERROR
        if status == OOM and isinstance(point, Point):
            oom_at[shape] = min(point.batch_size, oom_at.get(shape, point.batch_size))
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record.update(status=status, error=f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
        if not isinstance(exc, LlavaAccelError):
            record["traceback"] = traceback.format_exc(limit=-8)
        _free_device_memory()
    return record


class _Unwritten:
    """The results file as seen by a data-parallel process other than the main one: nothing read, nothing written."""

    dropped_bytes = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    def latest(self) -> dict[str, dict[str, Any]]:
        return {}

    def append(self, record: dict[str, Any]) -> None:
        pass


def _quiet(message: str) -> None:
    pass


def _shape(point: Point | ProfilePoint) -> tuple:
    """A point's configuration without its batch size: out of memory at batch b means out of memory above b."""
    d = asdict(point)
    d.pop("batch_size", None)
    d.pop("repetition", None)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def _free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _available_backends(spec: SweepSpec) -> list[str]:
    """Registered backends that can run here; an unknown backend name in the spec is an error before any point."""
    from ..registry import list_backends

    infos = list_backends()
    known = {i.name for i in infos}
    grids = spec.grids + ([spec.profile] if spec.profile else [])
    for grid in grids:
        for name in grid.get("backends") or []:
            if name != "available" and name not in known:
                raise SpecError(f"{spec.path}: field 'backends' names unknown backend '{name}'; known backends: "
                                f"{', '.join(sorted(known))} (or \"available\")")
    return [i.name for i in infos if i.available]


# measure() arguments a point sets itself (measure_point passes them): a spec sets them as its own fields
POINT_ARGUMENTS = {"backend": "backends", "dataset": "tasks", "batch_size": "batch_sizes", "warmup": "warmup",
                   "seed": "seed"}


def check_points(spec: SweepSpec, points: list[Point | ProfilePoint]) -> None:
    """Every mistake the points can show without running: models, tasks and their sources, backend and measure
    options (names and values), image sizes. One ``SpecError`` before the first point, not one per point after
    models load."""
    import inspect

    from ..image_size import check_img_size
    from ..measure import check_arguments, measure
    from ..models.architecture import load_config
    from ..models.loading import DEFAULT_MODEL, resolve_model_path
    from ..registry import accepted_options, backend_class
    from ..tasks import check_task

    measure_args = set(inspect.signature(measure).parameters) - set(POINT_ARGUMENTS)
    configs: dict[str | None, Any] = {}
    for point in points:
        try:
            if point.model not in configs:
                configs[point.model] = load_config(resolve_model_path(point.model or DEFAULT_MODEL))
            check_task(point.task, source=point.source)
            check_img_size(configs[point.model], point.img_size)
            _check_names(f"backend_options.{point.backend}", point.backend_options,
                         accepted_options(backend_class(point.backend)) - {"model"})
            if isinstance(point, Point):
                _check_names("measure_options", point.measure_options, measure_args)
                check_arguments({"batch_size": point.batch_size, "max_input_len": point.max_input_len,
                                 "max_new_tokens": point.max_new_tokens, "limit": point.limit, "warmup": point.warmup,
                                 "img_size": point.img_size, **point.measure_options})
        except LlavaAccelError as exc:
            raise SpecError(f"{spec.path}: {point.label()}: {exc}") from None
    tables = [spec.defaults, *spec.grids]
    unused = sorted({t for table in tables for t in table.get("task_sources", {})} - {p.task for p in points})
    if unused:
        raise SpecError(f"{spec.path}: field 'task_sources' names task '{unused[0]}', which no grid measures")
    for name in sorted({b for table in tables for b in table.get("backend_options", {})}):
        try:
            backend_class(name)
        except LlavaAccelError as exc:
            raise SpecError(f"{spec.path}: field 'backend_options': {exc}") from None


def _check_names(field: str, given: dict[str, Any], known: set[str]) -> None:
    for name in given:
        if name in POINT_ARGUMENTS:
            raise SpecError(f"field '{field}' sets '{name}', which the spec's field '{POINT_ARGUMENTS[name]}' sets")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise SpecError(f"field '{field}' has unknown option '{name}'"
                            + (f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(known))}"))


def _keep_spec(spec: SweepSpec, out: Path) -> None:
    """A copy of the spec beside its results, so that the study can be rerun or extended from the folder alone."""
    src = Path(spec.path)
    if src.is_file():
        dst = out / f"spec{src.suffix}"
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


__all__ = ["ERROR", "OOM", "OK", "RESULTS", "SweepSummary", "UNAVAILABLE", "is_out_of_memory", "run_sweep"]
