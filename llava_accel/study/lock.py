"""One sweep per folder: a second sweep on the same ``--out`` refuses in one line instead of running every point
again under contention and racing the first on results.jsonl.

Refusing (rather than waiting) is the honest choice: a waiting sweep would start when the first ends and find
every point done, or compete for the machine with whatever runs next, and a user who started it by mistake would
not know. The lock is ``flock`` on ``DIR/sweep.lock``: the kernel releases it when its process ends, however it
ends (a SIGKILL leaves no stale lock), so the file itself may stay. It holds the holder's pid, host and start time
for the message.
"""

from __future__ import annotations

import fcntl
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from ..errors import LlavaAccelError

LOCK_FILE = "sweep.lock"


class SweepLockedError(LlavaAccelError):
    pass


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder/sweep.lock`` or raises ``SweepLockedError`` at once."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SweepLockedError(f"another sweep is writing to {self.path.parent} ({holder}); wait for it to end, "
                                   "or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()}, since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None
