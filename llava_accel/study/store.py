"""results.jsonl: one finished point per line, appended, flushed and fsynced before the next point starts.

A process killed at any moment leaves either complete lines or complete lines plus one torn last line (a write
cut short). ``ResultStore`` drops a torn last line when it opens the file, so an interrupted sweep loses at most the
point that was in progress and the file stays valid JSON lines. A line is identified by its point's ``key``; when a
key appears twice (a failed point retried), the later line wins.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import ResultsFileError

OK = "ok"


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a results file and the byte length of its valid part (a torn last line is left out).

    A line that is not valid JSON anywhere but at the end was not left by an interrupted write: that is an error
    naming the line, never silently skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"results file not found: {path}")
    data = path.read_bytes()
    records, good_end = [], 0
    for line_no, line in enumerate(data.splitlines(keepends=True), 1):
        last = good_end + len(line) == len(data)
        try:
            record = json.loads(line) if line.strip() else {}
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if last:  # torn by an interrupted write: a cut JSON object never parses
                break
            raise ResultsFileError(f"{path}: line {line_no} is not a JSON object; fix or delete that line")
        if record:
            records.append(record)
        good_end += len(line)
    return records, good_end


class ResultStore:
    """Append-only results file with crash-safe appends and a torn-last-line check on open. ``read_only``: only read
    (a dry run): a torn last line is counted in ``dropped_bytes`` but not cut, a missing file not created."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.dropped_bytes = 0
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self.records, good_end = read_records(self.path)
            size = self.path.stat().st_size
            if read_only:
                self.dropped_bytes = size - good_end
            elif good_end < size:  # cut the torn line so that the next append starts on a line of its own
                self.dropped_bytes = size - good_end
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            elif size and not self.path.read_bytes().endswith(b"\n"):  # a complete last line written by hand
                self._write(b"\n")
        elif not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            _fsync_dir(self.path.parent)

    def latest(self) -> dict[str, dict[str, Any]]:
        """key -> the last record written for it."""
        return {r["key"]: r for r in self.records if "key" in r}

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line in a single write, then fsync: it survives a kill or power loss."""
        self._write((json.dumps(_finite(record), separators=(",", ":"), allow_nan=False) + "\n").encode())
        self.records.append(record)

    def _write(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)


def _finite(value: Any) -> Any:
    """NaN and infinity become null: strict JSON, readable by any tool (jq, pandas, browsers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def latest_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every record of several results files, the last one per key (a torn last line is ignored, not cut); a
    file with no record, or with a line that is not a sweep record, is a one-line ``ResultsFileError``."""
    by_key: dict[str, dict[str, Any]] = {}
    for p in paths:
        records = read_records(p)[0]
        if not records:
            raise ResultsFileError(f"{p} holds no results (no complete line); pass the results.jsonl of a sweep that "
                                   "has finished a point")
        for line, r in enumerate(records, 1):
            if "key" not in r or "point" not in r:
                raise ResultsFileError(f"{p}: record {line} is not a sweep record (no 'key' or 'point'); pass "
                                       "results.jsonl files written by llava-accel sweep, or --json files as .json")
            by_key.pop(r["key"], None)
            by_key[r["key"]] = r
    return list(by_key.values())
