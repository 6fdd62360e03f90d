"""jq programs of a Sensor dependency's ``transform.jq``: compiled once at load, run in
a worker process with a time and a memory limit.

Argo runs the program with gojq over the event's data and keeps the first output,
which must be a JSON object (it becomes the event's new data). This module compiles
with the ``jq`` package (libjq) when the manifest loads, so a syntax error is a
load-time error, and runs the program per event, turning every failure (a runtime
error, no output, a limit) into a one-line :class:`~app.kernel.errors.ScriptError`.

Each run goes to a worker process (:mod:`app.languages.isolation`): libjq cannot be
interrupted and the ``jq`` package holds the GIL while a program runs, so in the
sensor's own process a program that never ends (``last(range(1e18))``) would freeze
every thread. Inputs and outputs cross as JSON text, as the ``jq`` package converts
them anyway.

Only this module imports ``jq`` (an import-linter contract keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import jq

from app.kernel.errors import ScriptError
from app.languages.isolation import ProcessLimits, call

__all__ = ["JqLimits", "JqProgram"]

_HANDLER: Final = "app.languages.jq:_answer"
_MAX_PROGRAMS: Final = 256
"""Compiled programs a worker keeps (it forgets them all past that)."""


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
        limits = ProcessLimits(self.limits.time_seconds, self.limits.max_memory_bytes)
        try:
            reply = call(_HANDLER, limits, {"program": self.source, "input": data},
                         "the jq program")  # fmt: skip
        except RecursionError as e:
            raise ScriptError("the event is nested too deeply") from e
        if "error" in reply:
            raise ScriptError(str(reply["error"]))
        if reply.get("empty"):
            raise ScriptError("no output available from the jq command execution")
        return reply["value"]


_programs: dict[str, Any] = {}
"""A worker's compiled programs, by source."""


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """Run one request in a worker process (the handler :func:`JqProgram.first` names)."""
    source: str = request["program"]
    program = _programs.get(source)
    if program is None:
        if len(_programs) >= _MAX_PROGRAMS:
            _programs.clear()
        program = _programs[source] = jq.compile(source)
    try:
        return {"value": program.input_value(request["input"]).first()}
    except StopIteration:
        return {"empty": True}
    except RecursionError:
        return {"error": "the event is nested too deeply"}
    except ValueError as e:
        return {"error": _first_line(e)}
