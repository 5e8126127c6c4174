"""Where a named task's rows come from: the hub, a ``datasets.save_to_disk`` folder, or a plain folder.

- hub id (the default; ``owner/name``): ``datasets.load_dataset`` with the hub's cache. ``datasets`` is imported only
  here, and without network we go straight to the cache, so an offline miss is one line at once, not 30 s of retries.
  By default the task's id as lmms-eval 0.7.3 reads it, then its former ids when that one is not found (in the cache
  or on the hub); ``SampleSet.source`` records the id actually read.
- a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``; the split picks from the latter).
- a plain folder: ``samples.jsonl`` (one JSON object per row, with the hub dataset's column names) and the images,
  the image column holding a path relative to the folder and inside it (``folder_image_path``).
Every layout goes through the same column mapping (``TaskSpec.columns``). Images are decoded while loading (memory:
about 3 bytes per pixel and sample; use ``limit``); a missing or unreadable image skips its row and is recorded in
``SampleSet.skipped``. A missing source or column is a one-line ``DatasetError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, UnidentifiedImageError

from .. import checks
from ..errors import DatasetError, ImageError
from ..preprocessing import load_image, upright_rgb
from .sample import Sample, SampleSet
from .specs import KIND_FIELDS, TaskSpec

SAMPLES_FILE = "samples.jsonl"
SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")


def open_image(value: Any, folder: Path | None = None, where: str = "") -> Image.Image:
    """An upright RGB image (EXIF orientation applied), fully decoded, from a PIL image, ``{"bytes", "path"}``
    (datasets) or a path; else ImageError. ``folder``: the plain data folder the path is relative to (see
    ``folder_image_path``; ``where``: its row)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                with Image.open(io.BytesIO(value["bytes"])) as img:
                    return upright_rgb(img)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
                raise ImageError(f"cannot decode image: {exc.__class__.__name__}") from None
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)) and folder is not None:
        value = folder_image_path(folder, value, where)
    if isinstance(value, (Image.Image, str, os.PathLike)):
        return load_image(value)
    raise ImageError("no image in this row")


