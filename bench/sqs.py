"""SQS benchmark: how fast the sqs source turns queued messages into durable bus events.

One run starts a moto server (SQS over HTTP, ``python -m moto.server``) and an embedded
``nats-server`` (JetStream, file store in a temp dir), both on 127.0.0.1 only, and for
each ``--concurrency`` value measures, over ``--count`` 1 KB JSON messages:

(a) SQS -> JetStream: :class:`eventsources.sqs.SQSSource` (long-poll receive, publish
    through :class:`app.adapters.bus.Bus` with the PubAck awaited, DeleteMessageBatch after),
    timed from the source being ready until every message is a stored event; the time
    until the queue is empty (all deletes done) is printed beside it;
(b) the raw moto ceiling: the same number of receive loops doing ReceiveMessage(10) +
    DeleteMessageBatch with aiobotocore and nothing else: what the SQS side allows here.

moto slows down as its queue grows (every call scans the whole queue), so messages are
queued in rounds of ``--backlog`` and only the draining is timed, for (a) and (b) alike;
filling (SendMessageBatch) is timed and printed separately. SQS -> Workflow needs the
sensor runtime and is not measured here yet; the output says so.

Counts are bounded (``--count`` <= 20,000), every stage has a time limit, and both
servers are stopped by PID at the end (also on SIGTERM). Usage::

    python -m bench.sqs [--count 1000] [--backlog 100] [--concurrency 1,4] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats
from aiobotocore.session import AioSession

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.kernel.events import Event
from app.kernel.settings import BusSettings
from bench._common import one_kb_json
from eventsources.base import SourceContext
from eventsources.sqs import SQSConfig, SQSSource
from tests.sqs_fixtures import AWS_TEST_ENV, AWS_UNSET_ENV, MotoServer

REGION = "us-east-1"
BUS = "default"
SOURCE = "bench-sqs"
MAX_COUNT = 20_000
STAGE_LIMIT_SECONDS = 300.0
FILL_SENDERS = 4


@dataclass
class Result:
    """One timed stage: messages handled in ``seconds``."""

    label: str
    concurrency: int
    messages: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        note = f"   {self.note}" if self.note else ""
        return (
            f"{self.label:<46} c={self.concurrency:<3} {self.messages:>6,} msgs in "
            f"{self.seconds:7.2f}s = {self.rate:>7,.0f} msg/s{note}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1)}


async def _fill(client: Any, url: str, count: int, body: str) -> float:
    """SendMessageBatch ``count`` messages with a few concurrent senders; seconds taken."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in range(0, count, 10):
        queue.put_nowait(min(10, count - start))

    async def sender() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            resp = await client.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body} for i in range(n)]
            )
            if resp.get("Failed"):
                raise RuntimeError(f"send failed: {resp['Failed'][:1]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(FILL_SENDERS)))
    return time.perf_counter() - t0


async def _queued(client: Any, url: str) -> int:
    a = (
        await client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


async def _raw_drain(client: Any, url: str, count: int, concurrency: int) -> float:
    """Receive(10) + DeleteMessageBatch loops, nothing else; seconds to drain ``count``.

    Short polls, so a loop that finds the queue empty at the end of a round returns at
    once instead of holding a long poll open on moto into the next round.
    """
    done = 0
    finished = 0.0

    async def loop() -> None:
        nonlocal done, finished
        while done < count:
            resp = await client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=120
            )
            msgs = resp.get("Messages") or []
            if not msgs:
                continue
            await client.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)
                ],
            )
            done += len(msgs)
            if done >= count and not finished:
                finished = time.perf_counter()

    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(loop() for _ in range(concurrency))), STAGE_LIMIT_SECONDS
    )
    return finished - t0


async def _stream_messages(nc: Any) -> int:
    info = await nc.jetstream().stream_info(BUS)
    return int(info.state.messages)


class _NoSecrets:
    async def get(self, namespace: str, name: str, key: str) -> str:
        raise KeyError(name)


