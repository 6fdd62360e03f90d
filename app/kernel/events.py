"""The CloudEvents 1.0 envelope every event travels in on the bus (DESIGN §3).

Event sources build one :class:`Event` per upstream message; the bus adapter encodes it
as JSON (structured mode) and uses ``id`` as the ``Nats-Msg-Id`` dedup key; sensors
decode it back. ``data`` is the source-shaped payload (``{header, body, metadata}`` for
webhooks) that ``dataKey`` paths address.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.kernel import jsoncodec

SPEC_VERSION = "1.0"


def new_event_id() -> str:
    """A fresh event id: 32 lowercase hex characters (128 random bits)."""
    return os.urandom(16).hex()


def event_id_from(*parts: str) -> str:
    """A deterministic event id from upstream identity (message id, idempotency key).

    Redelivered upstream messages map to the same id, so JetStream's dedup window drops
    the second publish instead of creating a second event.
    """
    h = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return h[:32]


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with microseconds and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Event:
    """One event in CloudEvents 1.0 structured-mode form."""

    id: str
    source: str
    subject: str
    type: str
    data: Any
    time: str = field(default_factory=lambda: now_rfc3339())
    datacontenttype: str = "application/json"
    specversion: str = SPEC_VERSION
    traceparent: str = ""
    """W3C trace context (CloudEvents distributed-tracing extension); "" when unknown."""
    tracestate: str = ""

    def context(self) -> dict[str, str]:
        """The CloudEvents context attributes (what ``contextKey`` paths address)."""
        return {
            "id": self.id,
            "source": self.source,
            "subject": self.subject,
            "type": self.type,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "specversion": self.specversion,
        }

    def to_json(self) -> bytes:
        """Encode as a structured-mode CloudEvent (one JSON object), at any nesting depth
        the JSON parser accepts (:func:`app.kernel.jsoncodec.dumps`)."""
        envelope = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "subject": self.subject,
            "type": self.type,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
        }
        if self.traceparent:
            envelope["traceparent"] = self.traceparent
            if self.tracestate:
                envelope["tracestate"] = self.tracestate
        envelope["data"] = self.data
        return jsoncodec.dumps(envelope)

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        """Decode a structured-mode CloudEvent; raises ``ValueError`` on a bad envelope."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"event is not JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ValueError("event is not a JSON object")
        try:
            return cls(
                id=str(obj["id"]),
                source=str(obj["source"]),
                subject=str(obj.get("subject", "")),
                type=str(obj.get("type", "")),
                data=obj.get("data"),
                time=str(obj.get("time", "")),
                datacontenttype=str(obj.get("datacontenttype", "application/json")),
                specversion=str(obj.get("specversion", SPEC_VERSION)),
                traceparent=str(obj.get("traceparent") or ""),
                tracestate=str(obj.get("tracestate") or ""),
            )
        except KeyError as e:
            raise ValueError(f"event envelope is missing {e.args[0]!r}") from e
