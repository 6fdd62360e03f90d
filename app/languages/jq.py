"""jq programs of a Sensor dependency's ``transform.jq``: compiled once at load, run in
a worker process with a time and a memory limit.

Argo runs the program with gojq over the event's data and keeps the first output,
which must be a JSON object (it becomes the event's new data). This module compiles
with the ``jq`` package (libjq) when the manifest loads, so a syntax error is a
load-time error, and runs the program per event, turning every failure (a runtime
error, no output, a limit) into a one-line :class:`~app.kernel.errors.ScriptError`.

Why a worker process: libjq cannot be interrupted, and the ``jq`` package holds the GIL
while a program runs, so a program that never ends (``last(range(1e18))``) or grows
without end would freeze every thread of the sensor process, the event loop included.
Each call is therefore sent to a worker process (this module's :func:`_serve`, started
with the same interpreter), which is kept for the next call. The calling thread waits
for the answer at most :attr:`JqLimits.time_seconds` and kills the worker by its PID
when it does not come; the worker's address space is capped (``RLIMIT_AS``, Linux), so
a program that allocates without end ends its own worker (libjq aborts when an
allocation fails), never the sensor. Either way that event fails, and a fresh worker
serves the next call. Inputs and outputs cross as JSON text, as the ``jq`` package
converts them anyway.

Only this module imports ``jq`` (an import-linter contract keeps it so).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any, Final

import jq

from app.kernel.errors import ScriptError, TransientError

__all__ = ["JqLimits", "JqProgram"]

_START_SECONDS: Final = 60.0
"""How long a new worker may take to start (an interpreter and libjq, on a busy host)."""
_MAX_IDLE: Final = 4
"""Idle workers kept per limits; more are closed after their call."""
_MAX_PROGRAMS: Final = 256
"""Compiled programs a worker keeps (it forgets them all past that)."""
_OUT_OF_MEMORY: Final = 3
"""A worker's exit status when Python itself ran out of its memory cap."""
_CHILD: Final = (
    "import sys; sys.path[:0] = sys.argv[2:]; "
    "from app.languages.jq import _serve; _serve(int(sys.argv[1]))"
)


@dataclass(frozen=True, slots=True)
class JqLimits:
    """What one call of a jq program may use."""

    time_seconds: float = 2.0
    """Wall-clock time from handing the event to the worker to its answer."""
    max_memory_bytes: int = 256 * 1024 * 1024
    """Address space the worker may grow by beyond what it uses when it starts."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class JqProgram:
    """A compiled jq program."""

    __slots__ = ("limits", "source")

    def __init__(self, source: str, limits: JqLimits) -> None:
        self.source = source
        self.limits = limits

    @classmethod
    def compile(cls, source: str, limits: JqLimits | None = None) -> JqProgram:
        """Compile ``source``; ``ValueError`` with jq's message when it does not parse."""
        try:
            jq.compile(source)
        except ValueError as e:
            raise ValueError(_first_line(e).removeprefix("jq: error: ").rstrip(":")) from e
        return cls(source, limits or JqLimits())

    def first(self, data: Any) -> Any:
        """The program's first output for input ``data``; :class:`ScriptError` when it
        fails, produces nothing or passes a limit. Blocks the calling thread (not the
        GIL) for at most the time limit."""
        try:
            text = json.dumps(data)
        except RecursionError as e:
            raise ScriptError("the event is nested too deeply") from e
        request = json.dumps({"program": self.source, "input": text}).encode() + b"\n"
        reply = _call(self.limits, request)
        if "error" in reply:
            raise ScriptError(str(reply["error"]))
        if reply.get("empty"):
            raise ScriptError("no output available from the jq command execution")
        return reply["value"]


# --------------------------------------------------------------------------- the workers


class _Ended(Exception):
    """The worker process ended (or closed its pipe) before answering."""


class _Worker:
    """One worker process and its pipes; used by one thread at a time."""

    def __init__(self, limits: JqLimits) -> None:
        paths = [p for p in sys.path if p]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(limits.max_memory_bytes), *paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        if not self._ready(_START_SECONDS) or self._out.readline() != b"ready\n":
            self.kill()
            raise TransientError("transform jq: the jq worker process did not start")

    def _ready(self, seconds: float) -> bool:
        readable, _, _ = select.select([self._out], [], [], seconds)
        return bool(readable)

    def call(self, request: bytes, seconds: float) -> dict[str, Any] | None:
        """The worker's answer; ``None`` when it gave none within ``seconds``;
        :class:`_Ended` when it ended (or had ended) first."""
        try:
            self._in.write(request)
            self._in.flush()
        except OSError as e:  # BrokenPipeError: it ended while idle
            raise _Ended from e
        if not self._ready(seconds):
            return None
        line = self._out.readline()
        if not line.endswith(b"\n"):
            raise _Ended
        reply: dict[str, Any] = json.loads(line)
        return reply

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


_idle: dict[JqLimits, list[_Worker]] = {}
_idle_lock = threading.Lock()


def _call(limits: JqLimits, request: bytes) -> dict[str, Any]:
    """Run one request on an idle worker (or a new one); a worker that ended while idle
    is replaced once."""
    for attempt in (1, 2):
        with _idle_lock:
            pool = _idle.get(limits)
            worker = pool.pop() if pool else None
        fresh = worker is None
        if worker is None:
            worker = _Worker(limits)
        try:
            reply = worker.call(request, limits.time_seconds)
        except _Ended:
            status = worker.exit_status()
            worker.kill()
            if not fresh and attempt == 1:
                continue
            raise ScriptError(_ended_message(status, limits)) from None
        if reply is None:
            worker.kill()
            raise ScriptError(
                f"the jq program ran past its time limit of {limits.time_seconds:g} s"
            )
        with _idle_lock:
            pool = _idle.setdefault(limits, [])
            keep = len(pool) < _MAX_IDLE
            if keep:
                pool.append(worker)
        if not keep:
            worker.close()
        return reply
    raise AssertionError("unreachable")  # pragma: no cover


def _ended_message(status: int | None, limits: JqLimits) -> str:
    if status in (-signal.SIGABRT, _OUT_OF_MEMORY):
        return f"the jq program ran past its memory limit of {limits.max_memory_bytes} bytes"
    return f"the jq worker process ended (status {status}) before answering"


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


def _answer(programs: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    source: str = request["program"]
    program = programs.get(source)
    if program is None:
        if len(programs) >= _MAX_PROGRAMS:
            programs.clear()
        program = programs[source] = jq.compile(source)
    try:
        return {"value": program.input_text(request["input"]).first()}
    except StopIteration:
        return {"empty": True}
    except RecursionError:
        return {"error": "the event is nested too deeply"}
    except ValueError as e:
        return {"error": _first_line(e)}


def _serve(max_memory_bytes: int) -> None:
    """A worker's loop: one JSON request per line in, one JSON answer per line out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the sensor's to handle
    _cap_memory(max_memory_bytes)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    programs: dict[str, Any] = {}
    stdout.write(b"ready\n")
    stdout.flush()
    for line in iter(stdin.readline, b""):
        try:
            reply = json.dumps(_answer(programs, json.loads(line)))
        except MemoryError:
            os._exit(_OUT_OF_MEMORY)
        stdout.write(reply.encode() + b"\n")
        stdout.flush()