async def _source_drain(
    client: Any, bus: Bus, nc: Any, endpoint: str, queue: str, url: str, count: int, conc: int
) -> tuple[float, float]:
    """SQSSource on a backlog of ``count``: seconds until all stored, until queue empty."""
    before = await _stream_messages(nc)

    async def publish(event: Event) -> None:
        await bus.publish(BUS, event)

    cfg = SQSConfig.model_validate(
        {
            "region": REGION,
            "queue": queue,
            "endpoint": endpoint,
            "waitTimeSeconds": 1,
            "jsonBody": True,
            "concurrency": conc,
        }
    )
    ctx = SourceContext(
        publish=publish, secrets=_NoSecrets(), log=logging.getLogger("bench.sqs.source")
    )
    source = SQSSource(SOURCE, "bench", {queue: cfg}, ctx)
    task = asyncio.create_task(source.run())
    try:
        deadline = time.monotonic() + 30
        while not source.ready():
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("sqs source not ready")
            await asyncio.sleep(0.002)
        t0 = time.perf_counter()
        limit = t0 + STAGE_LIMIT_SECONDS
        while await _stream_messages(nc) - before < count:
            if time.perf_counter() > limit:
                raise TimeoutError(f"stage limit: {await _stream_messages(nc) - before} stored")
            await asyncio.sleep(0.01)
        stored_at = time.perf_counter()
        # Polled slowly: every attribute read makes moto scan the queue.
        while await _queued(client, url):
            if time.perf_counter() > limit:
                raise TimeoutError("stage limit: queue not empty")
            await asyncio.sleep(0.05)
        drained_at = time.perf_counter()
        stored = await _stream_messages(nc) - before
        if stored != count:
            raise RuntimeError(f"{stored} events stored for {count} messages")
        return stored_at - t0, drained_at - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _bench(
    endpoint: str, nats_url: str, count: int, backlog: int, concurrencies: list[int]
) -> list[Result]:
    body = one_kb_json().decode()
    rounds = [min(backlog, count - start) for start in range(0, count, backlog)]
    results: list[Result] = []
    bus = Bus(BusSettings(), nats_url)
    await bus.connect()
    await bus.ensure_stream(BUS)
    nc = await nats.connect(nats_url)
    try:
        async with AioSession().create_client(
            "sqs", region_name=REGION, endpoint_url=endpoint
        ) as client:
            for conc in concurrencies:
                raw_url = (await client.create_queue(QueueName=f"raw-c{conc}"))["QueueUrl"]
                fill = raw = 0.0
                for n in rounds:
                    fill += await _fill(client, raw_url, n, body)
                    raw += await _raw_drain(client, raw_url, n, conc)
                results.append(
                    Result(
                        "moto SendMessageBatch (filling; not in a or b)", FILL_SENDERS, count, fill
                    )
                )
                results.append(Result("(b) raw moto receive(10)+delete ceiling", conc, count, raw))

                queue = f"src-c{conc}"
                src_url = (await client.create_queue(QueueName=queue))["QueueUrl"]
                stored = drained = 0.0
                for n in rounds:
                    await _fill(client, src_url, n, body)
                    s, d = await _source_drain(client, bus, nc, endpoint, queue, src_url, n, conc)
                    stored += s
                    drained += d
                results.append(
                    Result(
                        "(a) SQS -> JetStream (SQSSource + Bus PubAck)",
                        conc,
                        count,
                        stored,
                        note=f"queue empty after {drained:.2f}s",
                    )
                )
    finally:
        await nc.close()
        await bus.close()
    return results


async def _triggered(api_port: int) -> int:
    """Triggers done so far, from the Triggerfish process's /metrics."""
    import httpx

    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(f"http://127.0.0.1:{api_port}/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("argo_events_action_triggered_total{")
        )
    )


