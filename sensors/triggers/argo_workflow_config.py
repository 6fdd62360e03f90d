"""Config model of the ``argoWorkflow`` trigger (Argo ``ArgoWorkflowTrigger``), and the
reading of its ``args``.

Registered in :mod:`sensors.triggers.registry`; the Sensor model validates
``template.argoWorkflow`` with it. The trigger is :mod:`sensors.triggers.argo_workflow`.

``args`` are extra ``argo`` CLI arguments in Argo Events. Triggerfish never runs a CLI:
it reads the arguments that have an equivalent in the Workflow object when the
manifest is loaded (:func:`parse_args`) and refuses any other with a line that names
it, so nothing is silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.k8s_config import ArtifactLocation

ArgoWorkflowOperation = Literal[
    "submit", "submit-from", "suspend", "resubmit", "retry", "resume", "terminate", "stop"
]
"""Every operation Argo accepts (which ones run is declared in :mod:`app.compose.support`)."""


@dataclass(frozen=True)
class SubmitOptions:
    """What ``args`` map to, as the ``argo submit`` flags of the same names do.

    ``parameters`` (``-p``/``--parameter NAME=VALUE``, repeatable) replace the
    Workflow's ``spec.arguments.parameters`` of the same names and come first;
    ``entrypoint`` (``--entrypoint``), ``service_account`` (``--serviceaccount``) and
    ``priority`` (``--priority``) set those spec fields; ``labels`` (``-l``/``--labels
    k=v,k2=v2``) are added to the metadata; ``instance_id`` (``--instanceid``) sets the
    controller instance label; ``generate_name`` (``--generate-name``) and ``name``
    (``--name``) set the metadata names.
    """

    parameters: tuple[tuple[str, str], ...] = ()
    entrypoint: str = ""
    service_account: str = ""
    priority: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    instance_id: str = ""
    generate_name: str = ""
    name: str = ""


_FLAGS: dict[str, str] = {
    "-p": "parameters",
    "--parameter": "parameters",
    "--entrypoint": "entrypoint",
    "--serviceaccount": "service_account",
    "--priority": "priority",
    "-l": "labels",
    "--labels": "labels",
    "--instanceid": "instance_id",
    "--generate-name": "generate_name",
    "--name": "name",
}
"""Flag → :class:`SubmitOptions` field."""

_ALLOWED: dict[str, frozenset[str]] = {
    "submit": frozenset(_FLAGS),
    "submit-from": frozenset(_FLAGS),
    "resubmit": frozenset({"-p", "--parameter"}),
}


def _pair(flag: str, item: str) -> tuple[str, str]:
    name, sep, val = item.partition("=")
    if not sep or not name:
        raise ValueError(f"args: {flag} expects NAME=VALUE, got {item!r}")
    return name, val


def parse_args(args: list[str], operation: str) -> SubmitOptions:
    """Read ``args`` for ``operation``; ``ValueError`` naming the first argument that
    has no equivalent (``... is not supported``) or a malformed value.

    Accepted forms: ``--flag value``, ``--flag=value``, ``-p value``, ``-pvalue``.
    """
    allowed = _ALLOWED.get(operation, frozenset())
    strings: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    labels: list[tuple[str, str]] = []
    priority: int | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg[:2] in ("-p", "-l") and len(arg) > 2:  # -pNAME=VALUE, -p=NAME=VALUE
            flag, eq, value = arg[:2], "=", arg[2:].removeprefix("=")
        else:
            flag, eq, value = arg.partition("=")
        if flag not in allowed:
            supported = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"args: {flag!r} is not supported for operation {operation} (Triggerfish "
                f"uses the Kubernetes API, not the argo CLI; args it maps: {supported})"
            )
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"args: {flag} needs a value")
            i += 1
            value = args[i]
        option = _FLAGS[flag]
        if option == "parameters":
            params.append(_pair(flag, value))
        elif option == "labels":
            labels.extend(_pair(flag, item) for item in value.split(","))
        elif option == "priority":
            try:
                priority = int(value)
            except ValueError:
                raise ValueError(f"args: {flag} expects an integer, got {value!r}") from None
        else:
            strings[option] = value
        i += 1
    return SubmitOptions(
        parameters=tuple(params),
        entrypoint=strings.get("entrypoint", ""),
        service_account=strings.get("service_account", ""),
        priority=priority,
        labels=tuple(labels),
        instance_id=strings.get("instance_id", ""),
        generate_name=strings.get("generate_name", ""),
        name=strings.get("name", ""),
    )


class ArgoWorkflowTriggerConfig(SpecModel):
    """``template.argoWorkflow``: act on an Argo Workflow through the Kubernetes API.

    ``source`` (as for ``k8s``: the Workflow to submit, or for the other operations an
    object whose ``metadata.name`` names the Workflow / WorkflowTemplate /
    ClusterWorkflowTemplate / CronWorkflow), ``operation`` (default ``submit``; an
    empty string means the same), ``parameters`` (applied to the source object),
    ``args`` (see :func:`parse_args`).
    """

    source: ArtifactLocation
    operation: ArgoWorkflowOperation = "submit"
    parameters: list[TriggerParameter] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)

    @field_validator("operation", mode="before")
    @classmethod
    def _empty_means_submit(cls, v: object) -> object:
        return "submit" if v in ("", None) else v

    @model_validator(mode="after")
    def _args_map(self) -> ArgoWorkflowTriggerConfig:
        parse_args(self.args, self.operation)
        return self

    @property
    def submit_options(self) -> SubmitOptions:
        """``args`` read for ``operation`` (validated at load)."""
        return parse_args(self.args, self.operation)
