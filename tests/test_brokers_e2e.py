"""Broker messages start training, end to end in real processes.

``triggerfish run`` on the project's ``examples/redis-stream-training`` and
``examples/amqp-training`` (pointed at a real redis-server and RabbitMQ), a real
JetStream and the fake Kubernetes API: 200 messages must start exactly 200 Workflows,
one per message, also when the bus is down while they arrive (nothing is acknowledged
upstream until it is back).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis
import yaml

from tests.broker_fixtures import RabbitPeer, RedisPeer
from tests.support.net import wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]
N = 200


def _copy_example(name: str, dst: Path, kind: str, patch: dict[str, Any]) -> Path:
    out = dst / name
    shutil.copytree(REPO / "examples" / name, out)
    es_path = out / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    es["spec"][kind]["training"].update(patch)
    es_path.write_text(yaml.safe_dump(es))
    return out


def _models(kube_api: Any) -> list[str]:
    return [params_of(w)["model"] for w in list_workflows(kube_api)]


def _exactly_one_each(kube_api: Any, tf: Triggerfish, n: int) -> None:
    want = {f"m{i}" for i in range(n)}
    wait_for(lambda: want <= set(_models(kube_api)), timeout=120, interval=0.5)
    time.sleep(1.0)  # let any redelivery land, so a duplicate would show
    assert sorted(_models(kube_api)) == sorted(want), tf.log()


def _acked(r: redis.Redis, stream: str, group: str) -> int:
    """Entries the group has acknowledged: delivered to it minus still pending."""
    info = next(g for g in r.xinfo_groups(stream) if g["name"].decode() == group)
    last = info["last-delivered-id"].decode()
    delivered = 0 if last == "0-0" else len(r.xrange(stream, min="-", max=last))
    return delivered - int(info["pending"])


@pytest.mark.slow
def test_redis_stream_entries_start_one_workflow_each_across_a_bus_outage(
    tmp_path: Path, kube_api: Any, redis_peer: RedisPeer, nats_server: Any
) -> None:
    manifests = _copy_example(
        "redis-stream-training", tmp_path, "redisStream", {"hostAddress": redis_peer.address}
    )
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig),
                     nats_url=nats_server.url).start()  # fmt: skip
    r = redis.Redis(host=redis_peer.host, port=redis_peer.port)
    try:
        nats_server.kill()
        for i in range(N):
            r.xadd("training-requests", {"model": f"m{i}", "dataset": "d"})
        time.sleep(3)
        assert _acked(r, "training-requests", "triggerfish-training") == 0, tf.log()
        assert _models(kube_api) == []
        nats_server.start()
        _exactly_one_each(kube_api, tf, N)
        wait_for(
            lambda: _acked(r, "training-requests", "triggerfish-training") == N,
            timeout=15,
            interval=0.2,
        )
    finally:
        tf.stop()
        r.close()


async def _publish_amqp(url: str, n: int) -> None:
    connection = await aio_pika.connect(url)
    try:
        exchange = await (await connection.channel()).get_exchange("training")
        for i in range(n):
            await exchange.publish(
                aio_pika.Message(
                    json.dumps({"model": f"m{i}", "dataset": "d"}).encode(),
                    message_id=f"r-{i}",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="train.gpu",
            )
    finally:
        await connection.close()


@pytest.mark.slow
def test_amqp_messages_start_one_workflow_each(
    tmp_path: Path, kube_api: Any, rabbitmq_peer: RabbitPeer
) -> None:
    manifests = _copy_example(
        "amqp-training",
        tmp_path,
        "amqp",
        {
            "url": f"amqp://{rabbitmq_peer.host}:{rabbitmq_peer.port}/",
            # A queue of this test's own on the session's broker.
            "queueDeclare": {"name": f"training-requests-{tmp_path.name}", "durable": True},
        },
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "rabbitmq-credentials", "namespace": "argo-events"},
        "stringData": {"username": "guest", "password": "guest"},
    }
    (manifests / "secret.yaml").write_text(yaml.safe_dump(secret))
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig)).start()  # fmt: skip
    try:
        asyncio.run(_publish_amqp(rabbitmq_peer.url, N))
        _exactly_one_each(kube_api, tf, N)
    finally:
        tf.stop()
