"""pydantic model of the Argo ``EventSource`` (``argoproj.io/v1alpha1``), loaded as-is.

The envelope (``eventBusName``, ``template``, ``service``, ``replicas``) is declared
here; the source types are not. :class:`EventSourceSpec` gets one field per key of
:data:`eventsources.registry.REGISTRY` (``{eventName: <the plugin's config_model>}``,
the plugin imported when a manifest uses it), so adding a source type is one registry
line and its errors keep their paths (``spec.webhook.example.port: ...``). Every other
key Argo knows (:data:`eventsources.registry.ARGO_SOURCE_TYPES`) is a field that fails
with exactly one line, ``spec.sqs: event source type 'sqs' is not supported``; a key
Argo does not know is an unknown field.

After the fields validate, :class:`EventSource` checks what spans events: event names
are unique across all types of one EventSource (Argo's rule), and each plugin's
``check_config`` (port conflicts and the like) runs on its events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import (
    CoreSchema,
    InitErrorDetails,
    PydanticCustomError,
    ValidationError,
    core_schema,
)

from app.kernel.argo import API_VERSION, PodMetadata, PodTemplate
from app.kernel.spec import ObjectMeta, SpecModel
from eventsources.registry import ARGO_SOURCE_TYPES, REGISTRY


class ServicePort(SpecModel):
    """One port of the EventSource's Service (Kubernetes ``ServicePort``)."""

    name: str = ""
    protocol: Literal["TCP", "UDP", "SCTP", ""] = ""
    app_protocol: str = ""
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None
    node_port: int | None = None


class Service(SpecModel):
    """``spec.service``: expose the source's ports as ``<name>-eventsource-svc``."""

    metadata: PodMetadata | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str = Field("", alias="clusterIP")


class EventSourceSpecBase(SpecModel):
    """The fields every EventSource has, whatever its source types."""

    event_bus_name: str = "default"
    template: PodTemplate | None = None
    service: Service | None = None
    replicas: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_bus(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("eventBusName") == "":
            data = {**data, "eventBusName": "default"}
        return data

    def sources(self) -> dict[str, dict[str, SpecModel]]:
        """``{source type: {event name: validated config}}`` for every type given."""
        out: dict[str, dict[str, SpecModel]] = {}
        for key in REGISTRY:
            events = getattr(self, key, None)
            if events:
                out[key] = dict(events)
        return out


def _not_supported(key: str) -> Any:
    def fail(value: Any) -> None:
        if value is None:
            return None
        raise PydanticCustomError(
            "not_supported", "event source type '{key}' is not supported", {"key": key}
        )

    return Annotated[
        Any,
        PlainValidator(fail),
        WithJsonSchema(
            {"type": "object", "description": f"event source type '{key}' (not supported)"}
        ),
    ]


@dataclass(frozen=True)
class _SourceType:
    """Marks an :class:`EventSourceSpec` field as a registered source type: the value is
    ``{eventName: config}``, each config validated by the plugin's ``config_model``. The
    plugin is imported when a manifest uses the key (or a schema is generated), not when
    this module is."""

    key: str

    def _adapter(self) -> TypeAdapter[dict[str, SpecModel]]:
        model = REGISTRY.load(self.key).config_model
        return TypeAdapter(dict[str, model])  # type: ignore[valid-type]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(core_schema.nullable_schema(self._adapter().core_schema))

    def _validate(self, value: Any) -> dict[str, SpecModel] | None:
        if value is None:
            return None
        return self._adapter().validate_python(value)


def _source_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in sorted(ARGO_SOURCE_TYPES | REGISTRY.keys()):
        if key in REGISTRY:
            fields[key] = (
                Annotated[dict[str, SpecModel] | None, _SourceType(key)],
                Field(None, alias=key),
            )
        else:
            fields[key] = (_not_supported(key), Field(None, alias=key))
    return fields


if TYPE_CHECKING:
    EventSourceSpec = EventSourceSpecBase
else:
    EventSourceSpec = create_model(
        "EventSourceSpec",
        __base__=EventSourceSpecBase,
        __module__=__name__,
        __doc__="Argo ``EventSourceSpec``: the envelope plus one field per source type.",
        **_source_fields(),
    )


class EventSource(SpecModel):
    """An Argo ``EventSource`` manifest (``argoproj.io/v1alpha1``), loaded as-is."""

    api_version: Literal["argoproj.io/v1alpha1"] = API_VERSION
    kind: Literal["EventSource"] = "EventSource"
    metadata: ObjectMeta
    spec: EventSourceSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> EventSource:
        problems: list[tuple[str, str]] = []
        if not self.metadata.name:
            problems.append(("metadata.name", "required field is missing"))
        sources = self.spec.sources()
        if not sources:
            problems.append(
                ("spec", "no event source given (one of " + ", ".join(sorted(REGISTRY)) + ")")
            )
        seen: dict[str, str] = {}
        for key, events in sources.items():
            for event_name in events:
                if event_name in seen:
                    problems.append(
                        (
                            f"spec.{key}.{event_name}",
                            f"duplicate event name {event_name!r} "
                            f"(also in spec.{seen[event_name]})",
                        )
                    )
                else:
                    seen[event_name] = key
            for line in REGISTRY.load(key).check_config(self.metadata.name, events):
                path, sep, message = line.partition(": ")
                if not sep:
                    path, message = "", line
                if not path.startswith("spec."):
                    path = f"spec.{key}.{path}" if path else f"spec.{key}"
                problems.append((path, message))
        if problems:
            raise ValidationError.from_exception_data(
                "EventSource",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", "{message}", {"message": msg}),
                        loc=(path,),
                        input=None,
                    )
                    for path, msg in problems
                ],
            )
        return self

    @property
    def name(self) -> str:
        """The EventSource's name (``eventSourceName`` in sensors, the subject's middle)."""
        return self.metadata.name
