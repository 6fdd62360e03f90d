"""Worker processes that run one user program call each, bounded in time and memory.

Why: a Sensor's jq programs and Lua scripts are user text run once per event, and some
of them cannot be stopped from inside the sensor's process. libjq cannot be interrupted
and the ``jq`` package holds the GIL while a program runs (a program that never ends
would freeze every thread, the event loop included); Lua's instruction hook cannot
reach C functions, so a pathological pattern (``("a"):rep(400):find(".-.-.-.-b")``)
runs for hours in a thread nothing can stop. So each call is sent to a worker process
(started with the same interpreter, kept for the next call), and the calling thread
waits for the answer at most :attr:`ProcessLimits.time_seconds`, then kills the worker
by its PID. The worker's address space is capped (``RLIMIT_AS``, Linux), so a program
that allocates without end ends its own worker. Either way that one call fails with a
one-line :class:`~app.kernel.errors.ScriptError`, and a fresh worker serves the next.

A worker runs a *handler*, ``"module:function"`` taking a JSON request and returning a
JSON answer; it is imported by name in the worker, so this module imports neither jq
nor lupa (the import-linter contracts keep each in its language module).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Final

from app.kernel.errors import ScriptError, TransientError

__all__ = ["OUT_OF_MEMORY", "ProcessLimits", "call"]

_START_SECONDS: Final = 60.0
"""How long a new worker may take to start (an interpreter and a library, on a busy
host)."""
_MAX_IDLE: Final = 4
"""Idle workers kept per (handler, limits); more are closed after their call."""
OUT_OF_MEMORY: Final = 3
"""A worker's exit status when Python itself ran out of its memory cap."""
_CHILD: Final = (
    "import sys; sys.path[:0] = sys.argv[3:]; "
    "from app.languages.isolation import _serve; _serve(sys.argv[1], int(sys.argv[2]))"
)


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """What one call may use in its worker process."""

    time_seconds: float
    """Wall-clock time from handing the request to the worker to its answer."""
    memory_bytes: int
    """Address space the worker may grow by beyond what it uses once started."""


def call(handler: str, limits: ProcessLimits, request: dict[str, Any], what: str) -> Any:
    """The handler's answer to ``request`` from a worker process; :class:`ScriptError`
    naming ``what`` (``the jq program``) when the call passes a limit or its worker
    ends. Blocks the calling thread (never the GIL) for at most the time limit."""
    line = json.dumps(request, default=str).encode() + b"\n"
    key = (handler, limits)
    for attempt in (1, 2):
        with _idle_lock:
            pool = _idle.get(key)
            worker = pool.pop() if pool else None
        fresh = worker is None
        if worker is None:
            worker = _Worker(handler, limits)
        try:
            answer = worker.call(line, limits.time_seconds)
        except _Ended:
            status = worker.exit_status()
            worker.kill()
            if not fresh and attempt == 1:
                continue  # it had ended while idle: one fresh worker
            if status in (-signal.SIGABRT, OUT_OF_MEMORY):
                raise ScriptError(
                    f"{what} ran past its memory limit of {limits.memory_bytes} bytes"
                ) from None
            raise ScriptError(f"{what} ended its worker process (status {status})") from None
        if answer is _NO_ANSWER:
            worker.kill()
            raise ScriptError(f"{what} ran past its time limit of {limits.time_seconds:g} s")
        with _idle_lock:
            pool = _idle.setdefault(key, [])
            keep = len(pool) < _MAX_IDLE
            if keep:
                pool.append(worker)
        if not keep:
            worker.close()
        return answer
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- the workers

_NO_ANSWER: Final = object()


class _Ended(Exception):
    """The worker process ended (or closed its pipe) before answering."""


class _Worker:
    """One worker process and its pipes; used by one thread at a time."""

    def __init__(self, handler: str, limits: ProcessLimits) -> None:
        paths = [p for p in sys.path if p]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, handler, str(limits.memory_bytes), *paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        if not self._ready(_START_SECONDS) or self._out.readline() != b"ready\n":
            self.kill()
            raise TransientError(f"the worker process for {handler} did not start")

    def _ready(self, seconds: float) -> bool:
        readable, _, _ = select.select([self._out], [], [], seconds)
        return bool(readable)

    def call(self, request: bytes, seconds: float) -> Any:
        """The worker's answer; ``_NO_ANSWER`` when none came within ``seconds``;
        :class:`_Ended` when it ended (or had ended) first."""
        try:
            self._in.write(request)
            self._in.flush()
        except OSError as e:  # BrokenPipeError: it ended while idle
            raise _Ended from e
        if not self._ready(seconds):
            return _NO_ANSWER
        line = self._out.readline()
        if not line.endswith(b"\n"):
            raise _Ended
        return json.loads(line)

    def exit_status(self) -> int | None:
        """The ended worker's status (negative: the signal that ended it)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout=5)
        return None

    def kill(self) -> None:
        """End the worker at once (SIGKILL to its PID) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def close(self) -> None:
        """Let the worker end by itself (end of its input), killing it if it lingers."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._in, self._out):
            with contextlib.suppress(OSError):
                pipe.close()


_idle: dict[tuple[str, ProcessLimits], list[_Worker]] = {}
_idle_lock = threading.Lock()


@atexit.register
def _close_idle_workers() -> None:
    with _idle_lock:
        workers = [w for pool in _idle.values() for w in pool]
        _idle.clear()
    for worker in workers:
        worker.close()


# --------------------------------------------------------------------------- worker side


def _cap_memory(limit: int) -> None:
    """Cap this process's address space at what it uses now plus ``limit`` (Linux;
    elsewhere only the time limit applies)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = used + limit if hard == resource.RLIM_INFINITY else min(used + limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):
        return


def _serve(handler: str, memory_bytes: int) -> None:
    """A worker's loop: one JSON request per line in, one JSON answer per line out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the sensor's to handle
    module, _, name = handler.partition(":")
    answer: Callable[[Any], Any] = getattr(importlib.import_module(module), name)
    _cap_memory(memory_bytes)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b"ready\n")
    stdout.flush()
    for line in iter(stdin.readline, b""):
        try:
            reply = json.dumps(answer(json.loads(line)))
        except MemoryError:
            os._exit(OUT_OF_MEMORY)
        stdout.write(reply.encode() + b"\n")
        stdout.flush()
