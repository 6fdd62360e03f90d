"""Slow and oversized clients are cut off below the app, over real sockets.

A webhook source on a real port (uvicorn with :func:`app.adapters.httpserver.guarded_protocol`),
publishing to a real nats-server, with short limits so the tests run quickly: a
connection that sends nothing is closed, a head trickled a byte at a time or a body that
stalls gets 408 and a close, an oversized head 431; none of them is published, and the
port keeps serving. The limits are behaviour checked here; how fast they act is not
asserted (each read has a generous bound only so that a regression fails, not hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.adapters.bus import Bus, BusMessage
from app.kernel.events import Event
from app.kernel.settings import HttpServerSettings
from eventsources.base import SourceContext
from eventsources.webhook import WebhookSource
from tests.support.net import free_port
from tests.test_webhook_bus import (
    NoSecrets,
    PemSecrets,
    _self_signed,
    cfg,
    consume_into,
    running,
)

LIMITS = HttpServerSettings(
    header_timeout_seconds=0.5, body_timeout_seconds=0.5, max_header_bytes=4096
)
READ_BOUND_SECONDS = 20.0
POST = b"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture
async def port(bus: Bus) -> AsyncIterator[int]:
    """A running webhook source with :data:`LIMITS`; yields its port."""
    number = free_port()

    async def publish(event: Event) -> None:
        await bus.publish("default", event)

    source = WebhookSource(
        "webhook",
        "argo-events",
        {"trigger": cfg(number)},
        SourceContext(publish=publish, secrets=NoSecrets(), bind_host="127.0.0.1", http=LIMITS),
    )
    async with running(source):
        yield number


@pytest.fixture
async def stored(bus: Bus) -> AsyncIterator[list[BusMessage]]:
    got, task = await consume_into(bus, "default.webhook.>", "limits")
    yield got
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _exchange(port: int, parts: list[bytes], pause: float = 0.0) -> bytes:
    """Send ``parts`` (``pause`` seconds apart) while reading, until the server closes.

    Reading runs alongside the writes, so an answer sent before the server closes is
    kept even when later writes meet the closed connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read_all())
    try:
        for part in parts:
            if reading.done():
                break
            writer.write(part)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        await asyncio.wait_for(reading, READ_BOUND_SECONDS)
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return bytes(received)


async def _ok(port: int) -> bytes:
    body = b'{"ok": true}'
    return await _exchange(port, [POST + b"Connection: close\r\nContent-Length: 12\r\n\r\n" + body])


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    assert await _exchange(port, []) == b""
    assert (await _ok(port)).startswith(b"HTTP/1.1 200 ")


async def test_a_head_trickled_byte_by_byte_gets_408(port: int, stored: list[BusMessage]) -> None:
    head = POST + b"Content-Length: 2\r\n\r\n{}"
    answer = await _exchange(port, [head[i : i + 1] for i in range(len(head))], pause=0.05)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(b"request head not received in time")
    assert (await _ok(port)).startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.2)
    assert [m.event.data["body"] for m in stored] == [{"ok": True}]


async def test_a_body_that_stalls_gets_408_and_is_not_published(
    port: int, stored: list[BusMessage]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(POST + b"Content-Length: 100\r\n\r\n" + b'{"partial": ')
        answer = await asyncio.wait_for(reader.read(), READ_BOUND_SECONDS)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"request body not received in time")
    assert (await _ok(port)).startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.2)
    assert [m.event.data["body"] for m in stored] == [{"ok": True}]


async def test_a_chunked_body_that_stalls_gets_408(port: int) -> None:
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n"
    answer = await _exchange(port, [head, b"5\r\n[1, 2\r\n"], pause=0)
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_oversized_head_gets_431(port: int) -> None:
    huge = POST + b"X-Big: " + b"a" * 8192 + b"\r\nContent-Length: 2\r\n\r\n{}"
    assert (await _exchange(port, [huge])).startswith(b"HTTP/1.1 431 ")
    many = POST + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n"
    assert (await _exchange(port, [many[:3000], many[3000:]])).startswith(b"HTTP/1.1 431 ")
    assert (await _ok(port)).startswith(b"HTTP/1.1 200 ")


