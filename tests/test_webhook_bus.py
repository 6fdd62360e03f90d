"""The webhook source on a real port, publishing through :class:`app.adapters.bus.Bus` to a real
``nats-server``: the event lands in the stream; a bus outage gives 503 (not a hang, not
200) and the source recovers by itself when the server comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

from app.adapters.bus import Bus, BusMessage, event_subject
from app.adapters.natsserver import EmbeddedNats
from app.kernel.errors import TransientError
from app.kernel.events import Event
from eventsources.base import SourceContext
from eventsources.webhook import WebhookConfig, WebhookSource
from tests.support.net import free_port


class NoSecrets:
    async def get(self, namespace: str, name: str, key: str) -> str:
        raise KeyError(name)


class PemSecrets:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)

    async def get(self, namespace: str, name: str, key: str) -> str:
        return self.values[key]


def cfg(port: int, endpoint: str = "/trigger", **fields: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"port": str(port), "endpoint": endpoint, **fields})


@contextlib.asynccontextmanager
async def running(source: WebhookSource) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``source`` until the block ends; wait for ``ready()`` first."""
    task = asyncio.create_task(source.run())
    try:
        for _ in range(500):
            if source.ready():
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        assert source.ready()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_source(
    bus: Bus, events: Mapping[str, WebhookConfig], secrets: Any = None
) -> WebhookSource:
    async def publish(event: Event) -> None:
        await bus.publish("default", event)

    return WebhookSource(
        "webhook",
        "argo-events",
        events,
        SourceContext(publish=publish, secrets=secrets or NoSecrets(), bind_host="127.0.0.1"),
    )


