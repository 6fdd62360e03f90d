"""Webhook event source (``spec.webhook``): HTTP endpoints that publish each request.

(Server implementation in progress; the config model below is the contract.)
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from app.spec import SpecModel
from eventsources.base import EventSourcePlugin
from eventsources.common import EventSourceFilter, SecretKeySelector

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


class WebhookConfig(SpecModel):
    """One webhook event (Argo ``WebhookEventSource``: ``WebhookContext`` + ``filter``)."""

    endpoint: str
    method: str = "POST"
    port: str
    url: str = ""
    server_cert_secret: SecretKeySelector | None = None
    server_key_secret: SecretKeySelector | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    auth_secret: SecretKeySelector | None = None
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_BYTES
    filter: EventSourceFilter | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_starts_with_slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("endpoint must start with '/'")
        return v

    @field_validator("port")
    @classmethod
    def _port_is_number(cls, v: str) -> str:
        if not v.isdigit() or not 0 < int(v) < 65536:
            raise ValueError(f"port must be a number between 1 and 65535, got {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method_upper(cls, v: str) -> str:
        v = v.upper()
        if v not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}:
            raise ValueError(f"unsupported HTTP method {v!r}")
        return v

    @field_validator("max_payload_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("maxPayloadSize must be positive")
        return v


class WebhookSource(EventSourcePlugin[WebhookConfig]):
    """Serves every webhook event of one EventSource, one HTTP server per port."""

    type_name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[SpecModel]] = WebhookConfig

    async def run(self) -> None:
        raise RuntimeError("webhook server is being written")
