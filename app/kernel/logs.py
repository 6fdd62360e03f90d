"""Logging set-up: one readable line per event by default, JSON lines on request.

``TRIGGERFISH_LOG_FORMAT=json`` gives structured lines (``time``, ``level``,
``logger``, ``message`` and any ``extra`` fields) for log shippers.

Secret values never reach a log line: the code never logs them, client libraries that
log request headers at debug level (botocore signs with the access key id, HTTP
clients, AMQP) stay at ``INFO`` or above even when Triggerfish logs at ``DEBUG``, and,
as a last line of defence, every value read through the secret resolver is registered
with :func:`register_secret` and replaced by ``[redacted]`` in every formatted line
(message, ``extra`` fields and tracebacks alike).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime

_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

REDACTED = "[redacted]"
_MIN_SECRET_CHARS = 4
"""Shorter values are not redacted: replacing every ``a`` would garble the log."""
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()

# Client libraries whose debug output carries request headers or credentials.
_QUIET: tuple[tuple[str, int], ...] = (
    ("uvicorn.access", logging.WARNING),
    ("nats", logging.WARNING),
    ("kubernetes", logging.WARNING),
    ("urllib3", logging.WARNING),
    ("botocore", logging.INFO),
    ("aiobotocore", logging.INFO),
    ("boto3", logging.INFO),
    ("azure", logging.INFO),
    ("uamqp", logging.INFO),
    ("aiohttp", logging.INFO),
    ("httpx", logging.INFO),
    ("httpcore", logging.INFO),
    ("hpack", logging.INFO),
    ("asyncio", logging.INFO),
)


def register_secret(value: str) -> None:
    """Redact ``value`` (and its form without surrounding whitespace) from every log line."""
    global _secrets
    found = {v for v in (value, value.strip()) if len(v) >= _MIN_SECRET_CHARS}
    if not found or found <= set(_secrets):
        return
    with _secrets_lock:
        # Longest first, so a secret containing another is replaced whole.
        _secrets = tuple(sorted(set(_secrets) | found, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret value replaced by :data:`REDACTED`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then :func:`redact` s the whole line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD:
                # objects that know their JSON shape (traces) are turned into it only
                # here, so text logging never pays for it
                to_dict = getattr(v, "to_dict", None)
                out[k] = to_dict() if callable(to_dict) else v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    inner = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    )
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, floor in _QUIET:
        logger = logging.getLogger(name)
        logger.setLevel(max(floor, root.level))
