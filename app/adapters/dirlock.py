"""One owner per directory: an exclusive ``flock`` on a lock file, held for the owner's life.

Two ``triggerfish run`` on the same state directory would share one JetStream store and
one objects folder; the second would also mistake the first one's nats-server for a
leftover. The lock makes the second refuse instead. It is an OS lock on an open file
description, so the kernel releases it when the holder dies however it dies (SIGKILL
included): a stale lock file never blocks a restart. The holder's PID is written into
the file only so that the refusal can name it; the lock itself, not the PID, decides.
The descriptor is not inherited by children (``nats-server`` must not keep it alive).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from app.kernel.errors import InstanceLockedError


class DirLock:
    """An exclusive lock on ``<directory>/<name>``; :meth:`acquire` never waits."""

    def __init__(self, directory: Path, name: str = "triggerfish.lock") -> None:
        self.directory = directory
        self.path = directory / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "directory") -> None:
        """Take the lock or raise :class:`InstanceLockedError` naming the holder's PID.

        ``what`` names the directory's role in the message ("state directory").
        Calling it again while held is a no-op.
        """
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise InstanceLockedError(
                f"{what} {self.directory} is in use by another Triggerfish ({who}, lock "
                f"{self.path}); stop that one or choose another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays; only the lock matters)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
