"""A sweep specification: a small TOML (or YAML) file naming the grid of configurations to measure.

Top-level keys are defaults; each ``[[grid]]`` table overrides some of them and spans the cartesian product of its
list-valued fields. The sweep measures the union of all grids, each configuration once, so a study made of several
one-dimensional tables (batch size at one length, length at one batch size, ...) is one file. Every mistake is a
one-line ``SpecError`` naming the file and the field.
"""

from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LlavaAccelError


class SpecError(LlavaAccelError):
    pass


# field -> (kind, required). Kinds: "names" and "ints" are grid dimensions (a list, or one value), the rest scalars.
DIMENSIONS = {"backends": "names", "devices": "names", "dtypes": "names", "tasks": "names",
              "batch_sizes": "ints", "max_input_lens": "ints", "img_sizes": "ints"}
SCALARS = {"name": str, "model": str, "limit": int, "repetitions": int, "max_new_tokens": int, "warmup": int,
           "seed": int, "no_weights": bool}  # no_weights: the model's architecture with random weights (every backend)
# passed through: backend name -> load options; measure() keyword arguments; task name -> data source (a hub id,
# a datasets.save_to_disk folder or a plain samples.jsonl folder, see docs/tasks.md)
TABLES = ("backend_options", "measure_options", "task_sources")
PROFILE_FIELDS = {"backends": "names", "devices": "names", "dtypes": "names", "batch_sizes": "ints",
                  "img_sizes": "ints", "task": str, "repeats": int}
AVAILABLE = "available"  # backends = "available": every backend that can run on this machine when the sweep starts
PROFILE_GRID = "per-layer profile"  # the name under which profile points appear in a report


class _Configuration:
    """What both kinds of point share: an identity in results.jsonl, and the backend they need loaded."""

    @property
    def key(self) -> str:
        return point_key(asdict(self))

    def load_group(self) -> tuple:
        """Points with the same load group share one loaded backend."""
        return (self.model, self.backend, self.device, self.dtype, json.dumps(self.backend_options, sort_keys=True))


@dataclass(frozen=True)
class Point(_Configuration):
    """One configuration to measure. Its ``key`` (every field, canonical JSON) identifies it in results.jsonl."""

    model: str | None
    backend: str
    device: str | None  # None: the backend's default
    dtype: str | None
    task: str
    batch_size: int
    max_input_len: int | None
    img_size: int | None  # None: the model's native size
    limit: int | None
    max_new_tokens: int | None
    seed: int
    repetition: int
    warmup: int = 2
    backend_options: dict = field(default_factory=dict, hash=False)
    measure_options: dict = field(default_factory=dict, hash=False)
    source: str | None = None  # where the task's data is read from (None: its default)
    kind: str = "measure"

    def label(self) -> str:
        parts = [self.backend, self.device or "", self.dtype or "", self.task, f"bs={self.batch_size}",
                 f"len={self.max_input_len}" if self.max_input_len else "",
                 f"img={self.img_size}" if self.img_size else "",
                 f"rep={self.repetition}" if self.repetition else ""]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class ProfilePoint(_Configuration):
    """A per-layer profile of one backend configuration over several batch sizes (one record in results.jsonl)."""

    model: str | None
    backend: str
    device: str | None
    dtype: str | None
    task: str
    batch_sizes: tuple[int, ...]
    img_size: int | None
    repeats: int
    seed: int
    backend_options: dict = field(default_factory=dict, hash=False)
    source: str | None = None
    kind: str = "profile"

    def label(self) -> str:
        parts = ["profile", self.backend, self.device or "", self.dtype or "",
                 "bs=" + ",".join(map(str, self.batch_sizes)), f"img={self.img_size}" if self.img_size else ""]
        return " ".join(p for p in parts if p)


def point_key(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=list)