async def consume_into(
    bus: Bus, subject: str, durable: str
) -> tuple[list[BusMessage], asyncio.Task[None]]:
    got: list[BusMessage] = []
    ready = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        got.append(m)
        await m.ack()

    task = asyncio.create_task(bus.consume("default", subject, durable, handler, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    return got, task


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_post_lands_in_the_stream_on_the_event_subject(bus: Bus) -> None:
    port = free_port()
    source = make_source(
        bus,
        {"trigger": cfg(port, metadata={"k": "v"}), "other": cfg(port, "/other")},
    )
    subject = event_subject("default", "webhook", "trigger")
    assert subject == "default.webhook.trigger"
    got, consumer = await consume_into(bus, "default.webhook.>", "wh-roundtrip")
    try:
        async with running(source), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.post(
                "/trigger",
                json={"model": "resnet", "dataset": "imagenet"},
                headers={"X-Run": "7"},
            )
            assert (r.status_code, r.text) == (200, "success")
            r = await c.post("/other", json=[1])
            assert r.status_code == 200
            assert (await c.get("/health")).status_code == 200
            await wait_until(lambda: len(got) == 2)
    finally:
        consumer.cancel()
    by_subject = {m.subject: m.event for m in got}
    ev = by_subject["default.webhook.trigger"]
    assert (ev.source, ev.subject, ev.type) == ("webhook", "trigger", "webhook")
    assert ev.data["body"] == {"model": "resnet", "dataset": "imagenet"}
    assert ev.data["header"]["X-Run"] == ["7"]
    assert ev.data["metadata"] == {"k": "v"}
    assert by_subject["default.webhook.other"].data["body"] == [1]


async def test_client_retry_with_idempotency_key_is_stored_once(bus: Bus) -> None:
    port = free_port()
    source = make_source(bus, {"trigger": cfg(port)})
    got, consumer = await consume_into(bus, "default.webhook.trigger", "wh-dedup")
    try:
        async with running(source), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(3):
                r = await c.post("/trigger", json={"a": 1}, headers={"Idempotency-Key": "job-1"})
                assert r.status_code == 200
            r = await c.post("/trigger", json={"a": 2})
            await wait_until(lambda: len(got) >= 2)
            await asyncio.sleep(0.2)
    finally:
        consumer.cancel()
    assert [m.event.data["body"] for m in got] == [{"a": 1}, {"a": 2}]


async def test_bus_outage_gives_503_then_recovers_without_restart(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    port = free_port()
    source = make_source(bus, {"trigger": cfg(port)})
    loop = asyncio.get_running_loop()
    async with (
        running(source),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as c,
    ):
        assert (await c.post("/trigger", json={"n": 0})).status_code == 200

        # Posts in flight while the server dies, and posts after: none may hang or get 200
        # without a PubAck.
        async def post(n: int) -> tuple[int, float, httpx.Response]:
            t0 = loop.time()
            r = await c.post("/trigger", json={"n": n})
            return r.status_code, loop.time() - t0, r

        inflight = [asyncio.create_task(post(i)) for i in range(1, 20)]
        nats_server.kill()
        results = await asyncio.gather(*inflight)
        after = [await post(100 + i) for i in range(3)]
        for status, seconds, r in [*results, *after]:
            assert status in (200, 503)
            assert seconds < 5.0, "a request hung while the bus was down"
            if status == 503:
                assert r.headers["retry-after"]
        assert [s for s, _, _ in after] == [503, 503, 503]
        assert (await c.get("/health")).status_code == 200  # the source itself is up

        nats_server.start()
        got, consumer = None, None
        for _ in range(200):
            status, _, _ = await post(200)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200, "posts did not succeed again after the bus came back"
        try:
            got, consumer = await consume_into(bus, "default.webhook.trigger", "wh-after")
            r = await c.post("/trigger", json={"n": 300})
            assert r.status_code == 200
            await wait_until(lambda: any(m.event.data["body"] == {"n": 300} for m in got))
        finally:
            if consumer is not None:
                consumer.cancel()


async def test_run_stops_cleanly_on_cancel_and_frees_the_port(bus: Bus) -> None:
    port = free_port()
    source = make_source(bus, {"trigger": cfg(port)})
    assert not source.ready()
    async with running(source) as task, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        assert (await c.post("/trigger", json={})).status_code == 200
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert not source.ready()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


async def test_in_flight_request_finishes_when_stopped(bus: Bus) -> None:
    port = free_port()
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow_publish(event: Event) -> None:
        entered.set()
        await gate.wait()
        await bus.publish("default", event)

    source = WebhookSource(
        "webhook",
        "argo-events",
        {"trigger": cfg(port)},
        SourceContext(publish=slow_publish, secrets=NoSecrets(), bind_host="127.0.0.1"),
    )
    async with running(source) as task, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        request = asyncio.create_task(c.post("/trigger", json={}))
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        await asyncio.sleep(0.2)
        gate.set()
        r = await asyncio.wait_for(request, 10)
        assert (r.status_code, r.text) == (200, "success")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def test_port_in_use_is_a_transient_error(bus: Bus) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        source = make_source(bus, {"trigger": cfg(port)})
        with pytest.raises(TransientError, match=f"127.0.0.1:{port}"):
            await asyncio.wait_for(source.run(), 5)
        assert not source.ready()


async def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_oversized_bodies_are_refused_over_the_wire(bus: Bus) -> None:
    port = free_port()
    source = make_source(bus, {"trigger": cfg(port, maxPayloadSize=1024)})
    async with running(source):
        # Declared too large: answered before the body is read (no 100-continue wait).
        declared = await _raw_request(
            port,
            b"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
            [],
        )
        assert declared.startswith(b"HTTP/1.1 413 ")
        assert b"100 Continue" not in declared
        # Chunked: the streamed bytes are counted.
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        streamed = await _raw_request(
            port,
            b"POST /trigger HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            [chunk, chunk, b"0\r\n\r\n"],
        )
        assert streamed.startswith(b"HTTP/1.1 413 ")


async def test_rejected_expect_continue_request_gets_its_answer_and_a_close(bus: Bus) -> None:
    port = free_port()
    source = make_source(
        bus,
        {"trigger": cfg(port, authSecret={"name": "t", "key": "k"})},
        secrets=PemSecrets({"k": "token"}),
    )
    async with running(source):
        answer = await _raw_request(
            port,
            b"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
            b"Expect: 100-continue\r\n\r\n",
            [],
        )  # returns only because the server closes the connection
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"100 Continue" not in answer


def _self_signed() -> tuple[str, str]:
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


async def test_tls_port_serves_https(bus: Bus, tmp_path: Any) -> None:
    cert_pem, key_pem = _self_signed()
    ca = tmp_path / "ca.pem"
    ca.write_text(cert_pem)
    port = free_port()
    source = make_source(
        bus,
        {
            "secure": cfg(
                port,
                "/secure",
                serverCertSecret={"name": "tls", "key": "crt"},
                serverKeySecret={"name": "tls", "key": "key"},
            )
        },
        secrets=PemSecrets({"crt": cert_pem, "key": key_pem}),
    )
    verify = ssl.create_default_context(cafile=str(ca))
    async with (
        running(source),
        httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=verify) as c,
    ):
        r = await c.post("/secure", json={"a": 1})
        assert (r.status_code, r.text) == (200, "success")
