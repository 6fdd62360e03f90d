"""A seeded slice of ``bench.fuzz`` in the test suite: hostile requests over real sockets.

The webhook source on a real port publishes to a real nats-server; a few hundred
requests from :class:`bench.fuzz.Fuzzer` (the same generator ``python -m bench.fuzz``
drives 100,000 times against ``triggerfish run``) must each get 200 or a documented
4xx, the port must still serve afterwards, and exactly the requests answered
``success`` must be in the stream, each a CloudEvent every consumer can decode.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from app.adapters.bus import Bus
from app.kernel.events import Event
from bench.fuzz import MAX_PAYLOAD, TOKEN, Case, Fuzzer, fire, send_one
from eventsources.base import SourceContext
from eventsources.webhook import WebhookSource
from tests.support.net import free_port
from tests.test_webhook_bus import PemSecrets, cfg, consume_into, running, wait_until


@pytest.mark.parametrize("seed", [1, 2])
async def test_hostile_requests_get_the_contract(bus: Bus, seed: int) -> None:
    port = free_port()

    async def publish(event: Event) -> None:
        await bus.publish("default", event)

    source = WebhookSource(
        "fuzz",
        "argo-events",
        {
            "trigger": cfg(port, maxPayloadSize=MAX_PAYLOAD),
            "secure": cfg(
                port, "/secure", maxPayloadSize=MAX_PAYLOAD, authSecret={"name": "t", "key": "k"}
            ),
        },
        SourceContext(publish=publish, secrets=PemSecrets({"k": TOKEN}), bind_host="127.0.0.1"),
    )
    stored, consumer = await consume_into(bus, "default.fuzz.>", f"fuzz-{seed}")
    try:
        async with running(source):
            tally = await fire(port, Fuzzer(seed), count=300, concurrency=8)
            assert tally.unexpected == [], tally.statuses
            assert tally.sent == 300
            plain = Fuzzer(0).request(b'{"after": true}')
            assert (await send_one(port, Case("plain", plain)))[0] == "200"
        await wait_until(lambda: len(stored) >= tally.successes + 1)
        await asyncio.sleep(0.2)
        assert len(stored) == tally.successes + 1
        for message in stored:
            assert Event.from_json(message.event.to_json()).id == message.event.id
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