@dataclass
class SweepSpec:
    name: str
    path: str
    defaults: dict[str, Any]
    grids: list[dict[str, Any]]  # each already merged with the defaults; "name" labels the study's table
    profile: dict[str, Any] | None = None

    def grid_names(self) -> list[str]:
        """The grids' names in spec order (a report lays its tables out in this order)."""
        return [g.get("name") or f"grid {i + 1}" for i, g in enumerate(self.grids)] + (
            [PROFILE_GRID] if self.profile is not None else [])

    def points(self, available_backends: list[str]) -> list[tuple[Point | ProfilePoint, list[str]]]:
        """Every configuration once, with the names of the grids it belongs to, in an order that loads each
        backend once and runs batch sizes upwards (so an out-of-memory batch size stops the larger ones)."""
        found: dict[str, tuple[Point | ProfilePoint, list[str]]] = {}
        for grid, label in zip(self.grids, self.grid_names()):
            for point in _expand(grid, available_backends):
                found.setdefault(point.key, (point, []))[1].append(label)
        if self.profile is not None:
            for point in _expand_profile(self.profile, self.defaults, available_backends):
                found.setdefault(point.key, (point, []))[1].append(PROFILE_GRID)
        return sorted(found.values(), key=lambda pg: _order(pg[0]))


def _order(p: Point | ProfilePoint) -> tuple:
    if isinstance(p, ProfilePoint):
        return (*map(str, p.load_group()), 1, "", 0, 0, 0, 0)
    return (*map(str, p.load_group()), 0, p.task, p.max_input_len or 0, p.img_size or 0, p.batch_size, p.repetition)


