"""Running a webhook-served source (slack, stripe, sns) on a real port against the bus.

The source gets its secrets from a dict, publishes to the real bus through a
:class:`~tests.support.brokers.CountingPublisher`, and is served on a free loopback port;
tests post to it with httpx and read the bus's stream directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.adapters.bus import Bus
from eventsources.base import EventSourcePlugin, SourceContext
from tests.support.brokers import CountingPublisher, running
from tests.support.net import free_port
from tests.support.sources import CountingMetrics, DictSecrets


@dataclass
class Served:
    """A running source: its base URL, a client for it, its metrics and publisher."""

    source: EventSourcePlugin[Any]
    url: str
    http: httpx.AsyncClient
    metrics: CountingMetrics
    publisher: CountingPublisher


@contextlib.asynccontextmanager
async def serving(
    cls: type[EventSourcePlugin[Any]],
    bus: Bus,
    events: dict[str, dict[str, Any]],
    secrets: dict[tuple[str, str], str],
    log: logging.Logger | None = None,
) -> AsyncIterator[Served]:
    """Run ``cls`` with ``events`` (each event's ``webhook.port`` set to one free port,
    ``{port}`` in its ``webhook.url`` replaced by that port)."""
    port = free_port()
    configs = {}
    for name, raw in events.items():
        webhook = {**raw["webhook"], "port": str(port)}
        if "url" in webhook:
            webhook["url"] = webhook["url"].replace("{port}", str(port))
        raw = {**raw, "webhook": webhook}
        configs[name] = cls.config_model.model_validate(raw)
    metrics = CountingMetrics()
    publisher = CountingPublisher(bus)
    ctx = SourceContext(
        publish=publisher,
        secrets=DictSecrets(secrets),
        metrics=metrics,
        log=log or logging.getLogger(f"test.{cls.type_name}"),
        bind_host="127.0.0.1",
    )
    source = cls("saas-source", "argo-events", configs, ctx)
    url = f"http://127.0.0.1:{port}"
    async with running(source), httpx.AsyncClient(base_url=url) as http:
        yield Served(source, url, http, metrics, publisher)
