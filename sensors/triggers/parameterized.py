"""What the triggers that take Argo's ``<type>.parameters`` (and a ``payload``) share.

In Argo, a trigger type's own ``parameters`` are applied to its whole config before it
runs, so a parameter may set a URL, a subject, a function name or the payload's own
parameters; the payload is then built from the events (``payload`` entries with
``src`` and ``dest``). Every such trigger does the same three things, kept here once:
read Argo's ``policy.status.allow`` once (for the types that get an HTTP-like status),
compile both lists when the Sensor is loaded (a bad path fails at load), apply the
parameters per firing and validate the result against the type's config model (an
invalid result is permanent: a retry would build the same config), and recompile the
payload only when a parameter changed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from pydantic import ValidationError

from app.kernel.errors import ConfigError, PermanentError
from app.kernel.events import Event
from app.kernel.spec import SpecModel, dump
from sensors.parameters import (
    CompiledParameter,
    apply_parameters,
    compile_parameters,
    construct_payload,
)
from sensors.spec import TriggerParameter
from sensors.triggers.base import Trigger, TriggerContext


class ParameterizedConfig(Protocol):
    """A trigger config with Argo's ``parameters`` list."""

    @property
    def parameters(self) -> list[TriggerParameter]: ...


ConfigT = TypeVar("ConfigT", bound=ParameterizedConfig)


class ParameterizedTrigger(Trigger, Generic[ConfigT]):
    """A trigger whose config takes ``<type>.parameters``; subclasses call
    :meth:`_config_for` per firing and, when their config has a ``payload``,
    :meth:`_payload_for`."""

    has_payload: ClassVar[bool] = False
    """True for types whose config has Argo's ``payload`` list (built by
    :meth:`_payload_for`)."""

    def __init__(self, config: ConfigT, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self.config: ConfigT = config
        self.params = compile_parameters(config.parameters, where=f"{self.type_name}.parameters")
        status = ctx.policy.status if ctx.policy is not None else None
        self.allow: frozenset[int] | None = (
            frozenset(status.allow) if status is not None and status.allow else None
        )
        """``policy.status.allow`` (Argo's status policy); ``None``: any 2xx succeeds."""
        self.payload: list[CompiledParameter] = (
            compile_parameters(getattr(config, "payload", None), where=f"{self.type_name}.payload")
            if self.has_payload
            else []
        )

    def _status_allowed(self, status: int) -> bool:
        """Whether an answer's status counts as success under ``policy.status``."""
        return status in self.allow if self.allow is not None else 200 <= status <= 299

    def _expected_statuses(self) -> str:
        """The successful statuses, for an error message."""
        return f"policy.status.allow {sorted(self.allow)}" if self.allow is not None else "2xx"

    def _config_for(self, events: Mapping[str, Event]) -> tuple[ConfigT, list[dict[str, Any]]]:
        """The config with the type's ``parameters`` applied, and the parameter records."""
        if not self.params:
            return self.config, []
        doc, records = apply_parameters(dump(cast(SpecModel, self.config)), self.params, events)
        try:
            cfg = self.config_model.model_validate(doc)
        except ValidationError as e:
            raise PermanentError(
                f"{self.type_name} trigger after {self.type_name}.parameters is invalid: {e}"
            ) from e
        return cast(ConfigT, cfg), records

    def _payload_for(
        self, cfg: ConfigT, events: Mapping[str, Event]
    ) -> tuple[bytes, list[dict[str, Any]]]:
        """The payload built from ``events`` with ``cfg``'s ``payload`` (recompiled only
        when a parameter changed it), and the payload's records."""
        compiled = self.payload
        payload: list[TriggerParameter] | None = getattr(cfg, "payload", None)
        if payload != getattr(self.config, "payload", None):
            try:
                compiled = compile_parameters(payload or [], where=f"{self.type_name}.payload")
            except ConfigError as e:
                raise PermanentError(
                    f"{self.type_name} trigger after {self.type_name}.parameters: {e}"
                ) from e
        return construct_payload(compiled, events)


__all__ = ["ParameterizedConfig", "ParameterizedTrigger"]
