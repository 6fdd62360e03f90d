"""Process settings, grouped, loaded once from ``TRIGGERFISH_*`` environment variables.

Every field carries its unit in its name. Settings are built once at start-up
(:func:`load_settings`) and passed explicitly to the parts that need them; nothing reads
the environment later. Nested groups use a double underscore:
``TRIGGERFISH_BUS__PUBLISH_TIMEOUT_SECONDS=2``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.kernel.errors import ConfigError


class BusSettings(BaseModel):
    """How Triggerfish talks to NATS JetStream."""

    nats_url: str = Field("", description="NATS URL; empty starts an embedded nats-server")
    token: str = Field("", description="NATS auth token, when the bus uses token auth")
    connect_timeout_seconds: float = Field(5.0, description="first connection attempt")
    publish_timeout_seconds: float = Field(
        3.0, description="wait for a PubAck before answering 503 / not acking upstream"
    )
    duplicates_window_seconds: float = Field(
        300.0, description="JetStream dedup window (Nats-Msg-Id), EventBus default 5 min"
    )
    ack_wait_seconds: float = Field(
        30.0, description="redelivery delay for an unacked sensor message"
    )
    lag_poll_seconds: float = Field(
        5.0, description="how often the consumer-lag metrics of sensors are refreshed"
    )
    max_ack_pending: int = Field(
        4096, description="unacked messages a sensor consumer may hold at once"
    )
    unhealthy_after_seconds: float = Field(
        60.0,
        description="/healthz fails once the embedded nats-server has been down this long",
    )


class KubeSettings(BaseModel):
    """How Triggerfish reaches the Kubernetes API."""

    kubeconfig: str = Field("", description="kubeconfig path; empty = KUBECONFIG/default")
    context: str = Field("", description="kubeconfig context; empty = current context")
    disabled: bool = Field(
        False, description="never talk to a cluster; record objects under the state dir"
    )
    max_in_flight: int = Field(
        64, description="API requests in flight at once (and pooled connections)"
    )
    request_timeout_seconds: float = Field(10.0, description="per API request")
    credential_refresh_seconds: float = Field(
        1.0, description="how often credential plugins / expiring tokens are checked"
    )


class SensorSettings(BaseModel):
    """Sensor execution knobs that are not part of the Sensor manifest."""

    concurrency: int = Field(
        64,
        description="events a single-dependency sensor processes at once, at least; raised to"
        " twice kube.max_in_flight, capped by bus.max_ack_pending",
    )
    default_retry_steps: int = Field(
        5, description="retries for transient trigger failures when no retryStrategy"
    )
    default_retry_duration_seconds: float = Field(0.5, description="first retry delay")
    default_retry_factor: float = Field(2.0, description="backoff multiplier")
    max_retry_delay_seconds: float = Field(30.0, description="cap on a single backoff")
    slack_api_url: str = Field(
        "https://slack.com/api/", description="base URL of the Slack Web API (slack trigger)"
    )


class SourceSettings(BaseModel):
    """Where event sources reach the providers they talk to (not part of a manifest)."""

    stripe_api_url: str = Field(
        "https://api.stripe.com/",
        description="base URL of the Stripe API (the stripe source's createWebhook)",
    )
    sns_cert_hosts: list[str] = Field(
        default_factory=list,
        description="host names, besides sns.<region>.amazonaws.com[.cn], an SNS message's"
        " SigningCertURL and SubscribeURL may name (e.g. a local SNS-compatible server)",
    )


class HttpServerSettings(BaseModel):
    """Limits of the HTTP servers a process runs (webhook ports, operations API).

    They keep one hostile or slow client from holding memory or connections: the request
    head must arrive within ``header_timeout_seconds`` and fit in ``max_header_bytes``
    (else 408 / 431 and the connection is closed), the body within
    ``body_timeout_seconds`` once the head is in (else 408), and a webhook port handles
    at most ``max_in_flight_requests`` event requests at once (more get 503 +
    ``Retry-After`` before their body is read).
    """

    header_timeout_seconds: float = Field(
        10.0, description="from a request's first byte (or the connection) to its last header"
    )
    body_timeout_seconds: float = Field(
        30.0, description="from the last header to the body's last byte"
    )
    max_header_bytes: int = Field(
        64 * 1024, description="request line plus headers; larger heads get 431"
    )
    keep_alive_timeout_seconds: int = Field(
        5, description="idle keep-alive connections are closed after this"
    )
    max_in_flight_requests: int = Field(
        1024, description="event requests one webhook port handles at once; more get 503"
    )


class SingletonSettings(BaseModel):
    """The Lease a singleton source (calendar, MQTT with a fixed client id) runs under
    when its EventSource has several replicas (client-go's defaults)."""

    identity: str = Field(
        "", description="this replica's name in the Lease; empty = hostname + random suffix"
    )
    lease_duration_seconds: float = Field(
        15.0, description="a standby takes over after seeing the Lease unrenewed this long"
    )
    renew_deadline_seconds: float = Field(
        10.0, description="the holder stops the source when it could not renew for this long"
    )
    retry_period_seconds: float = Field(
        2.0, description="how often the holder renews and a standby tries to acquire"
    )


class TraceSettings(BaseModel):
    """Where traces (what each sensor did with each event) are kept.

    Besides the last traces in memory, every trace is published to the bus stream
    ``TRIGGERFISH_TRACES`` (subjects ``_traces.<namespace>.<sensor>.<dependency>``),
    which keeps the newest ``max_msgs`` for at most ``max_age_seconds``; the API reads
    them from there, so they survive a restart and are shared by every process on the bus.
    """

    persist: bool = Field(True, description="publish traces to the bus stream")
    max_msgs: int = Field(10_000, description="traces the bus stream keeps (oldest dropped)")
    max_age_seconds: float = Field(24 * 3600.0, description="traces older than this are dropped")


class UiSettings(BaseModel):
    """The event-flow page at the operations server's root."""

    argo_workflows_url: str = Field(
        "", description="base URL of the Argo Workflows UI; Workflows created link to it"
    )
    window_seconds: float = Field(300.0, description="the page's counts cover this window")
    status_interval_seconds: float = Field(
        2.0,
        description="cluster mode: how often each pod publishes its status and counts to "
        "the bus (stream TRIGGERFISH_STATUS); a pod silent for 3 intervals is gone",
    )
    replay_timeout_seconds: float = Field(
        60.0,
        description="cluster mode: how long a replay asked at the controller waits for "
        "the sensor's pod that runs it to answer",
    )


class Settings(BaseSettings):
    """All settings of one Triggerfish process."""

    model_config = SettingsConfigDict(
        env_prefix="TRIGGERFISH_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = Field(
        Path(".triggerfish"), description="embedded bus store, recorded objects, traces"
    )
    bind_host: str = Field(
        "0.0.0.0", description="address event-source servers (webhooks) listen on"
    )
    port_map: dict[int, int] = Field(
        default_factory=dict,
        description="serve a manifest's webhook port (key) on another port (value)",
    )
    api_host: str = Field("127.0.0.1", description="address of the API/metrics server")
    api_port: int = Field(8080, description="port of the API/metrics server; 0 = off")
    api_token: SecretStr = Field(
        SecretStr(""),
        description="when set, /metrics and /api/v1/* require 'Authorization: Bearer <token>'"
        " (/healthz and /readyz stay open for probes)",
    )
    log_format: Literal["text", "json"] = Field("text", description="'text' or 'json'")
    log_level: str = Field("INFO", description="Python logging level name")
    bus: BusSettings = Field(default_factory=BusSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    sensor: SensorSettings = Field(default_factory=SensorSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)
    traces: TraceSettings = Field(default_factory=TraceSettings)
    singleton: SingletonSettings = Field(default_factory=SingletonSettings)
    ui: UiSettings = Field(default_factory=UiSettings)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a settings field: ``("bus", "publish_timeout_seconds")``
    → ``TRIGGERFISH_BUS__PUBLISH_TIMEOUT_SECONDS``."""
    return "TRIGGERFISH_" + "__".join(str(part).upper() for part in loc)


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; CLI flags arrive as ``overrides``.

    Raises :class:`ConfigError` with one line per bad variable, naming the variable,
    what it holds and what it should hold."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-", "literal")))
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{env_name(loc)}={err.get('input')!r}: {msg}")
        raise ConfigError("; ".join(lines)) from None
