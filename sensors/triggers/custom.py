"""The ``custom`` trigger: hand each firing to a trigger server over gRPC (Argo
``CustomTrigger``, the ``triggers.Trigger`` service of Argo's ``trigger.proto``).

Fields (:class:`CustomTriggerConfig`): ``serverURL`` (the gRPC target, ``host:port``);
``secure`` (TLS; then ``certSecret``, a Secret key holding the PEM certificate(s) that
sign the server's certificate, is required); ``serverNameOverride`` (the name the
server's certificate is checked against, when it is not the host of ``serverURL``);
``spec`` (a map of strings the server interprets); ``parameters`` (applied to the
resource the server returns, which must then be a JSON object); ``payload``
(parameters set into an empty JSON document, sent with the resource; nothing when
absent).

One firing is three calls, as in Argo: ``FetchResource`` with ``spec`` as YAML (keys
sorted) → the resource; ``parameters`` applied to it; ``Execute`` with the resource and
the payload → the response; ``ApplyPolicy`` with the response → ``success`` and a
message. The protocol (``sensors/triggers/proto/trigger.proto``, Argo's file, Apache
2.0) is described to protobuf here in code rather than by protoc-generated modules, so
the product runs with any protobuf runtime; the tests check the description against
the ``.proto`` compiled by protoc.

Why a channel of its own: the server is whoever the manifest names; one channel per
(serverURL, TLS settings) lives in the context's
:class:`~sensors.triggers.base.SharedCache` (closed with it) and reconnects by itself.

Semantics:
* ``ApplyPolicy`` answering ``success: false`` fails the firing with
  :class:`~app.kernel.errors.PermanentError` carrying the server's message (a
  deliberate difference: Argo logs the answer and counts the firing as done).
* Idempotence: the protocol has no key, so every call carries the firing key as gRPC
  metadata ``idempotency-key`` (the same on every retry and redelivery); a server that
  honours it executes a firing once. A server that ignores it may execute a retried
  firing twice, and a failure after ``Execute`` (in ``ApplyPolicy``) retries the whole
  firing.
* Every call has a deadline of :data:`CALL_TIMEOUT_SECONDS` and does not wait for the
  server to come up: an unreachable server fails the attempt at once.
* Failure: gRPC ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``,
  ``ABORTED``, ``INTERNAL``, ``UNKNOWN`` (what a server's unhandled error becomes) →
  :class:`~app.kernel.errors.TransientError`; any other status (``INVALID_ARGUMENT``,
  ``NOT_FOUND``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED``, ``UNIMPLEMENTED``, ...), a
  server certificate that fails verification, a resource that is not a JSON object
  when ``parameters`` are given, a missing Secret key or parameter value →
  :class:`~app.kernel.errors.PermanentError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, ClassVar

import yaml
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.parameters import apply_parameters, compile_parameters, construct_payload
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, Trigger, TriggerContext, TriggerResult
from sensors.triggers.http import read_secret

CALL_TIMEOUT_SECONDS = 60.0
KEY_METADATA = "idempotency-key"
SERVICE = "triggers.Trigger"

# trigger.proto, field by field: (message, [(field, protobuf type name)]), numbered from 1.
MESSAGES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("FetchResourceRequest", (("resource", "bytes"),)),
    ("FetchResourceResponse", (("resource", "bytes"),)),
    ("ExecuteRequest", (("resource", "bytes"), ("payload", "bytes"))),
    ("ExecuteResponse", (("response", "bytes"),)),
    ("ApplyPolicyRequest", (("request", "bytes"),)),
    ("ApplyPolicyResponse", (("success", "bool"), ("message", "string"))),
)
METHODS: tuple[tuple[str, str, str], ...] = (
    ("FetchResource", "FetchResourceRequest", "FetchResourceResponse"),
    ("Execute", "ExecuteRequest", "ExecuteResponse"),
    ("ApplyPolicy", "ApplyPolicyRequest", "ApplyPolicyResponse"),
)
CERTIFICATE_FAILURES = ("certificate verify failed", "verification check failed", "peer name")
"""What gRPC's details say when the server's certificate is refused (reported as
UNAVAILABLE, but no retry fixes it)."""
TRANSIENT_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"}
)


def file_descriptor() -> Any:
    """``trigger.proto`` as a ``FileDescriptorProto``."""
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="trigger.proto", package="triggers", syntax="proto3"
    )
    types = {
        "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    }
    for name, fields in MESSAGES:
        msg = fdp.message_type.add(name=name)
        for number, (field_name, kind) in enumerate(fields, start=1):
            msg.field.add(name=field_name, number=number, type=types[kind],
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)  # fmt: skip
    service = fdp.service.add(name="Trigger")
    for method, request, response in METHODS:
        service.method.add(name=method, input_type=f".triggers.{request}",
                           output_type=f".triggers.{response}")  # fmt: skip
    return fdp


@functools.cache
def messages() -> dict[str, Any]:
    """The protocol's message classes by name (a private descriptor pool: nothing else
    that registers ``trigger.proto`` can clash with it)."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"triggers.{name}"))
        for name, _ in MESSAGES
    }


