"""uvicorn, as every Triggerfish HTTP server runs it: no signal handlers, slow clients cut off.

``uvicorn.Server.serve`` installs SIGINT/SIGTERM handlers and re-raises the signal when
it stops; inside Triggerfish the runtime owns signals and stops servers by cancelling
their tasks (:class:`QuietServer`). Used by the operations API and the webhook source.

uvicorn bounds idle keep-alive connections but not a request that is being read: a
client that opens a connection and sends nothing, sends its head a byte at a time, or
announces a body and stalls holds a connection (and, for a growing head, memory)
forever. :func:`guarded_protocol` returns uvicorn's httptools protocol with the limits of
:class:`app.kernel.settings.HttpServerSettings`:

* the head (request line + headers) must be complete ``header_timeout_seconds`` after
  the connection opened or the request's first byte arrived, else 408 and the
  connection is closed (a connection that sent nothing is closed without an answer);
* the head may hold at most ``max_header_bytes``, else 431 and close;
* the body must be complete ``body_timeout_seconds`` after the head, else 408 and close
  (or only the close, when the app has already started its answer).

One timer per request, armed and cancelled from the parser's callbacks: the cost on the
hot path is one ``call_later`` and one ``cancel``.

On a TLS port the protocol only sees a connection once its handshake is done, so a client
that stalls inside the handshake is cut off by the event loop's ``ssl_handshake_timeout``
instead; uvicorn does not pass one (asyncio's default is 60 s), so :class:`QuietServer`
sets it to the head timeout for the servers it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.kernel.settings import HttpServerSettings

_HANDSHAKE_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "triggerfish_ssl_handshake_timeout", default=None
)
_PATCHED = "_triggerfish_handshake_timeout"


def _bound_handshakes(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop.create_server`` apply :data:`_HANDSHAKE_TIMEOUT` to TLS servers.

    uvicorn calls ``loop.create_server(..., ssl=...)`` with no way to pass the handshake
    timeout; the wrapper adds it for calls made while a :class:`QuietServer` starts (the
    context variable is set only in that task), and changes nothing for any other call.
    Installed once per loop.
    """
    if getattr(loop, _PATCHED, False):
        return
    original = loop.create_server

    async def create_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        timeout = _HANDSHAKE_TIMEOUT.get()
        if timeout is not None and kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", timeout)
        return await original(*args, **kwargs)

    loop.create_server = create_server  # type: ignore[method-assign]
    setattr(loop, _PATCHED, True)


class QuietServer(uvicorn.Server):
    """``uvicorn.Server`` without signal handling (see the module docstring).

    ``handshake_timeout_seconds`` bounds a TLS handshake (a client stalling in it is
    disconnected); ``None`` keeps the event loop's default.
    """

    def __init__(
        self, config: uvicorn.Config, *, handshake_timeout_seconds: float | None = None
    ) -> None:
        super().__init__(config)
        self.handshake_timeout_seconds = handshake_timeout_seconds

    async def startup(self, sockets: list[Any] | None = None) -> None:
        token = _HANDSHAKE_TIMEOUT.set(self.handshake_timeout_seconds)
        _bound_handshakes(asyncio.get_running_loop())
        try:
            await super().startup(sockets)
        finally:
            _HANDSHAKE_TIMEOUT.reset(token)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # the same hook in older uvicorn releases
        return None


def _plain(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


_HEAD_TIMEOUT = _plain(b"408 Request Timeout", b"request head not received in time")
_BODY_TIMEOUT = _plain(b"408 Request Timeout", b"request body not received in time")
_HEAD_TOO_LARGE = _plain(
    b"431 Request Header Fields Too Large", b"request line and headers too large"
)

_IDLE, _HEAD, _BODY = range(3)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head/body read deadlines and a head size cap.

    Subclassed per server by :func:`guarded_protocol`, which sets the limits.
    """

    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_received = 0  # bytes received while the head was incomplete
        self._head_parsed = 0  # request line + header bytes the parser reported
        self._saw_bytes = False
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    # -- timer --------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._phase == _BODY:
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self.transport.write(_BODY_TIMEOUT)
            if cycle is not None:  # the app's receive() now gets http.disconnect
                cycle.disconnected = True
                cycle.message_event.set()
        elif self._saw_bytes:
            self.transport.write(_HEAD_TIMEOUT)
        self.transport.close()

    # -- protocol hooks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = _HEAD
        self._arm(self.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._saw_bytes = True
        super().data_received(data)
        if self._phase == _HEAD and not self._refused and self.parser is not None:
            # Still reading the head after this chunk: all of it belonged to the head
            # (one long header arrives in pieces the parser reports only when complete).
            self._head_received += len(data)
            if self._head_received > self.max_header_bytes:
                self._refuse(_HEAD_TOO_LARGE)

    def _refuse(self, answer: bytes) -> None:
        """Answer ``answer`` and close; the parser's further callbacks are ignored."""
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def on_message_begin(self) -> None:
        if self._phase != _HEAD:  # a keep-alive connection's next request: first byte
            self._phase = _HEAD
            self._arm(self.header_timeout_seconds)
        self._head_received = 0
        self._head_parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._head_parsed > self.max_header_bytes:
            self._refuse(_HEAD_TOO_LARGE)
            return
        self._phase = _BODY
        self._arm(self.body_timeout_seconds)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._phase = _IDLE
        self._disarm()
        super().on_message_complete()


def guarded_protocol(limits: HttpServerSettings) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class with ``limits``, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "header_timeout_seconds": limits.header_timeout_seconds,
            "body_timeout_seconds": limits.body_timeout_seconds,
            "max_header_bytes": limits.max_header_bytes,
        },
    )