async def test_a_body_cut_short_by_the_client_is_not_published(
    port: int, stored: list[BusMessage]
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(POST + b"Content-Length: 100\r\n\r\n" + b'{"partial": ')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert (await _ok(port)).startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.2)
    assert [m.event.data["body"] for m in stored] == [{"ok": True}]


async def test_keep_alive_requests_are_not_cut_between_requests(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for i in range(3):
            writer.write(POST + b"Content-Length: 1\r\n\r\n" + str(i).encode())
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.readuntil(b"success"), 10))
            await asyncio.sleep(0.3)  # idle, under the keep-alive timeout
        # Pauses add up past the head timeout: each request is timed on its own.
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    finally:
        writer.close()


async def test_tls_port_cuts_slow_clients_and_survives_plain_http(
    bus: Bus, stored: list[BusMessage], tmp_path: Path
) -> None:
    """``serverCertSecret``/``serverKeySecret`` (Argo's names): HTTPS with a generated
    self-signed certificate, the same limits inside TLS, and a plain-HTTP client on the
    TLS port gets no answer and breaks nothing."""
    cert_pem, key_pem = _self_signed()
    (tmp_path / "ca.pem").write_text(cert_pem)
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    number = free_port()

    async def publish(event: Event) -> None:
        await bus.publish("default", event)

    tls = {"serverCertSecret": {"name": "tls", "key": "crt"},
           "serverKeySecret": {"name": "tls", "key": "key"}}  # fmt: skip
    source = WebhookSource(
        "webhook",
        "argo-events",
        {"trigger": cfg(number, **tls)},
        SourceContext(
            publish=publish,
            secrets=PemSecrets({"crt": cert_pem, "key": key_pem}),
            bind_host="127.0.0.1",
            http=LIMITS,
        ),
    )
    async with running(source), httpx.AsyncClient(verify=verify) as client:
        url = f"https://127.0.0.1:{number}/trigger"
        assert (await client.post(url, json={"n": 1})).status_code == 200
        assert await _exchange(number, [POST + b"Content-Length: 2\r\n\r\n{}"]) == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", number, ssl=verify)
        try:
            writer.write(POST + b"Content-Length: 100\r\n\r\n{")
            answer = await asyncio.wait_for(reader.read(), READ_BOUND_SECONDS)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        # A client stalling inside the handshake (half a ClientHello record header, or
        # nothing at all) is disconnected after the head timeout, not asyncio's 60 s.
        for stall in (b"\x16\x03", b""):
            assert await _exchange(number, [stall]) == b""
        assert (await client.post(url, json={"n": 2})).status_code == 200
    await asyncio.sleep(0.2)
    assert [m.event.data["body"] for m in stored] == [{"n": 1}, {"n": 2}]


async def test_overload_is_503_with_retry_after_over_the_wire(
    bus: Bus, stored: list[BusMessage]
) -> None:
    """With publishes held back, a port holds at most ``max_in_flight_requests``
    requests; the rest are refused at once (before their body is read), and the held
    ones complete when the bus answers again."""
    number = free_port()
    gate = asyncio.Event()

    async def publish(event: Event) -> None:
        await gate.wait()  # the bus is slow to answer
        await bus.publish("default", event)

    limits = HttpServerSettings(max_in_flight_requests=4)
    source = WebhookSource(
        "webhook",
        "argo-events",
        {"trigger": cfg(number)},
        SourceContext(publish=publish, secrets=NoSecrets(), bind_host="127.0.0.1", http=limits),
    )
    async with running(source), httpx.AsyncClient(timeout=30) as client:
        url = f"http://127.0.0.1:{number}/trigger"
        held = [asyncio.create_task(client.post(url, json={"i": i})) for i in range(4)]
        app = (await source.prepare())[number]  # the running app (prepare is idempotent)
        while app.in_flight < 4:
            await asyncio.sleep(0.01)
        refused = await asyncio.gather(*(client.post(url, json={"x": i}) for i in range(20)))
        assert {(r.status_code, r.headers.get("retry-after")) for r in refused} == {(503, "1")}
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 4
        assert (await client.post(url, json={"i": 4})).status_code == 200
    await asyncio.sleep(0.2)
    assert sorted(m.event.data["body"]["i"] for m in stored) == [0, 1, 2, 3, 4]