class CustomTriggerConfig(SpecModel):
    """``template.custom``: the trigger server and what to send it."""

    server_url: str = Field(alias="serverURL")
    secure: bool = False
    cert_secret: SecretKeySelector | None = None
    server_name_override: str = ""
    spec: dict[str, str]
    parameters: list[TriggerParameter] = Field(default_factory=list)
    payload: list[TriggerParameter] = Field(default_factory=list)

    @field_validator("server_url")
    @classmethod
    def _url_given(cls, v: str) -> str:
        if not v:
            raise ValueError("custom trigger gRPC server url is not defined")
        return v

    @field_validator("spec")
    @classmethod
    def _spec_given(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("trigger body can't be empty")
        return v

    @model_validator(mode="after")
    def _cert_when_secure(self) -> CustomTriggerConfig:
        if self.secure and self.cert_secret is None:
            raise ValueError("certSecret can't be nil when the trigger server connection is secure")
        return self


class _Channel:
    """One gRPC channel to one trigger server. Kept in the SharedCache (closed with it)."""

    def __init__(self, channel: Any, where: str) -> None:
        self.channel = channel
        self.where = where
        self._stubs: dict[str, Any] = {}

    async def call(self, method: str, request: Any, key: str) -> Any:
        import grpc

        stub = self._stubs.get(method)
        if stub is None:
            response = {m: r for m, _q, r in METHODS}[method]
            stub = self.channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=messages()[response].FromString,
            )
            self._stubs[method] = stub
        try:
            return await stub(request, timeout=CALL_TIMEOUT_SECONDS,
                              metadata=((KEY_METADATA, key),), wait_for_ready=False)  # fmt: skip
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            details = e.details() or ""
            message = f"custom trigger {self.where}: {method} failed: {code}: {details}"
            lowered = details.lower()
            if any(m in lowered for m in CERTIFICATE_FAILURES):
                raise PermanentError(
                    f"custom trigger {self.where}: {method}: certificate verification failed"
                ) from e
            if code in TRANSIENT_CODES:
                raise TransientError(message) from e
            raise PermanentError(message) from e

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.close()


class CustomTrigger(Trigger):
    """Runs one firing on a custom trigger server (see the module docstring)."""

    type_name: ClassVar[str] = "custom"
    config_model: ClassVar[type[SpecModel]] = CustomTriggerConfig

    def __init__(self, config: CustomTriggerConfig, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self.config: CustomTriggerConfig = config
        self.params = compile_parameters(config.parameters, where="custom.parameters")
        self.payload = compile_parameters(config.payload, where="custom.payload")

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg = self.config
        msgs = messages()
        channel = await self._channel(cfg, inv.namespace)
        spec = yaml.safe_dump(dict(cfg.spec), sort_keys=True, default_flow_style=False,
                              allow_unicode=True).encode()  # fmt: skip
        fetched = await channel.call(
            "FetchResource", msgs["FetchResourceRequest"](resource=spec), inv.key
        )
        resource: bytes = fetched.resource
        records: list[dict[str, Any]] = []
        if self.params:
            try:
                obj = json.loads(resource)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                raise PermanentError(
                    f"custom trigger {channel.where}: the fetched resource is not a JSON "
                    "object, so custom.parameters cannot be applied to it"
                )
            doc, records = apply_parameters(obj, self.params, inv.events)
            resource = json.dumps(doc, separators=(",", ":")).encode()
        payload = b""
        if self.payload:
            payload, payload_records = construct_payload(self.payload, inv.events)
            records += payload_records
        executed = await channel.call(
            "Execute", msgs["ExecuteRequest"](resource=resource, payload=payload), inv.key
        )
        response: bytes = executed.response
        verdict = await channel.call(
            "ApplyPolicy", msgs["ApplyPolicyRequest"](request=response), inv.key
        )
        detail: dict[str, Any] = {
            "name": f"custom {cfg.server_url}",
            "server": cfg.server_url,
            "response": _snippet(response),
            "policy": verdict.message,
        }
        if not verdict.success:
            raise PermanentError(
                f"custom trigger {channel.where}: ApplyPolicy refused the execution: "
                f"{verdict.message or '(no message)'}"
            )
        return TriggerResult("executed", detail, records)

    async def _channel(self, cfg: CustomTriggerConfig, namespace: str) -> _Channel:
        key = ("custom.channel", namespace, cfg.server_url, cfg.secure,
               None if cfg.cert_secret is None else cfg.cert_secret.model_dump_json(),
               cfg.server_name_override)  # fmt: skip

        async def make() -> _Channel:
            import grpc

            where = cfg.server_url
            if not cfg.secure:
                return _Channel(grpc.aio.insecure_channel(cfg.server_url), where)
            assert cfg.cert_secret is not None  # the model requires it when secure
            sel = cfg.cert_secret
            pem = await read_secret(self.ctx, namespace, sel.name, sel.key)
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise PermanentError(f"secret {namespace}/{sel.name} key {sel.key!r} is not "
                                     "a PEM certificate")  # fmt: skip
            credentials = grpc.ssl_channel_credentials(root_certificates=pem.encode())
            options: list[tuple[str, Any]] = []
            if cfg.server_name_override:
                options.append(("grpc.ssl_target_name_override", cfg.server_name_override))
            channel = grpc.aio.secure_channel(cfg.server_url, credentials, options=options)
            return _Channel(channel, where)

        return await self.ctx.shared.get(key, make)


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["CustomTrigger", "CustomTriggerConfig", "file_descriptor", "messages"]