def _backends(names: list[str], available: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for b in (available if n == AVAILABLE else [n]):
            if b not in out:
                out.append(b)
    return out


def _dim(grid: dict[str, Any], key: str) -> list:
    return grid.get(key) or [None]


def _backend_options(grid: dict[str, Any], backend: str) -> dict[str, Any]:
    """A backend's load options in a grid; ``no_weights`` joins them only when set, so that the points (and their
    keys in results.jsonl) of specs without it stay as they were."""
    own = grid.get("backend_options", {}).get(backend, {})
    return {"no_weights": True, **own} if grid.get("no_weights") else own


def _expand(grid: dict[str, Any], available: list[str]) -> list[Point]:
    points = []
    product = itertools.product(_backends(grid["backends"], available), _dim(grid, "devices"), _dim(grid, "dtypes"),
                                grid["tasks"], grid["batch_sizes"], _dim(grid, "max_input_lens"),
                                _dim(grid, "img_sizes"), range(grid.get("repetitions", 1)))
    for backend, device, dtype, task, bs, length, img, rep in product:
        points.append(Point(model=grid.get("model"), backend=backend, device=device, dtype=dtype, task=task,
                            batch_size=bs, max_input_len=length, img_size=img, limit=grid.get("limit"),
                            max_new_tokens=grid.get("max_new_tokens"), seed=grid.get("seed", 0), repetition=rep,
                            warmup=grid.get("warmup", 2),
                            backend_options=_backend_options(grid, backend),
                            measure_options=grid.get("measure_options", {}),
                            source=grid.get("task_sources", {}).get(task)))
    return points


def _expand_profile(prof: dict[str, Any], defaults: dict[str, Any], available: list[str]) -> list[ProfilePoint]:
    backends = _backends(prof.get("backends") or defaults.get("backends") or [], available)
    task = prof.get("task", "synthetic-textvqa")
    return [ProfilePoint(model=defaults.get("model"), backend=b, device=dev, dtype=dt, task=task,
                         batch_sizes=tuple(prof["batch_sizes"]), img_size=img, repeats=prof.get("repeats", 5),
                         seed=defaults.get("seed", 0), backend_options=_backend_options(defaults, b),
                         source=defaults.get("task_sources", {}).get(task))
            for b in backends for dev in _dim(prof, "devices") for dt in _dim(prof, "dtypes")
            for img in _dim(prof, "img_sizes")]


# -- parsing and validation -------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file (.toml, or .yaml/.yml when PyYAML is installed)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec not found: {path}")
    return parse_spec(_read(path), str(path))


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpecError(f"{path}: reading YAML needs PyYAML (`pip install pyyaml`); or write the spec as "
                            "TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: the spec must be a mapping of fields, got {type(data).__name__}")
        return data
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None


def parse_spec(data: dict[str, Any], source: str = "spec") -> SweepSpec:
    """Validate the fields of a spec already read into a dict; ``source`` names it in errors."""
    known = set(DIMENSIONS) | set(SCALARS) | set(TABLES) | {"grid", "profile"}
    _check_fields(data, known, source)
    defaults = {k: _value(k, v, source) for k, v in data.items() if k not in ("grid", "profile")}
    grids_raw = data.get("grid", [{}])
    if isinstance(grids_raw, dict):
        grids_raw = [grids_raw]
    if not isinstance(grids_raw, list) or not all(isinstance(g, dict) for g in grids_raw):
        raise SpecError(f"{source}: field 'grid' must be an array of tables ([[grid]] in TOML)")
    if not grids_raw and "profile" not in data:
        raise SpecError(f"{source}: field 'grid' is empty, so there is nothing to measure; add [[grid]] tables, or "
                        "remove it to measure the top-level fields as one grid")
    grids = []
    for i, raw in enumerate(grids_raw):
        where = f"{source} [[grid]] #{i + 1}"
        _check_fields(raw, known - {"grid", "profile"}, where)
        inherited = {k: v for k, v in defaults.items() if k != "name"}  # the study's name is not the grid's
        grid = {**inherited, **{k: _value(k, v, where) for k, v in raw.items()}}
        for required in ("backends", "tasks", "batch_sizes"):
            if not grid.get(required):
                raise SpecError(f"{where}: missing field '{required}' (set it at the top level or in the grid)")
        grids.append(grid)
    profile = None
    if "profile" in data:
        profile = _parse_profile(data["profile"], f"{source} [profile]")
    return SweepSpec(name=defaults.get("name") or Path(source).stem, path=source, defaults=defaults, grids=grids,
                     profile=profile)


def _parse_profile(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a table of fields")
    _check_fields(raw, set(PROFILE_FIELDS), where)
    prof = {}
    for k, v in raw.items():
        kind = PROFILE_FIELDS[k]
        prof[k] = _list(k, v, kind, where) if kind in ("names", "ints") else _scalar(k, v, kind, where)
    if not prof.get("batch_sizes"):
        raise SpecError(f"{where}: missing field 'batch_sizes'")
    return prof


def _check_fields(data: dict[str, Any], known: set[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(sorted(known))}"
            raise SpecError(f"{where}: unknown field '{key}'{hint}")


def _value(key: str, value: Any, where: str) -> Any:
    if key in DIMENSIONS:
        return _list(key, value, DIMENSIONS[key], where)
    if key in SCALARS:
        return _scalar(key, value, SCALARS[key], where)
    inner = {"backend_options": (dict, "a table of backend name -> table of options"),
             "task_sources": (str, "a table of task name -> data source (path or hub id)")}.get(key)
    if not isinstance(value, dict) or (inner and not all(isinstance(v, inner[0]) for v in value.values())):
        raise SpecError(f"{where}: field '{key}' must be {inner[1] if inner else 'a table'}")
    return value


def _list(key: str, value: Any, kind: str, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    for v in values:
        ok = isinstance(v, str) and v != "" if kind == "names" else (
            isinstance(v, int) and not isinstance(v, bool) and v > 0)
        if not ok:
            what = "names (strings)" if kind == "names" else "positive integers"
            raise SpecError(f"{where}: field '{key}' must be a list of {what}, got {v!r}")
    if len(set(values)) != len(values):
        raise SpecError(f"{where}: field '{key}' lists a value twice: {values}")
    return values


def _scalar(key: str, value: Any, kind: type, where: str) -> Any:
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{where}: field '{key}' must be a non-negative integer, got {value!r}")
        if key in ("repetitions", "repeats", "limit", "max_new_tokens") and value == 0:
            raise SpecError(f"{where}: field '{key}' must be at least 1")
    elif not isinstance(value, kind):
        raise SpecError(f"{where}: field '{key}' must be a {kind.__name__}, got {value!r}")
    return value
