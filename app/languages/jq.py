"""jq programs of a Sensor dependency's ``transform.jq``, compiled once at load.

Argo runs the program with gojq over the event's data and keeps the first output,
which must be a JSON object (it becomes the event's new data). This module compiles
with the ``jq`` package (libjq) when the manifest loads, so a syntax error is a
load-time error, and runs the program per event, turning every failure (a runtime
error, no output) into a one-line :class:`~app.kernel.errors.ScriptError`.

Only this module imports ``jq`` (an import-linter contract keeps it so).
"""

from __future__ import annotations

from typing import Any

import jq

from app.kernel.errors import ScriptError

__all__ = ["JqProgram"]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class JqProgram:
    """A compiled jq program."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program

    @classmethod
    def compile(cls, source: str) -> JqProgram:
        """Compile ``source``; ``ValueError`` with jq's message when it does not parse."""
        try:
            program = jq.compile(source)
        except ValueError as e:
            raise ValueError(_first_line(e).removeprefix("jq: error: ").rstrip(":")) from e
        return cls(source, program)

    def first(self, data: Any) -> Any:
        """The program's first output for input ``data``; :class:`ScriptError` when it
        fails or produces nothing."""
        try:
            return self._program.input_value(data).first()
        except StopIteration as e:
            raise ScriptError("no output available from the jq command execution") from e
        except ValueError as e:
            raise ScriptError(_first_line(e)) from e
        except RecursionError as e:
            raise ScriptError("the event is nested too deeply") from e
