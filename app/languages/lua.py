"""Lua scripts of a Sensor dependency (``transform.script``, ``filters.script``), sandboxed.

Argo runs these with gopher-lua: the event's data is the global ``event`` (a table), the
script's last returned value is the result (a table for a transform, ``true`` for a
filter to pass). Sensors call :meth:`LuaScript.compile` when the manifest loads (a
syntax error is a load-time error) and :meth:`LuaScript.run` once per event, from a
worker thread; the call runs in a worker process (:mod:`app.languages.isolation`).

Why a sandbox and limits: a script is user text running inside the sensor process.
Every call gets a fresh Lua state (no state leaks between events) whose global
environment holds only pure functions: the base functions without ``load``,
``loadfile``, ``dofile``, ``require``, ``collectgarbage``; ``string`` without
``string.dump``; ``table``, ``math``, ``utf8``, and ``coroutine`` (new coroutines get
the same limit). There is no ``os``, ``io``, ``debug``, ``package``, nor any way back
to Python. ``setmetatable`` refuses ``__gc`` (a finaliser would run outside the
limits). Each call is bounded by :class:`LuaLimits`: an instruction budget enforced by
a count hook (past it, every further instruction raises, so ``pcall`` cannot swallow
it) and lupa's ``max_memory`` for the state; and, for what the hook cannot count (C
functions: a pathological pattern such as ``("a"):rep(400):find(".-.-.-.-b")`` runs
for hours), a wall-clock limit past which its worker process is killed. A script past
a limit fails that event with :class:`~app.kernel.errors.ScriptError`.

Values, as Argo converts them: JSON objects become tables keyed by strings, arrays
1-based sequences (``null`` items are dropped, as in Argo), numbers Lua numbers
(integral ones as integers, so ``tostring`` prints ``2`` as gopher-lua does). Back from
Lua: a table with items at ``1..#t`` (or whose metatable sets ``__is_array = true``) is
a JSON array, any other table an object with its keys as text; integral numbers become
integers (Go's JSON encoder prints ``2.0`` as ``2``).

lupa is imported only here (an import-linter contract keeps it so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from lupa import LuaError, LuaMemoryError, LuaRuntime, LuaSyntaxError, lua_type

from app.kernel.errors import ScriptError
from app.languages.isolation import ProcessLimits, call

__all__ = ["LuaLimits", "LuaScript"]

_LIMIT_MESSAGE: Final = "the script ran past its limit of {n} instructions"

# Trusted bootstrap, run in each fresh state. Arguments: the user's source, the
# instruction budget, the hook step. Returns the function that runs the user's chunk
# once and the helper that describes a table's shape for the conversion to Python.
_BOOT: Final = r"""
local source, limit, step, limit_message = ...
local sethook, getmetatable_raw = debug.sethook, debug.getmetatable
local setmetatable, rawget, rawlen = setmetatable, rawget, rawlen
local pairs, error, type = pairs, error, type
local pack = table.pack
local used = 0
local function refuse() error(limit_message, 0) end
local function hook()
  used = used + step
  if used > limit then
    sethook(refuse, "", 1)
    error(limit_message, 0)
  end
end
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end
string.dump = nil  -- also reachable through the strings' metatable
local co = copy(coroutine)
local co_create, co_resume = coroutine.create, coroutine.resume
co.create = function(f)
  local c = co_create(f)
  sethook(c, hook, "", step)
  return c
end
local function finish(ok, ...)
  if ok then return ... end
  error((...), 0)
end
co.wrap = function(f)
  local c = co.create(f)
  return function(...) return finish(co_resume(c, ...)) end
end
local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring,
  type = type, xpcall = xpcall, rawequal = rawequal, rawget = rawget,
  rawset = rawset, rawlen = rawlen, getmetatable = getmetatable,
  unpack = table.unpack,
  setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in a sensor script", 2)
    end
    return setmetatable(t, mt)
  end,
  string = copy(string), table = copy(table), math = copy(math), utf8 = copy(utf8),
  coroutine = co,
}
env._G = env
local chunk, err = load(source, "=script", "t", env)
if not chunk then error(err, 0) end
local function run(event)
  env.event = event
  used = 0
  sethook(hook, "", step)
  -- The hook stays on: converting the result may run the script's metamethods.
  local results = pack(chunk())
  if results.n == 0 then return nil end
  return results[results.n]
end
local function shape(t)
  local mt = getmetatable_raw(t)
  return type(mt) == "table" and rawget(mt, "__is_array") == true, rawlen(t)
