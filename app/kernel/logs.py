"""Logging set-up: one readable line per event by default, JSON lines on request.

``TRIGGERFISH_LOG_FORMAT=json`` gives structured lines (``time``, ``level``,
``logger``, ``message`` and any ``extra`` fields) for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


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
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
