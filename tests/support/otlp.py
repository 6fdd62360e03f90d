"""A local OTLP/HTTP trace receiver on 127.0.0.1, for a real process's exported spans.

Point a ``triggerfish run`` at it with :attr:`OtlpReceiver.env`; every export request is
kept as sent (gzip undone), so a test can read the spans or scan the exact bytes.
"""

from __future__ import annotations

import gzip
import http.server
import threading
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class OtlpReceiver:
    """Receives OTLP/HTTP trace exports in a thread while the ``with`` block runs."""

    def __init__(self) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.bodies = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes a process export its spans here, promptly."""
        port = self._server.server_address[1]
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip

    @property
    def bodies(self) -> list[bytes]:
        """Every export request's body as received (decompressed)."""
        return list(self._server.bodies)  # type: ignore[attr-defined]

    def spans(self) -> list[Any]:
        """Every span received so far (``opentelemetry.proto`` ``Span`` messages)."""
        out = []
        for body in self.bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            out += [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return out

    def scannable(self, names: list[str]) -> str:
        """Everything received, as text to scan for values that must not be there: each
        request's bytes (span strings travel as they are) and each span printed. Fails
        unless spans named ``names`` and at least one failed span are among them, so a
        scan is known to have covered those steps and an error message."""
        spans = self.spans()
        assert set(names) <= {s.name for s in spans}, sorted({s.name for s in spans})
        assert any(s.status.message for s in spans), "no failed span was exported"
        raw = b"".join(self.bodies).decode("utf-8", "replace")
        return raw + "\n".join(str(s) for s in spans)