end
return run, shape, rawget
"""

_HOOK_STEP: Final = 1000
_MAX_DEPTH: Final = 200
_INT64: Final = 2**63


@dataclass(frozen=True, slots=True)
class LuaLimits:
    """What one call of a script may use."""

    max_instructions: int = 10_000_000
    """Lua VM instructions per call (about 50 ms of plain Lua on this machine class)."""
    max_memory_bytes: int = 32 * 1024 * 1024
    """Memory of the call's Lua state, the event's data included."""
    time_seconds: float = 2.0
    """Wall-clock time of the call in its worker process: the bound for what the
    instruction budget cannot count (C functions such as pattern matching)."""


_HANDLER: Final = "app.languages.lua:_answer"
_PROCESS_HEADROOM: Final = 128 * 1024 * 1024
"""What a worker process may use beyond the Lua state (Python, the decoded event)."""


class LuaScript:
    """A Lua script checked at load time, run in a fresh sandboxed state per call."""

    __slots__ = ("limits", "source")

    def __init__(self, source: str, limits: LuaLimits) -> None:
        self.source = source
        self.limits = limits

    @classmethod
    def compile(cls, source: str, limits: LuaLimits | None = None) -> LuaScript:
        """Check ``source`` parses (``ValueError`` with Lua's line and message if not)."""
        script = cls(source, limits or LuaLimits())
        try:
            script._boot()
        except ScriptError as e:
            raise ValueError(f"Lua syntax error: {e}") from e
        return script

    def _boot(self) -> tuple[LuaRuntime, Any, _Shape]:
        runtime = LuaRuntime(
            register_eval=False,
            register_builtins=False,
            encoding=None,
            max_memory=self.limits.max_memory_bytes,
        )
        try:
            run, shape, item = runtime.execute(
                _BOOT,
                self.source.encode(),
                self.limits.max_instructions,
                _HOOK_STEP,
                _LIMIT_MESSAGE.format(n=self.limits.max_instructions).encode(),
            )
        except LuaMemoryError as e:
            raise ScriptError("the script does not fit in its memory limit") from e
        except LuaError as e:
            raise ScriptError(_message(e)) from e
        return runtime, run, _Shape(shape, item)

    def run(self, data: Any) -> Any:
        """Run the script with ``event`` = ``data`` in a worker process; its last
        returned value as JSON data (``None`` for nil or no value). :class:`ScriptError`
        when it fails or passes a limit. Blocks the calling thread for at most
        ``limits.time_seconds``."""
        limits = ProcessLimits(
            self.limits.time_seconds, self.limits.max_memory_bytes + _PROCESS_HEADROOM
        )
        request = {
            "source": self.source,
            "data": data,
            "max_instructions": self.limits.max_instructions,
            "max_memory_bytes": self.limits.max_memory_bytes,
        }
        try:
            reply = call(_HANDLER, limits, request, "the script")
        except RecursionError as e:
            raise ScriptError("the event or the result is nested too deeply") from e
        if "error" in reply:
            raise ScriptError(str(reply["error"]))
        return reply["value"]

    def run_here(self, data: Any) -> Any:
        """:meth:`run` in this process (what a worker process does per request)."""
        runtime, run, shape = self._boot()
        try:
            result = run(_to_lua(runtime, data, 0))
            return _from_lua(shape, result, 0)
        except LuaMemoryError as e:
            limit = self.limits.max_memory_bytes
            raise ScriptError(f"the script ran past its memory limit of {limit} bytes") from e
        except (LuaSyntaxError, LuaError) as e:
            raise ScriptError(_message(e)) from e
        except RecursionError as e:
            raise ScriptError("the event or the result is nested too deeply") from e


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """Run one request in a worker process (the handler :meth:`LuaScript.run` names)."""
    limits = LuaLimits(request["max_instructions"], request["max_memory_bytes"])
    try:
        return {"value": LuaScript(request["source"], limits).run_here(request["data"])}
    except ScriptError as e:
        return {"error": str(e)}


def _message(e: Exception) -> str:
    """The first line of a Lua error, without lupa's prefix."""
    text = str(e).strip() or "error (no message)"
    first = text.splitlines()[0]
    return first.removeprefix("error loading code: ")


def _to_lua(runtime: LuaRuntime, value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ScriptError("the event is nested too deeply for a Lua table")
    if isinstance(value, dict):
        return runtime.table_from(
            {
                str(k).encode(): _to_lua(runtime, v, depth + 1)
                for k, v in value.items()
                if v is not None
            }
        )
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v, depth + 1) for v in value if v is not None])
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else float(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    return str(value).encode()


def _key(k: Any) -> str:
    if isinstance(k, bytes):
        return k.decode("utf-8", "replace")
    if isinstance(k, bool):
        return "true" if k else "false"
    if isinstance(k, float) and k.is_integer():
        return str(int(k))
    return str(k)


@dataclass(frozen=True, slots=True)
class _Shape:
    """Lua-side raw access for the conversion (no ``__index`` or ``__len`` runs)."""

    describe: Any  # table -> (forced array?, raw length)
    item: Any  # rawget


def _from_lua(shape: _Shape, value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScriptError(f"the script returned {value} (not a JSON number)")
        return int(value) if value.is_integer() else value
    kind = lua_type(value)
    if kind != "table":
        raise ScriptError(f"the script returned a {kind}, which has no JSON form")
    if depth > _MAX_DEPTH:
        raise ScriptError("the script's result is nested too deeply (a table that holds itself?)")
    forced, length = shape.describe(value)
    if forced or length > 0:
        return [_from_lua(shape, shape.item(value, i), depth + 1) for i in range(1, length + 1)]
    return {_key(k): _from_lua(shape, v, depth + 1) for k, v in value.items()}
