"""AMQP 1.0 message sections as raw bytes: split, batch-unpack, and re-assemble.

The fake broker stores what a client sent as the encoded sections it arrived in, so a
message goes back out byte for byte as the SDK encoded it; only the sections a broker
owns (header and message annotations) are rebuilt on every delivery. proton's ``Data``
does the encoding and decoding of single values; nothing here speaks to a socket.

An SDK batch arrives as ONE transfer whose body holds one encoded message per Data
section (message format ``0x80013700``). proton's Python API does not expose a transfer's
message format, so :func:`split_batch` recognises a batch by its shape instead: every
body section is a Data section that itself decodes completely into message sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proton import Data, Described, symbol, timestamp, ubyte, uint, ulong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

_SECTION_CODES = frozenset(range(HEADER, FOOTER + 1))
_BODY_CODES = frozenset({DATA, AMQP_SEQUENCE, AMQP_VALUE})


class AmqpDecodeError(ValueError):
    """Bytes that are not a sequence of AMQP message sections."""


@dataclass(frozen=True, slots=True)
class Section:
    """One message section: its descriptor code, its decoded value, its exact bytes."""

    code: int
    value: Any
    raw: bytes


def _plain(value: Any) -> Any:
    """Copy proton's buffer views out (binary values come back as memoryviews)."""
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def decode_sections(buf: bytes) -> list[Section]:
    """Split an encoded message into its sections; raise if anything is not a section."""
    out: list[Section] = []
    view = memoryview(buf)
    offset = 0
    while offset < len(view):
        data = Data()
        try:
            used = data.decode(bytes(view[offset:]))
        except Exception as e:  # proton raises DataException and friends
            raise AmqpDecodeError(f"undecodable bytes at offset {offset}: {e}") from e
        if used <= 0:
            raise AmqpDecodeError(f"no progress decoding at offset {offset}")
        data.rewind()
        data.next()
        obj = data.get_object()
        if not isinstance(obj, Described) or int(obj.descriptor) not in _SECTION_CODES:
            raise AmqpDecodeError(f"value at offset {offset} is not a message section")
        out.append(
            Section(int(obj.descriptor), _plain(obj.value), bytes(view[offset : offset + used]))
        )
        offset += used
    return out


def split_batch(sections: list[Section]) -> list[list[Section]] | None:
    """The inner messages of an SDK batch envelope, or None when this is one message."""
    body = [s for s in sections if s.code in _BODY_CODES]
    if not body or any(s.code != DATA for s in body):
        return None
    inner: list[list[Section]] = []
    for s in body:
        payload = s.value
        if not isinstance(payload, bytes | bytearray) or len(payload) < 3:
            return None
        if payload[0] != 0x00 or payload[1] != 0x53 or payload[2] not in _SECTION_CODES:
            return None
        try:
            parts = decode_sections(bytes(payload))
        except AmqpDecodeError:
            return None
        if not any(p.code in _BODY_CODES for p in parts):
            return None
        inner.append(parts)
    return inner


def encode_value(value: Any) -> bytes:
    """Encode one value with proton's type mapping (use proton wrappers for exact types)."""
    data = Data()
    data.put_object(value)
    return bytes(data.encode())


def encode_section(code: int, value: Any) -> bytes:
    """Encode a described section ``code`` holding ``value``."""
    return encode_value(Described(ulong(code), value))


@dataclass(slots=True)
class Header:
    """The AMQP header fields a broker keeps per message (``delivery_count`` is ours)."""

    durable: bool = False
    priority: int = 4
    ttl_ms: int | None = None

    @classmethod
    def from_section(cls, section: Section | None) -> Header:
        if section is None or not isinstance(section.value, list):
            return cls()
        fields = [*section.value, None, None, None]
        return cls(
            durable=bool(fields[0]) if fields[0] is not None else False,
            priority=int(fields[1]) if fields[1] is not None else 4,
            ttl_ms=int(fields[2]) if fields[2] is not None else None,
        )

    def encode(self, delivery_count: int) -> bytes:
        return encode_section(
            HEADER,
            [
                self.durable,
                ubyte(self.priority),
                uint(self.ttl_ms) if self.ttl_ms is not None else None,
                delivery_count == 0,
                uint(delivery_count),
            ],
        )


@dataclass(slots=True)
class ParsedMessage:
    """A client's message, taken apart into what the broker rewrites and what it keeps."""

    header: Header
    annotations: dict[Any, Any]
    properties: list[Any]
    application_properties: dict[Any, Any]
    kept: list[Section] = field(default_factory=list)

    @property
    def message_id(self) -> Any:
        return self.properties[0] if self.properties else None

    @classmethod
    def from_sections(cls, sections: list[Section]) -> ParsedMessage:
        header: Section | None = None
        annotations: dict[Any, Any] = {}
        properties: list[Any] = []
        app_props: dict[Any, Any] = {}
        kept: list[Section] = []
        for s in sections:
            if s.code == HEADER:
                header = s
            elif s.code == DELIVERY_ANNOTATIONS:
                continue  # hop-by-hop: never stored
            elif s.code == MESSAGE_ANNOTATIONS:
                annotations = dict(s.value or {})
            else:
                if s.code == PROPERTIES and isinstance(s.value, list):
                    properties = [_plain(v) for v in s.value]
                elif s.code == APPLICATION_PROPERTIES and isinstance(s.value, dict):
                    app_props = dict(s.value)
                kept.append(s)
        return cls(Header.from_section(header), annotations, properties, app_props, kept)

    def with_application_properties(self, extra: dict[str, Any]) -> ParsedMessage:
        """A copy whose application properties also carry ``extra`` (dead-letter reasons)."""
        props = {**self.application_properties, **extra}
        raw = encode_section(APPLICATION_PROPERTIES, props)
        new_section = Section(APPLICATION_PROPERTIES, props, raw)
        kept = [s for s in self.kept if s.code != APPLICATION_PROPERTIES]
        at = next((i for i, s in enumerate(kept) if s.code > APPLICATION_PROPERTIES), len(kept))
        kept.insert(at, new_section)
        return ParsedMessage(self.header, dict(self.annotations), self.properties, props, kept)

    def encode(self, delivery_count: int, broker_annotations: dict[str, Any]) -> bytes:
        """The bytes of one delivery: fresh header and annotations, the rest as sent."""
        annotations = dict(self.annotations)
        for key, value in broker_annotations.items():
            annotations[symbol(key)] = value
        out = bytearray(self.header.encode(delivery_count))
        out += encode_section(MESSAGE_ANNOTATIONS, annotations)
        for s in self.kept:
            out += s.raw
        return bytes(out)


def amqp_timestamp(epoch_seconds: float) -> timestamp:
    """An AMQP timestamp (milliseconds since the Unix epoch)."""
    return timestamp(int(epoch_seconds * 1000))