async def _workflow_bench(endpoint: str, api_port: int, count: int, backlog: int) -> Result:
    """(c) SQS → sensor → Workflow created, through a real ``triggerfish run``."""
    body = one_kb_json().decode()
    total = 0.0
    done = 0
    async with AioSession().create_client("sqs", region_name=REGION, endpoint_url=endpoint) as c:
        url = (await c.get_queue_url(QueueName="training-requests"))["QueueUrl"]
        for start in range(0, count, backlog):
            n = min(backlog, count - start)
            await _fill(c, url, n, body)
            t0 = time.perf_counter()
            deadline = t0 + STAGE_LIMIT_SECONDS
            while await _triggered(api_port) < done + n and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            total += time.perf_counter() - t0
            done += n
    return Result("(c) SQS -> Workflow (triggerfish run, fake k8s API)", 1, count, total)


def _run_workflow_stage(tmp: Path, endpoint: str, count: int, backlog: int) -> Result:
    import boto3
    import yaml

    from tests.fakekube.harness import KubeApi
    from tests.fakekube.process import FakeKubeServer
    from tests.support.proc import Triggerfish

    boto3.client("sqs", region_name=REGION, endpoint_url=endpoint).create_queue(
        QueueName="training-requests"
    )
    manifests = tmp / "sqs-training"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "sqs-training", manifests)
    es_path = manifests / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    es["spec"]["sqs"]["training"].update({"endpoint": endpoint, "waitTimeSeconds": 1})
    es_path.write_text(yaml.safe_dump(es))
    server = FakeKubeServer(log_dir=tmp / "kube")
    server.start()
    kube = KubeApi(server, tmp)
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp / "tf", kubeconfig=str(kube.kubeconfig))
    try:
        tf.start()
        return asyncio.run(_workflow_bench(endpoint, tf.api_port, count, backlog))
    finally:
        tf.stop()
        kube.close()
        server.stop()


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks that stop the servers


def orchestrate(args: argparse.Namespace) -> int:
    count = max(10, min(args.count, MAX_COUNT))
    backlog = max(10, min(args.backlog, count))
    concurrencies = [max(1, min(int(c), 64)) for c in args.concurrency.split(",") if c.strip()]
    for name in AWS_UNSET_ENV:
        os.environ.pop(name, None)
    os.environ.update(AWS_TEST_ENV)  # dummy keys: moto accepts any, AWS is never asked
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, _sigterm)
    with tempfile.TemporaryDirectory(prefix="bench-sqs-") as tmp_name:
        tmp = Path(tmp_name)
        moto = MotoServer(log_path=tmp / "moto.log")
        nats_server = EmbeddedNats(store_dir=tmp / "nats")
        try:
            moto.start()
            nats_server.start()
            results = asyncio.run(
                _bench(moto.endpoint, nats_server.url, count, backlog, concurrencies)
            )
            results.append(_run_workflow_stage(tmp, moto.endpoint, count, backlog))
        finally:
            nats_server.stop()
            moto.stop()

    print(
        f"sqs: {count:,} messages of 1 KB JSON per run, queued in rounds of {backlog}, "
        f"moto server + nats-server (JetStream, file store) on 127.0.0.1; "
        f"source with jsonBody: true, waitTimeSeconds: 1"
    )
    for r in results:
        print(r.line())
    for conc in concurrencies:
        a = next((r for r in results if r.concurrency == conc and r.label.startswith("(a)")), None)
        b = next((r for r in results if r.concurrency == conc and r.label.startswith("(b)")), None)
        if a and b and b.rate:
            print(f"c={conc}: SQS -> JetStream / raw moto ceiling = {a.rate / b.rate:.2f}")
    c = next((r for r in results if r.label.startswith("(c)")), None)
    b1 = next((r for r in results if r.concurrency == 1 and r.label.startswith("(b)")), None)
    if c and b1 and b1.rate:
        print(f"SQS -> Workflow / raw moto ceiling (c=1) = {c.rate / b1.rate:.2f}")
    if args.json:
        print("JSON " + json.dumps([r.as_dict() for r in results]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sqs", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help=f"messages per run (<= {MAX_COUNT})")
    p.add_argument("--backlog", type=int, default=100, help="messages queued per timed round")
    p.add_argument(
        "--concurrency", default="1,4", help="comma-separated receive-loop counts to measure"
    )
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    return orchestrate(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
