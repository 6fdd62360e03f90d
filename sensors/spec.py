"""pydantic models of the Argo ``Sensor`` (``argoproj.io/v1alpha1``), loaded as-is.

The models follow Argo's ``SensorSpec`` field for field (camelCase names, aliases of the
snake_case attributes); unknown fields are rejected with their path, and Argo's own
validation rules run at load time (required names, filter shapes, ``dlqTrigger`` rules),
plus the checks Argo leaves to the first event: duplicate dependency or trigger names,
a parameter's ``src.dependencyName`` that names no dependency, a ``conditions``
expression naming an unknown dependency.

Trigger types are plugins. :class:`TriggerTemplate` declares every trigger key Argo knows
(``k8s``, ``http``, ``slack``, ...); the value of a key is validated with the config
model registered for it in :data:`sensors.triggers.registry.TRIGGERS`, and a key
with no registered model fails with one line: ``trigger type 'slack' is not supported``.
The registry names its classes as text and imports one when a manifest using it is
validated, so this module never imports the trigger implementations (which import
:class:`TriggerParameter` from here).

Whether the engine implements a valid field yet is a separate question, answered by the
table in :mod:`app.compose.support` after the model has loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time as dt_time
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from app.kernel.argo import API_VERSION, PodTemplate, duration_seconds, parse_go_duration
from app.kernel.spec import ObjectMeta, SpecModel
from app.languages.cron import CronSchedule
from sensors.conditions import Condition
from sensors.triggers.registry import TRIGGERS

if TYPE_CHECKING:
    pass


def _not_empty(v: str) -> str:
    if not v:
        raise ValueError("must not be empty")
    return v


NonEmptyStr = Annotated[str, AfterValidator(_not_empty)]
LogicalOperator = Literal["and", "or", ""]


def _located_error(title: str, errors: list[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """A ValidationError with one ``(location, message)`` line per problem.

    Raised from an ``after`` model validator, pydantic prefixes each location with the
    model's own, so the lines read ``spec.dependencies[1].name: ...`` to the user.
    """
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": msg}),
                loc=loc,
                input=None,
            )
            for loc, msg in errors
        ],
    )


# ---------------------------------------------------------------------------------------
# Parameters (kept first: the trigger config models import them).


class TriggerParameterSource(SpecModel):
    """Where a parameter's value comes from (``src``). Resolution order: template → key
    → value (default) → error."""

    dependency_name: str
    context_key: str | None = None
    context_template: str | None = None
    data_key: str | None = None
    data_template: str | None = None
    value: str | None = None
    use_raw_data: bool = False

    @field_validator("dependency_name")
    @classmethod
    def _named(cls, v: str) -> str:
        return _not_empty(v)


class TriggerParameter(SpecModel):
    """One parameter: a value from an event set at ``dest`` (an sjson path).

    ``dest`` must not be empty (Argo's rule for resource parameters; an HTTP ``payload``
    entry, where Argo allows an empty ``dest``, needs its own model).
    """

    src: TriggerParameterSource
    dest: str
    operation: Literal["", "overwrite", "append", "prepend"] = ""

    @field_validator("dest")
    @classmethod
    def _dest_given(cls, v: str) -> str:
        return _not_empty(v)


# ---------------------------------------------------------------------------------------
# Dependencies and filters.


def _parse_hhmmss(v: str) -> dt_time:
    m = re.fullmatch(r"(\d{1,2}):(\d{2}):(\d{2})", v)
    if m is None or int(m[1]) > 23 or int(m[2]) > 59 or int(m[3]) > 59:
        raise ValueError(f"invalid time {v!r}, expected hh:mm:ss")
    return dt_time(int(m[1]), int(m[2]), int(m[3]))


def _check_timezone(v: str) -> str:
    if v:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"invalid timezone {v!r}") from e
    return v


class TimeFilter(SpecModel):
    """``filters.time``: pass events inside ``[start, stop)`` (``hh:mm:ss``, in
    ``timezone``, UTC by default); a stop before start wraps past midnight."""

    start: str
    stop: str
    timezone: Annotated[str, AfterValidator(_check_timezone)] = ""

    @model_validator(mode="after")
    def _window(self) -> TimeFilter:
        start = _parse_hhmmss(self.start)
        stop = _parse_hhmmss(self.stop)
        if start == stop:
            raise ValueError(f"stop {self.stop!r} is equal to start {self.start!r}")
        return self


class EventContextFilter(SpecModel):
    """``filters.context``: equality on the CloudEvent context attributes given."""

    id: str = ""
    source: str = ""
    specversion: str = ""
    type: str = ""
    datacontenttype: str = ""
    subject: str = ""
    time: str = ""

    @model_validator(mode="after")
    def _something(self) -> EventContextFilter:
        if not (self.type or self.subject or self.source or self.datacontenttype):
            raise ValueError(
                "no fields specified in the context filter (all events would be discarded)"
            )
        return self


class DataFilter(SpecModel):
    """``filters.data[]``: the value at ``path`` (gjson) compared with ``value``
    (ORed; strings are regexes) as ``type``."""

    path: NonEmptyStr
    type: Literal["bool", "number", "string"]
    value: list[NonEmptyStr] = Field(min_length=1)
    comparator: Literal[">=", ">", "=", "!=", "<", "<=", ""] = ""
    template: str = ""


class PayloadField(SpecModel):
    """A name bound to the value at a gjson path, for an expression filter."""

    path: NonEmptyStr
    name: NonEmptyStr


class ExprFilter(SpecModel):
    """``filters.exprs[]``: a boolean expression over named ``fields``."""

    expr: NonEmptyStr
    fields: list[PayloadField] = Field(min_length=1)


class EventDependencyFilter(SpecModel):
    """``dependencies[].filters``: time, context, data, expression and script filters."""

    time: TimeFilter | None = None
    context: EventContextFilter | None = None
    data: list[DataFilter] = Field(default_factory=list)
    exprs: list[ExprFilter] = Field(default_factory=list)
    data_logical_operator: LogicalOperator = ""
    expr_logical_operator: LogicalOperator = ""
    script: str = ""


class EventDependencyTransformer(SpecModel):
    """``dependencies[].transform``: reshape the event with jq or a Lua script."""

    jq: str = ""
    script: str = ""


class EventDependency(SpecModel):
    """One event the sensor waits for: ``eventName`` of EventSource ``eventSourceName``."""

    name: NonEmptyStr
    event_source_name: NonEmptyStr
    event_name: NonEmptyStr
    filters: EventDependencyFilter | None = None
    transform: EventDependencyTransformer | None = None
    filters_logical_operator: LogicalOperator = ""


# ---------------------------------------------------------------------------------------
# Triggers.


def _duration(v: Any) -> int | str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"expected nanoseconds (an integer) or a duration such as 1s, got {v!r}")
    if isinstance(v, str):
        parse_go_duration(v)
    return v


def _amount(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {v!r}")


Duration = Annotated[
    int | str,
    PlainValidator(_duration),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
"""Argo ``Int64OrString``: an integer counts nanoseconds, a string is a Go duration."""

Amount = float
"""Argo ``Amount``: a number (a numeric string is accepted too)."""


class Backoff(SpecModel):
    """Argo ``Backoff`` (``retryStrategy``, policy backoff): ``steps`` attempts, waiting
    ``duration`` then multiplying it by ``factor``, plus up to ``jitter`` times the wait."""

    duration: Duration | None = None
    factor: Amount | None = None
    jitter: Amount | None = None
    steps: int = Field(0, ge=0)

    @field_validator("factor", "jitter", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return None if v is None else _amount(v)

    @property
    def duration_seconds(self) -> float:
        """The first wait in seconds (Argo's default: 1s)."""
        return 1.0 if self.duration is None else duration_seconds(self.duration)

    @property
    def factor_value(self) -> float:
        """The multiplier between waits (Argo's default: 1.0)."""
        return 1.0 if self.factor is None else self.factor

    @property
    def jitter_value(self) -> float:
        """The jitter fraction (Argo's default: 1)."""
        return 1.0 if self.jitter is None else self.jitter

    @property
    def steps_value(self) -> int:
        """Attempts (Argo's default when unset or 0: 5)."""
        return self.steps if self.steps > 0 else 5


class RateLimit(SpecModel):
    """``rateLimit``: at most ``requestsPerUnit`` firings per ``unit``."""

    unit: Literal["Second", "Minute", "Hour", ""] = ""
    requests_per_unit: int = Field(0, ge=0)


class K8SResourcePolicy(SpecModel):
    """``policy.k8s``: wait until the created resource carries ``labels``."""

    labels: dict[str, str]
    backoff: Backoff | None = None
    error_on_backoff_timeout: bool = False


class StatusPolicy(SpecModel):
    """``policy.status``: the response statuses that count as success."""

    allow: list[int]


class TriggerPolicy(SpecModel):
    """``policy``: how to decide a trigger's result succeeded."""

    k8s: K8SResourcePolicy | None = Field(None, alias="k8s")
    status: StatusPolicy | None = None


class ConditionsResetByTime(SpecModel):
    """``conditionsReset[].byTime``: clear partial condition state on a cron schedule."""

    cron: str = ""
    timezone: Annotated[str, AfterValidator(_check_timezone)] = ""

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        CronSchedule.parse(v)
        return v


class ConditionsResetCriteria(SpecModel):
    """One ``conditionsReset`` entry."""

    by_time: ConditionsResetByTime


@dataclass(frozen=True)
class _TriggerType:
    """Marks a :class:`TriggerTemplate` field as a trigger type, validated by the config
    model registered under ``key`` (looked up at validation time)."""

    key: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        model = _config_model(self.key)
        if model is None:
            return {"type": "object", "description": f"trigger type '{self.key}' (not supported)"}
        return handler(model.__pydantic_core_schema__)

    def _validate(self, value: Any) -> SpecModel | None:
        if value is None:
            return None
        model = _config_model(self.key)
        if model is None:
            raise PydanticCustomError(
                "not_supported", "trigger type '{key}' is not supported", {"key": self.key}
            )
        if isinstance(value, model):
            return value
        return model.model_validate(value)


def _config_model(key: str) -> type[SpecModel] | None:
    """The config model of the trigger type registered under ``key`` (``None``: none is)."""
    if key not in TRIGGERS:
        return None
    return TRIGGERS.load(key).config_model


class TriggerTemplate(SpecModel):
    """``triggers[].template``: a name, optional ``conditions``, and exactly one trigger
    type, given under its Argo key.

    Use :attr:`trigger_type` and :attr:`trigger_config` to dispatch to the plugin.
    """

    name: NonEmptyStr
    conditions: str = ""
    conditions_reset: list[ConditionsResetCriteria] = Field(default_factory=list)
    k8s: Annotated[SpecModel | None, _TriggerType("k8s")] = Field(None, alias="k8s")
    argo_workflow: Annotated[SpecModel | None, _TriggerType("argoWorkflow")] = None
    http: Annotated[SpecModel | None, _TriggerType("http")] = None
    aws_lambda: Annotated[SpecModel | None, _TriggerType("awsLambda")] = None
    custom: Annotated[SpecModel | None, _TriggerType("custom")] = None
    kafka: Annotated[SpecModel | None, _TriggerType("kafka")] = None
    nats: Annotated[SpecModel | None, _TriggerType("nats")] = None
    slack: Annotated[SpecModel | None, _TriggerType("slack")] = None
    open_whisk: Annotated[SpecModel | None, _TriggerType("openWhisk")] = None
    log: Annotated[SpecModel | None, _TriggerType("log")] = None
    azure_event_hubs: Annotated[SpecModel | None, _TriggerType("azureEventHubs")] = None
    pulsar: Annotated[SpecModel | None, _TriggerType("pulsar")] = None
    azure_service_bus: Annotated[SpecModel | None, _TriggerType("azureServiceBus")] = None
    email: Annotated[SpecModel | None, _TriggerType("email")] = None

    @model_validator(mode="after")
    def _one_type(self) -> TriggerTemplate:
        given = self._given_types()
        if not given:
            raise ValueError(
                "no trigger type given (one of " + ", ".join(sorted(ARGO_TRIGGER_TYPES)) + ")"
            )
        if len(given) > 1:
            raise ValueError(f"only one trigger type may be given, found {', '.join(given)}")
        return self

    def _given_types(self) -> list[str]:
        return [key for attr, key in _TRIGGER_FIELDS.items() if getattr(self, attr) is not None]

    @property
    def trigger_type(self) -> str:
        """The Argo key of this template's trigger type (``k8s``, ``log``, ...)."""
        return self._given_types()[0]

    @property
    def trigger_config(self) -> SpecModel:
        """The validated config of :attr:`trigger_type` (its registered model)."""
        for attr in _TRIGGER_FIELDS:
            value = getattr(self, attr)
            if value is not None:
                return value  # type: ignore[no-any-return]
        raise ValueError("no trigger type")  # unreachable: checked at validation


_TRIGGER_FIELDS: dict[str, str] = {
    attr: marker.key
    for attr, info in TriggerTemplate.model_fields.items()
    for marker in info.metadata
    if isinstance(marker, _TriggerType)
}

ARGO_TRIGGER_TYPES: frozenset[str] = frozenset(_TRIGGER_FIELDS.values())
"""Every trigger type key Argo knows under ``template``."""


class Trigger(SpecModel):
    """``triggers[]``: the template plus how it runs (parameters, retries, policy,
    rate limit, delivery semantics, dead-letter trigger)."""

    template: TriggerTemplate
    parameters: list[TriggerParameter] = Field(default_factory=list)
    policy: TriggerPolicy | None = None
    retry_strategy: Backoff | None = None
    rate_limit: RateLimit | None = None
    at_least_once: bool = False
    dlq_trigger: Trigger | None = None

    @model_validator(mode="after")
    def _dlq_rules(self) -> Trigger:
        if self.dlq_trigger is not None:
            if not self.at_least_once:
                raise ValueError("to use dlqTrigger, atLeastOnce must be set to true")
            if not self.dlq_trigger.at_least_once:
                raise ValueError("atLeastOnce must be set to true within the dlqTrigger")
        return self


# ---------------------------------------------------------------------------------------
# The Sensor.


class SensorSpec(SpecModel):
    """Argo ``SensorSpec``: dependencies, triggers, and how the sensor runs."""

    dependencies: list[EventDependency]
    triggers: list[Trigger]
    template: PodTemplate | None = None
    error_on_failed_round: bool = False
    event_bus_name: str = "default"
    replicas: int | None = None
    revision_history_limit: int | None = None
    logging_fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("dependencies")
    @classmethod
    def _some_dependencies(cls, v: list[EventDependency]) -> list[EventDependency]:
        if not v:
            raise ValueError("no event dependencies found")
        return v

    @field_validator("triggers")
    @classmethod
    def _some_triggers(cls, v: list[Trigger]) -> list[Trigger]:
        if not v:
            raise ValueError("no triggers found")
        return v

    @field_validator("event_bus_name", mode="before")
    @classmethod
    def _default_bus(cls, v: object) -> object:
        return "default" if v == "" else v

    @property
    def dependency_names(self) -> list[str]:
        """The dependency names, in manifest order."""
        return [d.name for d in self.dependencies]

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-field problems, each a (location under ``spec``, message)."""
        out: list[tuple[tuple[str | int, ...], str]] = []
        names: set[str] = set()
        for i, dep in enumerate(self.dependencies):
            if dep.name in names:
                out.append((("dependencies", i, "name"), f"duplicate dependency name {dep.name!r}"))
            names.add(dep.name)
        trigger_names: set[str] = set()
        for i, trig in enumerate(self.triggers):
            loc: tuple[str | int, ...] = ("triggers", i)
            name = trig.template.name
            if name in trigger_names:
                out.append(((*loc, "template", "name"), f"duplicate trigger name {name!r}"))
            trigger_names.add(name)
            out.extend(_trigger_problems(trig, loc, names))
        return out


def _trigger_problems(
    trig: Trigger, loc: tuple[str | int, ...], deps: set[str]
) -> list[tuple[tuple[str | int, ...], str]]:
    out: list[tuple[tuple[str | int, ...], str]] = []
    for ploc, param in _parameters_in(trig, loc):
        if param.src.dependency_name not in deps:
            out.append(
                (
                    (*ploc, "src", "dependencyName"),
                    f"{param.src.dependency_name!r} names no dependency of this sensor",
                )
            )
    conditions = trig.template.conditions
    if conditions:
        try:
            Condition.compile(conditions, sorted(deps))
        except ValueError as e:
            out.append(((*loc, "template", "conditions"), str(e)))
    if trig.dlq_trigger is not None:
        out.extend(_trigger_problems(trig.dlq_trigger, (*loc, "dlqTrigger"), deps))
    return out


def _parameters_in(
    trig: Trigger, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], TriggerParameter]]:
    """Every TriggerParameter of a trigger (template level and inside its config), with
    its location, whatever field of the config model holds them."""
    for j, p in enumerate(trig.parameters):
        yield (*loc, "parameters", j), p
    tpl = trig.template
    yield from _walk_parameters(tpl.trigger_config, (*loc, "template", tpl.trigger_type))


def _walk_parameters(
    value: Any, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], TriggerParameter]]:
    if isinstance(value, TriggerParameter):
        yield loc, value
    elif isinstance(value, BaseModel):
        for attr, info in type(value).model_fields.items():
            child = getattr(value, attr)
            if child is not None:
                yield from _walk_parameters(child, (*loc, info.alias or attr))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_parameters(item, (*loc, i))


class Sensor(SpecModel):
    """An Argo ``Sensor`` manifest (``argoproj.io/v1alpha1``), loaded as-is."""

    api_version: Literal["argoproj.io/v1alpha1"] = API_VERSION
    kind: Literal["Sensor"] = "Sensor"
    metadata: ObjectMeta
    spec: SensorSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Sensor:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if not self.metadata.name:
            problems.append((("metadata", "name"), "required field is missing"))
        problems.extend((("spec", *loc), msg) for loc, msg in self.spec.problems())
        if problems:
            raise _located_error("Sensor", problems)
        return self

    @property
    def name(self) -> str:
        """The sensor's name."""
        return self.metadata.name
