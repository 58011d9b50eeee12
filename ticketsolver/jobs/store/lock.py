"""One server per data dir: :class:`DataDirLock`, an exclusive ``flock`` on ``<data_dir>/server.lock``.

Place in the pipeline: jobs/store. Two servers on one data dir would each re-queue the other's running
items at start and run them twice; whoever runs the service (``ticketsolver serve``, the API's lifespan)
takes this lock first and holds it until it stops. The kernel releases it when the process dies, so a
crashed server never leaves a stale lock behind; the file keeps the pid of the holder for the message.

>>> import tempfile
>>> with DataDirLock(tempfile.mkdtemp()) as lock:
...     lock.held
True
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from ticketsolver.jobs.store.errors import DataDirInUseError

__all__ = ["DataDirLock"]

LOCK_NAME = "server.lock"


class DataDirLock:
    """An exclusive, process-wide lock on a data dir.

    Args:
        data_dir: the service's data dir (created if missing). Messages show it as given, never resolved.

    Raises:
        DataDirInUseError: from :meth:`acquire`, when another process holds it (the message names its pid).
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.shown = str(data_dir)
        self.path = Path(data_dir) / LOCK_NAME
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting; DataDirInUseError if another server holds it."""
        if self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            pid = int(text) if text.isdigit() else None
            holder = f"pid {pid}" if pid is not None else "pid unknown"
            raise DataDirInUseError(
                f"data dir {self.shown} is in use by another ticketsolver server ({holder}); "
                "stop it or give this one another data dir",
                pid,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Give the lock up (the file stays; an unlocked file means nobody holds the data dir)."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
