"""Output paths: checked before the work, written so that nothing measured is ever lost.

A measurement can take hours; a typo in ``--json`` or ``--out`` must fail in one line before the model loads, not
in a traceback after the run. ``check_file`` and ``check_folder`` are that check (every command and API that writes
calls one of them first). ``write_atomic`` writes a file whole or not at all, leaving no ``.tmp`` behind. ``save``
writes with a fallback: when the chosen place fails anyway (disk full, the folder removed during the run), the
output goes to a fresh temporary folder and one line on stderr says where.

Rule: an output file's folder must exist (a missing one is more often a typo than an intent); an output folder is
created when missing, with its parents.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import LlavaAccelError


class OutputPathError(LlavaAccelError):
    """An output path that cannot be written: a missing folder, a folder where a file is wanted (or the reverse), a
    path under a file, or a place that takes no new files."""


def check_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a ``Path`` if a file can be written there (its folder exists and takes new files), else
    ``OutputPathError``. An existing file there is replaced when written."""
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is a folder; pass a file path, such as {p / 'result.json'}")
    folder = p.parent
    if not folder.is_dir():
        blocker = _file_above(folder)
        if blocker is not None:
            raise OutputPathError(f"{what} {p}: {blocker} is a file, not a folder; pick another path")
        raise OutputPathError(f"{what} {p}: folder {folder} does not exist; create it (mkdir -p {folder}) or pick "
                              "another path")
    _probe(folder, what, p)
    return p


def check_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a ``Path`` if it is a folder that takes new files, or can be created as one; else
    ``OutputPathError``. Nothing is created here (a probe file is made and removed at once)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {p} is a file, not a folder; pass a folder (it is created when missing)")
    blocker = _file_above(p)
    if blocker is not None:
        raise OutputPathError(f"{what} {p}: {blocker} is a file, so no folder can be made under it; pick another path")
    existing = p
    while not existing.exists():
        existing = existing.parent
    _probe(existing, what, p)
    return p


def _file_above(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its ancestors when it is not a folder (a path under a file), else
    None."""
    for parent in (path, *path.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _probe(folder: Path, what: str, path: Path) -> None:
    """Make and remove a file in ``folder``: the only check that holds for root, read-only mounts and /proc alike."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".llava-accel-probe-")
    except OSError as exc:
        raise OutputPathError(f"{what} {path}: cannot create files in {folder} ({_reason(exc)}); pick a writable "
                              "place") from None
    os.close(fd)
    os.unlink(probe)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``PATH.tmp`` and a rename: a crash never leaves half a file, and a failed
    write leaves no ``.tmp`` behind."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(write: Callable[[Path], None], path: str | os.PathLike, what: str) -> Path:
    """``write(path)``; when that fails with an OSError, ``write`` into a new temporary folder instead and say where
    on stderr. Returns where it went. For files and folders alike (the fallback keeps the name)."""
    path = Path(path)
    try:
        write(path)
        return path
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="llava-accel-")) / (path.name or "output")
        write(fallback)
        print(f"llava-accel: cannot write {what} to {path} ({_reason(exc)}); saved it to {fallback} instead",
              file=sys.stderr)
        return fallback


class OutputFile(os.PathLike):
    """A file rewritten during a run (a checkpoint). Once its place has failed, the later writes go to the fallback
    as well; ``path`` is where the last write went."""

    def __init__(self, path: str | os.PathLike, what: str = "the result") -> None:
        self.path, self.what = Path(path), what

    def write_text(self, text: str) -> Path:
        self.path = save(lambda p: write_atomic(p, text), self.path, self.what)
        return self.path

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


__all__ = ["OutputFile", "OutputPathError", "check_file", "check_folder", "save", "write_atomic"]
