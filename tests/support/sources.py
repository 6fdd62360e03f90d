"""Collaborators handed to event source plugins in tests: secrets from a dict, and
metrics that count what the source reported."""

from __future__ import annotations

from collections import Counter


class DictSecrets:
    """A SecretResolver over ``{(name, key): value}``, recording what was read."""

    def __init__(self, values: dict[tuple[str, str], str] | None = None) -> None:
        self.values = values or {}
        self.reads: list[tuple[str, str, str]] = []

    async def get(self, namespace: str, name: str, key: str) -> str:
        self.reads.append((namespace, name, key))
        return self.values[(name, key)]


class CountingMetrics:
    """SourceMetrics counting per (``sent`` | ``failed`` | ``filtered``, event name)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[int] = Counter()
        self.sources: set[str] = set()
        """Every source name an event count was made for."""

    def event_sent(self, source: str, event_name: str) -> None:
        self.sources.add(source)
        self.counts["sent", event_name] += 1

    def event_send_failed(self, source: str, event_name: str) -> None:
        self.sources.add(source)
        self.counts["failed", event_name] += 1

    def event_filtered(self, source: str, event_name: str) -> None:
        self.sources.add(source)
        self.counts["filtered", event_name] += 1

    def http_request(self, source: str, status: int) -> None:
        self.statuses[status] += 1
