"""Ingest benchmark: how fast the webhook source turns HTTP POSTs into durable events.

One run measures, against a real embedded ``nats-server`` (JetStream, file store, in a
temp dir, 127.0.0.1 only):

(a) webhook POST → 200, where 200 is sent only after the JetStream PubAck: the
    :class:`eventsources.webhook.WebhookSource` on a real port, publishing through
    :class:`app.adapters.bus.Bus` (server and bus client in one process, as in production);
(b) a bare uvicorn ASGI app answering 200 to the same POST, same server settings: the
    ceiling any Python webhook can reach here;
(c) raw JetStream publish + awaited PubAck from Python with nats-py, one at a time per
    publisher, ``--concurrency`` publishers at once: the ceiling the bus client sets.

and prints rate, p50/p99 latency, CPU time per operation of the measured process and
of nats-server, the ratios webhook/bare and webhook/raw, and a durability check (every
200 is in the stream). A breakdown follows: the webhook with a publish that returns at
once (HTTP + event building only) and ``publish_async`` with each PubAck future awaited
(nats-py's other per-message path); ``--batching`` adds JetStream atomic batches.

HTTP load comes from a separate process (``wrk`` when installed, else a Python client;
see :mod:`bench._common`). Every server runs in its own child process on uvloop and is
stopped by PID. Usage::

    python -m bench.ingest [--seconds 10] [--concurrency 64] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.adapters.bus import StreamLimits
from app.adapters.natsserver import EmbeddedNats
from app.kernel.events import Event
from bench._common import (
    Child,
    LoadResult,
    cpu_seconds,
    free_port,
    have_wrk,
    one_kb_json,
    percentile,
    run_http_load,
    run_loop,
    run_python_load,
    run_wrk,
)

BUS = "default"
BENCH_LIMITS = StreamLimits(discard_new=False)
"""The runs share one stream and can outgrow its 1M-message limit; dropping the oldest
keeps later runs measuring throughput, not a full stream (the durability check covers
run (a), which starts on an empty stream)."""
SOURCE = "bench"
EVENT = "ingest"
SUBJECT = f"{BUS}.{SOURCE}.{EVENT}"


# -- child roles -------------------------------------------------------------------------


class _CountingMetrics:
    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0

    def event_sent(self, source: str, event_name: str) -> None:
        self.sent += 1

    def event_send_failed(self, source: str, event_name: str) -> None:
        self.failed += 1

    def event_filtered(self, source: str, event_name: str) -> None:
        pass

    def http_request(self, source: str, status: int) -> None:
        pass


class _NoSecrets:
    async def get(self, namespace: str, name: str, key: str) -> str:
        raise KeyError(name)


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_webhook(port: int, nats_url: str) -> None:
    """Role ``webhook`` / ``webhook-null``: the real source (``nats_url`` empty = no bus)."""
    from app.adapters.bus import Bus
    from app.kernel.settings import BusSettings
    from eventsources.base import SourceContext
    from eventsources.webhook import WebhookConfig, WebhookSource

    bus: Bus | None = None
    if nats_url:
        bus = Bus(BusSettings(), nats_url)
        await bus.connect()
        await bus.ensure_stream(BUS, BENCH_LIMITS)
        publish = functools.partial(bus.publish, BUS)
    else:

        async def publish(event: Event) -> None:
            return None

    metrics = _CountingMetrics()
    source = WebhookSource(
        SOURCE,
        "default",
        {EVENT: WebhookConfig(port=str(port), endpoint=f"/{EVENT}")},
        SourceContext(
            publish=publish, secrets=_NoSecrets(), metrics=metrics, bind_host="127.0.0.1"
        ),
    )
    task = asyncio.create_task(source.run())
    while not source.ready():
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await _until_sigterm()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if bus is not None:
        await bus.close()


async def _serve_bare(port: int) -> None:
    """Role ``bare``: the smallest ASGI app that reads the body and answers 200."""
    import socket

    import uvicorn

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"7")],
    }
    body = {"type": "http.response.body", "body": b"success", "more_body": False}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        await send(start)
        await send(body)

    config = uvicorn.Config(
        app,
        http="httptools",
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await task  # uvicorn handles SIGTERM itself here


def _event_payload() -> bytes:
    """A CloudEvent shaped and sized like the webhook's (~1.3 KB)."""
    data = {
        "header": {
            "Content-Type": ["application/json"],
            "Content-Length": ["1024"],
            "User-Agent": ["wrk"],
        },
        "body": json.loads(one_kb_json()),
        "metadata": {},
    }
    return Event(
        id=uuid.uuid4().hex, source=SOURCE, subject=EVENT, type="webhook", data=data
    ).to_json()


