"""The ``EventBus`` manifest model, and the Kubernetes/Go building blocks all kinds share.

An EventBus names the transport between event sources and sensors. Triggerfish always
runs NATS JetStream (DESIGN §3); the manifest shape is Argo's ``EventBusSpec`` unchanged:

* ``nats.native`` (Argo's legacy NATS Streaming install) and ``jetstream`` are served by
  a JetStream server that Triggerfish starts (embedded standalone, a StatefulSet in a
  cluster);
* ``jetstreamExotic`` points at an existing NATS server;
* ``nats.exotic`` (a NATS Streaming URL) and ``kafka`` are modelled so manifests load,
  and reported as not supported by :mod:`app.compose.support`.

:meth:`EventBus.stream_limits` turns the ``streamConfig`` YAML text into the stream
limits and dedup window the bus adapter creates the stream with.

The pieces all kinds share (pod templates, selectors, TLS, Go durations) live in
:mod:`app.kernel.argo`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import (
    API_VERSION,
    ContainerTemplate,
    LocalObjectReference,
    PodMetadata,
    SASLConfig,
    SecretKeySelector,
    TLSConfig,
    parse_go_duration,
)
from app.kernel.spec import ObjectMeta, SpecModel

# ---------------------------------------------------------------------------------------
# EventBusSpec

AuthStrategy = Literal["none", "token", "basic"]


class PersistenceStrategy(SpecModel):
    """Volume claim settings of a bus StatefulSet (Argo ``PersistenceStrategy``)."""

    storage_class_name: str | None = None
    access_mode: str | None = None
    volume_size: str | int | None = None


class _BusPod(SpecModel):
    """Pod placement fields shared by the native NATS and JetStream installs."""

    container_template: ContainerTemplate | None = None
    metrics_container_template: ContainerTemplate | None = None
    persistence: PersistenceStrategy | None = None
    metadata: PodMetadata | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: str = ""
    priority_class_name: str = ""
    priority: int | None = None
    affinity: dict[str, Any] | None = None


class NativeStrategy(_BusPod):
    """``nats.native``: Argo's NATS Streaming install; Triggerfish serves it with
    JetStream (``replicas`` and ``auth`` are honoured, ``maxAge`` becomes the stream's
    max age)."""

    replicas: int = 0
    auth: AuthStrategy | None = None
    max_age: str | None = None
    max_msgs: int | None = None
    max_bytes: str | None = None
    max_subs: int | None = None
    max_payload: str | None = None
    raft_heartbeat_timeout: str | None = None
    raft_election_timeout: str | None = None
    raft_lease_timeout: str | None = None
    raft_commit_timeout: str | None = None

    @field_validator("max_age")
    @classmethod
    def _max_age_is_duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_go_duration(v)
        return v


class NATSConfig(SpecModel):
    """``nats.exotic``: an existing NATS Streaming server (Argo ``NATSConfig``)."""

    url: str = ""
    cluster_id: str | None = Field(None, alias="clusterID")
    auth: AuthStrategy | None = None
    access_secret: SecretKeySelector | None = None


class NATSBus(SpecModel):
    """``nats``: exactly one of ``native`` or ``exotic``."""

    native: NativeStrategy | None = None
    exotic: NATSConfig | None = None

    @model_validator(mode="after")
    def _one_of(self) -> NATSBus:
        if self.native is not None and self.exotic is not None:
            raise ValueError('"native" and "exotic" can not be defined together')
        if self.native is None and self.exotic is None:
            raise ValueError('either "native" or "exotic" must be defined')
        if self.exotic is not None:
            if not self.exotic.url:
                raise ValueError('"exotic.url" is missing')
            if self.exotic.cluster_id is None:
                raise ValueError('"exotic.clusterID" is missing')
        return self


class JetStreamBus(_BusPod):
    """``jetstream``: a JetStream install (Argo ``JetStreamBus``).

    ``streamConfig`` is YAML text (``maxMsgs``, ``maxAge``, ``maxBytes``, ``replicas``,
    ``duplicates``, ``retention``, ``discard``); ``settings`` is nats-server config text.
    ``version`` names Argo's image set; Triggerfish runs its bundled server whatever it
    says.
    """

    version: str = ""
    replicas: int | None = None
    reloader_container_template: ContainerTemplate | None = None
    settings: str | None = None
    start_args: list[str] = Field(default_factory=list)
    stream_config: str | None = None
    max_payload: str | None = None

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | None) -> int | None:
        if v is not None and (v == 2 or v <= 0):
            raise ValueError("a jetstream eventbus requires 1 replica or >= 3 replicas")
        return v

    @field_validator("stream_config")
    @classmethod
    def _stream_config(cls, v: str | None) -> str | None:
        if v is not None:
            parse_stream_config(v)
        return v


class JetStreamConfig(SpecModel):
    """``jetstreamExotic``: an existing NATS JetStream server (Argo ``JetStreamConfig``)."""

    url: str
    access_secret: SecretKeySelector | None = None
    stream_config: str = ""
    tls: TLSConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v:
            raise ValueError("url must not be empty")
        return v

    @field_validator("stream_config")
    @classmethod
    def _stream_config(cls, v: str) -> str:
        if v:
            parse_stream_config(v)
        return v


class KafkaConsumerGroup(SpecModel):
    """Consumer group settings of a Kafka bus."""

    group_name: str = ""
    oldest: bool = False
    rebalance_strategy: str = ""


class KafkaBus(SpecModel):
    """``kafka``: a Kafka bus (Argo ``KafkaBus``); modelled, not supported yet."""

    url: str
    topic: str = ""
    version: str = ""
    tls: TLSConfig | None = None
    sasl: SASLConfig | None = None
    consumer_group: KafkaConsumerGroup | None = None
    partitioner: str = ""


class EventBusSpec(SpecModel):
    """Argo ``EventBusSpec``: one transport among ``nats``, ``jetstream``,
    ``jetstreamExotic`` and ``kafka``."""

    nats: NATSBus | None = None
    jetstream: JetStreamBus | None = None
    kafka: KafkaBus | None = None
    jetstream_exotic: JetStreamConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EventBusSpec:
        given = [
            k
            for k, v in (
                ("nats", self.nats),
                ("jetstream", self.jetstream),
                ("jetstreamExotic", self.jetstream_exotic),
                ("kafka", self.kafka),
            )
            if v is not None
        ]
        if not given:
            raise ValueError(
                'either "nats", "jetstream", "jetstreamExotic", or "kafka" needs to be specified'
            )
        if len(given) > 1:
            raise ValueError(f"only one bus type may be given, found {', '.join(given)}")
        return self


@dataclass(frozen=True)
class StreamLimits:
    """The JetStream stream settings an EventBus asks for (``None``: server default).

    Durations are in seconds; ``retention`` is 0 limits / 1 interest / 2 work queue,
    ``discard`` 0 old / 1 new, as in Argo's ``streamConfig``.
    """

    max_msgs: int | None = None
    max_bytes: int | None = None
    max_age_seconds: float | None = None
    replicas: int | None = None
    duplicates_seconds: float | None = None
    retention: int | None = None
    discard: int | None = None


_STREAM_KEYS = {
    "maxmsgs": "max_msgs",
    "maxbytes": "max_bytes",
    "maxage": "max_age_seconds",
    "replicas": "replicas",
    "duplicates": "duplicates_seconds",
    "retention": "retention",
    "discard": "discard",
}


def _stream_duration(key: str, value: Any) -> float:
    # Argo reads these with viper's GetDuration: an integer counts nanoseconds.
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a duration such as 72h, got {value!r}")
    if isinstance(value, int):
        return value / 1e9
    if isinstance(value, str):
        return parse_go_duration(value)
    raise ValueError(f"{key}: expected a duration such as 72h, got {value!r}")


def _stream_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise ValueError(f"{key}: expected an integer, got {value!r}")


def parse_stream_config(text: str) -> StreamLimits:
    """Parse Argo's ``streamConfig`` YAML text; keys are case-insensitive (viper).

    Raises ``ValueError`` naming the key for a value Argo could not use.
    """
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise ValueError(f"streamConfig is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("streamConfig must be a YAML mapping")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        attr = _STREAM_KEYS.get(key.lower())
        if attr is None:
            raise ValueError(
                f"streamConfig: unknown key {key!r} "
                "(maxMsgs, maxBytes, maxAge, replicas, duplicates, retention, discard)"
            )
        if attr.endswith("_seconds"):
            values[attr] = _stream_duration(key, value)
        else:
            values[attr] = _stream_int(key, value)
    if values.get("retention") not in (None, 0, 1, 2):
        raise ValueError(
            "streamConfig: retention must be 0 (limits), 1 (interest) or 2 (work queue)"
        )
    if values.get("discard") not in (None, 0, 1):
        raise ValueError("streamConfig: discard must be 0 (old) or 1 (new)")
    return StreamLimits(**values)


class EventBus(SpecModel):
    """An Argo ``EventBus`` manifest (``argoproj.io/v1alpha1``), loaded as-is."""

    api_version: Literal["argoproj.io/v1alpha1"] = API_VERSION
    kind: Literal["EventBus"] = "EventBus"
    metadata: ObjectMeta
    spec: EventBusSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The bus name (the stream name and subject prefix)."""
        return self.metadata.name

    def stream_limits(self) -> StreamLimits:
        """Stream limits and dedup window from ``streamConfig`` (JetStream kinds) or the
        native NATS fields; unset values are ``None`` (use the server's defaults)."""
        spec = self.spec
        if spec.jetstream is not None and spec.jetstream.stream_config:
            return parse_stream_config(spec.jetstream.stream_config)
        if spec.jetstream_exotic is not None and spec.jetstream_exotic.stream_config:
            return parse_stream_config(spec.jetstream_exotic.stream_config)
        if spec.nats is not None and spec.nats.native is not None:
            native = spec.nats.native
            return StreamLimits(
                max_msgs=native.max_msgs,
                max_age_seconds=parse_go_duration(native.max_age) if native.max_age else None,
            )
        return StreamLimits()

    def replicas(self) -> int:
        """Server replicas asked for (Argo's defaults: 3 for native NATS and JetStream)."""
        if self.spec.jetstream is not None:
            return self.spec.jetstream.replicas or 3
        if self.spec.nats is not None and self.spec.nats.native is not None:
            return max(self.spec.nats.native.replicas, 3)
        return 1

    def auth(self) -> AuthStrategy:
        """The auth strategy of a native NATS bus (``none`` unless ``token``/``basic``)."""
        if self.spec.nats is not None and self.spec.nats.native is not None:
            return self.spec.nats.native.auth or "none"
        if self.spec.nats is not None and self.spec.nats.exotic is not None:
            return self.spec.nats.exotic.auth or "none"
        return "none"
