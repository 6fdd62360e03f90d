"""The error hierarchy every layer raises, so callers decide by kind, not by message.

* ``ConfigError``: the user's manifest or settings are wrong. Reported (status, logs,
  validate output) and never retried.
* ``TransientError``: the world is temporarily unavailable (bus down, API 5xx,
  timeouts). Retried with bounded backoff; the caller must not ack upstream.
* ``PermanentError``: this one event can never succeed (missing parameter key, 4xx
  from the API other than conflicts). Dead-lettered, then acked.

Library exceptions are wrapped at the adapter boundary with ``raise ... from e`` so the
domain code never imports ``nats`` or ``kubernetes`` to catch their errors.
"""

from __future__ import annotations


class TriggerfishError(Exception):
    """Root of every error Triggerfish raises on purpose."""


class ConfigError(TriggerfishError):
    """A manifest, setting or expression is invalid; ``path`` names where, when known."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


class TransientError(TriggerfishError):
    """A failure that may succeed when retried later (network, bus, API availability).

    ``retry_after_seconds``: how long the peer asked us to wait (an HTTP 429/503
    ``Retry-After``); retries wait at least that long, within the retry policy's cap.
    """

    retry_after_seconds: float | None = None


class ListenError(TransientError):
    """A server could not bind its address (port taken, no permission). The process
    keeps running and the source retries with backoff, so it recovers once the port
    is free; meanwhile its status says why."""


class BusUnavailableError(TransientError):
    """The event bus did not accept a publish (not connected, no PubAck in time)."""


class StreamFullError(BusUnavailableError):
    """The bus stream is at its ``maxMsgs``/``maxBytes`` limit and refuses new events
    (discard policy *new*), or the server's or the account's JetStream storage is used
    up: retry later, once sensors have caught up or events aged out."""


class InstanceLockedError(TriggerfishError):
    """Another live process owns the directory (state dir, bus store); names its PID."""


class StateConflictError(TransientError):
    """A revision-checked state write lost to a concurrent writer: re-read, then retry."""


class PermanentError(TriggerfishError):
    """A failure that retrying the same event cannot fix; the event is dead-lettered."""


class ParameterError(PermanentError):
    """A trigger parameter could not be resolved; names the parameter and the path."""


class ScriptError(PermanentError):
    """A user script (a jq program or a Lua script of a dependency's ``transform`` or
    ``filters.script``) failed on one event: a runtime error, a result of the wrong
    type, or its time, instruction or memory limit. Says which in one line."""