def folder_image_path(folder: Path, value: str | os.PathLike, where: str) -> Path:
    """An image path of a plain data folder (samples.jsonl): relative to the folder and inside it, so that the folder
    is self-contained: moved, copied to another machine or shared, it means the same samples. An absolute path or one
    that climbs out with '..' is a ``DatasetError`` (a symbolic link inside the folder is followed: linking is
    explicit)."""
    path = Path(value)
    if path.is_absolute() or path.drive or os.path.normpath(path).split(os.sep)[0] == os.pardir:
        raise DatasetError(f"{where}: image path '{value}' must be relative to {folder} and stay inside it (no "
                           "absolute path, no '..' out of it); copy or link the image into the folder")
    return folder / path


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DatasetError("loading a hub or save_to_disk dataset needs the `datasets` package (pip install "
                           "datasets), or pass a plain folder (samples.jsonl + images)") from None
    return datasets


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` use its cache only, without retrying the network, for the duration of one load."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


class _NotFound(Exception):
    """A hub id that is neither in the cache nor on the hub (the next id may be)."""


def _hub_dataset(spec: TaskSpec, hub_id: str, split: str):
    from ..models.loading import hub_reachable

    datasets = _import_datasets()
    offline = not hub_reachable()
    config = f", '{spec.config}'" if spec.config else ""
    try:
        with _hub_offline(offline):
            return datasets.load_dataset(hub_id, spec.config, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        if offline:
            raise _NotFound(
                f"dataset '{hub_id}' is not in the datasets cache and the hub is unreachable (offline); where there "
                f"is network run datasets.load_dataset('{hub_id}'{config}, split='{split}').save_to_disk(DIR) and "
                f"pass source=DIR (CLI: --source DIR)") from None
        if type(exc).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"):
            raise _NotFound(f"dataset '{hub_id}' not found on the hub: {str(exc).splitlines()[0]}") from None
        raise DatasetError(f"cannot load dataset '{hub_id}' (split '{split}'): {str(exc).splitlines()[0]}") from None


def _first_hub_dataset(spec: TaskSpec, hub_ids: list[str], split: str):
    """(dataset, the id it was read from): the first of ``hub_ids`` found; else the first one's error."""
    first = None
    for hub_id in hub_ids:
        try:
            return _hub_dataset(spec, hub_id, split), hub_id
        except _NotFound as exc:
            first = first or str(exc)
    tried = f" (also tried {', '.join(hub_ids[1:])})" if len(hub_ids) > 1 else ""
    raise DatasetError(first + tried)


def _disk_dataset(path: Path, split: str):
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"cannot read the save_to_disk folder {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{path} has splits {', '.join(ds)}, not '{split}'; pass split=")
        ds = ds[split]
    return ds


def _dataset_rows(ds, spec: TaskSpec, where: str, limit: int | None) -> Iterator[tuple[str, dict]]:
    """(where, row) for the rows of a ``datasets.Dataset``, the image column left undecoded (a bad image is ours
    to skip)."""
    import datasets

    needed = [spec.columns[f] for f in ("image", *KIND_FIELDS[spec.kind])]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{where} has no column '{missing[0]}' (it has: {', '.join(ds.column_names)}); "
                           f"the {spec.name} task needs {', '.join(needed)}")
    image = spec.columns["image"]
    if isinstance(ds.features[image], datasets.Image):
        ds = ds.cast_column(image, datasets.Image(decode=False))
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    for index, row in enumerate(ds):
        yield f"{where} row {index}", row


def _jsonl_rows(path: Path, limit: int | None) -> Iterator[tuple[str, dict]]:
    rows = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if limit is not None and rows >= limit:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                   f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows += 1
            yield f"{path}:{lineno}", row


def resolve_source(spec: TaskSpec, source: str | os.PathLike | None) -> tuple[str, str | Path | list[str]]:
    """('hub', [ids to try in order]) | ('disk', folder) | ('folder', samples.jsonl path) for ``source`` (None: the
    task's hub id, then its former ids)."""
    if source is None:
        return "hub", [spec.hub_id, *spec.former_ids]
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        return "folder", path
    if path.is_dir():
        if (path / SAMPLES_FILE).is_file():
            return "folder", path / SAMPLES_FILE
        if any((path / m).is_file() for m in SAVE_TO_DISK_MARKERS):
            return "disk", path
        raise DatasetError(f"{path} is not a dataset folder: no {SAMPLES_FILE} (plain layout) and no "
                           f"{' or '.join(SAVE_TO_DISK_MARKERS)} (datasets.save_to_disk); see docs/tasks.md")
    if not path.exists() and str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")):
        return "hub", [str(source)]
    raise DatasetError(f"dataset source not found: {source} (pass a folder, a {SAMPLES_FILE} file or a hub id owner/name)")


def load_samples(spec: TaskSpec, split: str | None = None, limit: int | None = None,
                 source: str | os.PathLike | None = None) -> SampleSet:
    """``Sample``s of task ``spec`` from ``source`` (see the module docstring), the first ``limit`` rows."""
    split = split or spec.split
    kind, location = resolve_source(spec, source)
    folder = None
    if kind == "folder":
        folder, rows = location.parent, _jsonl_rows(location, limit)
    else:
        if kind == "hub":
            ds, location = _first_hub_dataset(spec, location, split)
        else:
            ds = _disk_dataset(location, split)
        rows = _dataset_rows(ds, spec, f"{location} ({split})", limit)
    samples, skipped = [], []
    for index, (where, row) in enumerate(rows):
        row_id = row.get(spec.id_column, index) if spec.id_column else index
        sample_id = f"{spec.name}/{split}/{row_id}"
        try:
            fields, references = spec.sample_fields(row)
            image_value = row[spec.columns["image"]]
        except KeyError as exc:
            raise DatasetError(f"{where}: no field {exc} (the {spec.name} task needs "
                               f"{', '.join(spec.columns.values())})") from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: malformed field ({exc})") from None
        try:
            image = open_image(image_value, folder, where)
        except (ImageError, Image.DecompressionBombError) as exc:
            skipped.append((sample_id, str(exc)))
            continue
        prompt = checks.prompt(spec.prompt(fields), f"{where}: the prompt")
        samples.append(Sample(image, prompt, references, id=sample_id, task=spec.name, fields=fields))
    if skipped:
        warnings.warn(f"{spec.name}: skipped {len(skipped)} of {len(samples) + len(skipped)} samples with a missing "
                      f"or unreadable image (first: {skipped[0][0]}: {skipped[0][1]})", stacklevel=3)
    return SampleSet(samples, skipped, source=str(location))
