"""A dependency's ``transform``: reshape an event's data with jq or Lua before filters.

Why a module of its own: Argo (``pkg/sensors/dependencies/transform.go``) applies the
transform to every event of the dependency *before* its filters, and the transformed
event is what the filters see, what conditions store and what trigger parameters read.
The runner calls :meth:`CompiledTransform.apply` once per event, in a worker thread
(scripts are bounded, but they are still user code; see :mod:`app.languages.lua`).

Semantics, as Argo's:

* ``jq`` wins when both ``jq`` and ``script`` are set; neither set: no transform.
* An event without data (``data`` is null) passes unchanged.
* The data must be a JSON object (Argo decodes it into a map); anything else fails.
* ``jq``: the program's first output becomes the data; it must be an object (no output,
  or an array/string/number, fails).
* ``script``: Lua with the data as the global ``event``; the script's last returned
  value must be a table, and becomes the data (a sequence table gives an array, as in
  Argo).
* The transformed event's ``datacontenttype`` is ``application/json``.

A failure raises :class:`~app.kernel.errors.ScriptError` naming the language; the
runner records it in the event's trace and drops the event (acked, as Argo drops it:
the same event would fail the same way again).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from app.kernel.errors import ScriptError
from app.languages.jq import JqProgram
from app.languages.lua import LuaScript

if TYPE_CHECKING:
    from app.kernel.events import Event
    from sensors.spec import EventDependencyTransformer

__all__ = ["CompiledTransform"]


class CompiledTransform:
    """``dependencies[].transform``, compiled once when the Sensor loads."""

    __slots__ = ("_jq", "_script")

    def __init__(self, jq: JqProgram | None = None, script: LuaScript | None = None) -> None:
        self._jq = jq
        self._script = script

    @classmethod
    def compile(cls, transform: EventDependencyTransformer | None) -> CompiledTransform | None:
        """The compiled transform (``None``: there is none); ``ValueError`` naming the
        field (``transform.jq: ...``) when the program does not parse."""
        if transform is None:
            return None
        if transform.jq:
            try:
                return cls(jq=JqProgram.compile(transform.jq))
            except ValueError as e:
                raise ValueError(f"transform.jq: {e}") from e
        if transform.script:
            try:
                return cls(script=LuaScript.compile(transform.script))
            except ValueError as e:
                raise ValueError(f"transform.script: {e}") from e
        return None

    @property
    def language(self) -> str:
        """``jq`` or ``script``: what a trace line calls this transform."""
        return "jq" if self._jq is not None else "script"

    def apply(self, event: Event) -> Event:
        """The event with its data transformed (``event`` itself when it has no data);
        :class:`ScriptError` when the transform fails."""
        if event.data is None:
            return event
        if not isinstance(event.data, dict):
            raise ScriptError(f"transform {self.language}: the event's data is not a JSON object")
        try:
            if self._jq is not None:
                out = self._jq.first(event.data)
                if not isinstance(out, dict):
                    raise ScriptError("the output must be a JSON object")
            elif self._script is not None:
                out = self._script.run(event.data)
                if not isinstance(out, dict | list):
                    raise ScriptError("the script must return a Lua table")
            else:
                return event
        except ScriptError as e:
            raise ScriptError(f"transform {self.language}: {e}") from e
        return dataclasses.replace(event, data=out, datacontenttype="application/json")