class _AtomicBatcher:
    """Experimental: every publish of one loop tick goes out as one JetStream atomic batch.

    Each caller still waits for a PubAck that covers its own message (the batch's commit
    ack), so per-event durability is kept. Needs a stream with ``allow_atomic``
    (nats-server 2.12+). Caveat found while measuring: a ``Nats-Msg-Id`` seen before
    (a client retry) makes the server reject the *whole* batch (err_code 10201), so a
    real adapter would have to fall back to single publishes on that error.
    """

    MAX_BATCH = 1000  # nats-server's default jetstream.limits.batch.max_msgs

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._inbox = ""
        self._seq = 0
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Any) -> None:
        futures = self._waiters.pop(msg.subject, [])
        failed = b'"error"' in msg.data
        for f in futures:
            if not f.done():
                if failed:
                    f.set_exception(RuntimeError(msg.data.decode()))
                else:
                    f.set_result(None)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((msg_id, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush_soon, subject, payload)
        await asyncio.wait_for(future, 5.0)

    def _flush_soon(self, subject: str, payload: bytes) -> None:
        task = asyncio.ensure_future(self._flush(subject, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, subject: str, payload: bytes) -> None:
        batch, self._pending = self._pending, []
        for i in range(0, len(batch), self.MAX_BATCH):
            chunk = batch[i : i + self.MAX_BATCH]
            self._seq += 1
            reply = f"{self._inbox}.{self._seq}"
            self._waiters[reply] = [f for _, f in chunk]
            batch_id = uuid.uuid4().hex
            for n, (msg_id, _) in enumerate(chunk, 1):
                headers = {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(n),
                    "Nats-Msg-Id": msg_id,
                }
                last = n == len(chunk)
                if last:
                    headers["Nats-Batch-Commit"] = "1"
                await self._nc.publish(
                    subject, payload, reply=reply if last else "", headers=headers
                )


async def _publish_bench(nats_url: str, seconds: float, concurrency: int, mode: str) -> None:
    """Role ``publish``: ``concurrency`` publishers, each awaiting its PubAck in turn.

    ``mode`` ``js``: ``js.publish`` (a request per message, what ``Bus.publish`` does);
    ``async``: ``js.publish_async`` and await that message's PubAck future;
    ``atomic``: :class:`_AtomicBatcher` on a stream of its own with ``allow_atomic``.
    """
    import nats

    nc = await nats.connect(nats_url, pending_size=8 * 1024 * 1024)
    js = nc.jetstream(timeout=5.0, publish_async_max_pending=max(4000, concurrency * 4))
    payload = _event_payload()
    latencies: list[float] = []
    errors = 0
    subject = SUBJECT
    batcher: _AtomicBatcher | None = None
    if mode == "atomic":
        subject = "atomicbench.ingest"
        config = {
            "name": "atomicbench",
            "subjects": ["atomicbench.>"],
            "storage": "file",
            "allow_atomic": True,
            "duplicate_window": 300 * 10**9,
        }
        await nc.request("$JS.API.STREAM.CREATE.atomicbench", json.dumps(config).encode(), 5)
        batcher = _AtomicBatcher(nc)
        await batcher.start()
    tools = {"js": "publish", "async": "publish_async", "atomic": "atomic batches"}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while (t0 := time.perf_counter()) < deadline:
            msg_id = uuid.uuid4().hex
            try:
                if batcher is not None:
                    await batcher.publish(subject, payload, msg_id)
                elif mode == "js":
                    await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
                else:
                    fut = await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
                    await asyncio.wait_for(fut, 5.0)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    t_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    await nc.close()
    latencies.sort()
    result = {
        "cpu_us_per_op": cpu / len(latencies) * 1e6 if latencies else 0.0,
        "tool": f"nats-py {tools[mode]} x{concurrency}",
        "ops": len(latencies),
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }
    print("PUBJSON " + json.dumps(result), flush=True)


async def _stream_messages(nats_url: str) -> int:
    import nats

    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(BUS, subjects_filter=SUBJECT)
        return int(info.state.messages)
    finally:
        await nc.close()


# -- orchestration -----------------------------------------------------------------------


def _serve_child(role: str, port: int, nats_url: str, tmp: Path) -> Child:
    args = [sys.executable, "-m", "bench.ingest", "--role", role, "--port", str(port)]
    child = Child([*args, "--nats-url", nats_url], tmp / f"{role}.log")
    child.wait_line("READY")
    return child


def _nats_cpu(nats: EmbeddedNats | None) -> float:
    return cpu_seconds(nats.process.pid) if nats and nats.process else 0.0


def _http_run(
    label: str,
    role: str,
    nats: EmbeddedNats | None,
    args: argparse.Namespace,
    tmp: Path,
    rate: float = 0.0,
) -> tuple[LoadResult, int]:
    """One HTTP server child under load (closed loop, or paced at ``rate``: wrk with a
    per-connection delay, else the Python client open loop); returns the result and the
    events it stored."""
    port = free_port()
    child = _serve_child(role, port, nats.url if nats else "", tmp)
    stored = 0
    try:
        url = f"http://127.0.0.1:{port}/{EVENT}"
        body = one_kb_json()
        if args.warmup_seconds > 0:
            run_http_load("warmup", url, body, args.warmup_seconds, args.concurrency, args.client)
        before = run_loop(_stream_messages(nats.url)) if nats else 0
        cpu0, nats_cpu0 = child.cpu_seconds(), _nats_cpu(nats)
        if rate > 0 and args.client == "wrk":
            result = run_wrk(label, url, body, args.seconds, args.concurrency, rate=rate)
        elif rate > 0:
            result = run_python_load(label, url, body, args.seconds, args.concurrency, rate)
        else:
            result = run_http_load(label, url, body, args.seconds, args.concurrency, args.client)
        if result.ops:
            result.cpu_us_per_op = (child.cpu_seconds() - cpu0) / result.ops * 1e6
            result.nats_cpu_us_per_op = (_nats_cpu(nats) - nats_cpu0) / result.ops * 1e6
    finally:
        child.stop()
    if nats:
        stored = run_loop(_stream_messages(nats.url)) - before
    return result, stored


def _publish_run(
    label: str, nats: EmbeddedNats, args: argparse.Namespace, tmp: Path, mode: str
) -> LoadResult:
    """The publish child: ``--concurrency`` publishers for ``--seconds``."""
    child = Child(
        [
            *(sys.executable, "-m", "bench.ingest", "--role", "publish"),
            *("--publish-mode", mode, "--nats-url", nats.url),
            *("--seconds", str(args.seconds), "--concurrency", str(args.concurrency)),
        ],
        tmp / f"publish-{mode}.log",
    )
    nats_cpu0 = _nats_cpu(nats)
    try:
        line = child.wait_line("PUBJSON ", timeout_seconds=args.seconds + 60)
    finally:
        child.stop()
    result = LoadResult(label=label, **json.loads(line[len("PUBJSON ") :]))
    if result.ops:
        result.nats_cpu_us_per_op = (_nats_cpu(nats) - nats_cpu0) / result.ops * 1e6
    return result


def _fmt(r: LoadResult) -> str:
    cpu = f"cpu {r.cpu_us_per_op:5.1f} µs/op" if r.cpu_us_per_op else " " * 16
    ncpu = f" + nats {r.nats_cpu_us_per_op:4.1f}" if r.nats_cpu_us_per_op else ""
    err = f"  ERRORS {r.errors}" if r.errors else ""
    return (
        f"{r.label:<40} {r.rate:>8,.0f}/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
        f"{cpu}{ncpu:<14} [{r.tool}, {r.ops:,} ops]{err}"
    )


def orchestrate(args: argparse.Namespace) -> int:
    """Start the bus, run (a), (b), (c) and the breakdown, print the figures."""
    logging.getLogger("app.adapters.bus").setLevel(logging.ERROR)  # connect/close chatter
    if args.client == "auto":
        args.client = "wrk" if have_wrk() else "python"
    breakdown: list[LoadResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        nats = EmbeddedNats(store_dir=tmp / "nats")
        nats.start()
        try:
            run_loop(_ensure_stream(nats.url))
            a, stored = _http_run("(a) webhook POST -> PubAck -> 200", "webhook", nats, args, tmp)
            b, _ = _http_run("(b) bare uvicorn ASGI app, 200", "bare", None, args, tmp)
            c = _publish_run("(c) raw JetStream publish + PubAck", nats, args, tmp, "js")
            half, _ = _http_run(
                "(a/2) webhook, paced at half of (a)", "webhook", nats, args, tmp, a.rate / 2
            )
            if not args.no_breakdown:
                n, _ = _http_run(
                    "  webhook, publish returns at once", "webhook-null", None, args, tmp
                )
                d = _publish_run("  publish_async, each PubAck awaited", nats, args, tmp, "async")
                breakdown = [n, d]
                if args.batching:
                    label = "  atomic batch per tick, commit awaited"
                    breakdown.append(_publish_run(label, nats, args, tmp, "atomic"))
        finally:
            nats.stop()

    print(
        f"ingest: {args.seconds:g} s per run, {args.concurrency} concurrent clients/publishers, "
        f"1 KB JSON, HTTP load from {args.client} (separate process), 127.0.0.1, "
        f"{os.cpu_count()} CPUs"
    )
    for r in (a, b, c, half):
        print(_fmt(r))
    print(f"webhook / bare ASGI   = {a.rate / b.rate:.2f}" if b.rate else "webhook / bare: n/a")
    print(f"webhook / raw publish = {a.rate / c.rate:.2f}" if c.rate else "webhook / raw: n/a")
    # Every 200 must be in the stream; requests cut off at the end may add a few more.
    ok = stored >= a.ops and a.errors == 0
    print(
        f"durability check: {stored:,} events stored during (a) for {a.ops:,} answers 200, "
        f"{a.errors} failed requests: {'ok' if ok else 'FAILED'}"
    )
    if breakdown:
        print("breakdown:")
        for r in breakdown:
            print(_fmt(r))
    if args.json:
        results = {"webhook": a, "bare": b, "raw_publish": c, "webhook_half_rate": half}
        out: dict[str, Any] = {k: v.as_dict() for k, v in results.items()}
        out["breakdown"] = [r.as_dict() for r in breakdown]
        out["stored"] = stored
        print("JSON " + json.dumps(out))
    return 0 if ok else 1


async def _ensure_stream(nats_url: str) -> None:
    from app.adapters.bus import Bus
    from app.kernel.settings import BusSettings

    bus = Bus(BusSettings(), nats_url)
    await bus.connect()
    try:
        await bus.ensure_stream(BUS, BENCH_LIMITS)
    finally:
        await bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each timed run")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients/publishers")
    p.add_argument(
        "--warmup-seconds", type=float, default=1.0, help="untimed load before each HTTP run"
    )
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-breakdown", action="store_true", help="only the three main figures")
    p.add_argument(
        "--batching",
        action="store_true",
        help="also measure JetStream atomic batch publishing (experimental, see README)",
    )
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    # internal: the child processes
    p.add_argument(
        "--role", choices=["webhook", "webhook-null", "bare", "publish"], help=argparse.SUPPRESS
    )
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--nats-url", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--publish-mode", choices=["js", "async", "atomic"], default="js", help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.role in ("webhook", "webhook-null"):
        run_loop(_serve_webhook(args.port, args.nats_url if args.role == "webhook" else ""))
        return 0
    if args.role == "bare":
        run_loop(_serve_bare(args.port))
        return 0
    if args.role == "publish":
        run_loop(_publish_bench(args.nats_url, args.seconds, args.concurrency, args.publish_mode))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
