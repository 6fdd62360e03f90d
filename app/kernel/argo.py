"""Argo's spec building blocks that every kind shares: API version, Go durations,
secret and config-map selectors, pod templates, TLS and SASL settings.

Why here: the EventBus, EventSource and Sensor models and the plugins' config models all
use them, and they must not import each other to get them (DESIGN §2). Pure models: this
module imports nothing of ours but the spec base.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import Field

from app.kernel.spec import SpecModel

API_VERSION: Final = "argoproj.io/v1alpha1"


# ---------------------------------------------------------------------------------------
# Selectors


class SecretKeySelector(SpecModel):
    """A key of a Kubernetes Secret in the EventSource's namespace (``{name, key}``)."""

    name: str
    key: str
    optional: bool | None = None


class ConfigMapKeySelector(SpecModel):
    """A key of a ConfigMap in the Sensor's namespace (``{name, key}``)."""

    name: str
    key: str
    optional: bool | None = None


# ---------------------------------------------------------------------------------------
# Durations and amounts, the way Argo's Go code reads them.

_GO_UNITS_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string (``"1s"``, ``"1h30m"``, ``"300ms"``).

    Raises ``ValueError`` for anything Go would reject (a bare number needs a unit,
    except ``"0"``).
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _GO_DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"invalid duration {text!r} (expected a number with a unit: ns, us, ms, s, m, h)"
            )
        total += float(m.group(1)) * _GO_UNITS_SECONDS[m.group(2)]
        pos = m.end()
    return sign * total


def duration_seconds(value: int | str) -> float:
    """Seconds in an Argo ``Int64OrString`` duration: an int is nanoseconds, a string is
    a Go duration."""
    if isinstance(value, int):
        return value / 1e9
    return parse_go_duration(value)


# ---------------------------------------------------------------------------------------
# Pod-level building blocks (Argo's Template, Container, ContainerTemplate, Metadata).
# Kubernetes core types below them (tolerations, affinity, volumes, ...) are kept as
# plain mappings: the API server validates those, and Triggerfish only passes them on.


class PodMetadata(SpecModel):
    """Labels and annotations put on the pods (Argo ``Metadata``)."""

    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class LocalObjectReference(SpecModel):
    """A reference to an object by name in the same namespace (image pull secrets)."""

    name: str = ""


class ContainerTemplate(SpecModel):
    """Customisation of a bus container (Argo ``ContainerTemplate``)."""

    resources: dict[str, Any] = Field(default_factory=dict)
    image_pull_policy: str = ""
    security_context: dict[str, Any] | None = None


class Container(SpecModel):
    """Customisation of the main container of a source or sensor pod (Argo ``Container``)."""

    resources: dict[str, Any] = Field(default_factory=dict)
    image_pull_policy: str = ""
    security_context: dict[str, Any] | None = None
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)
    env_from: list[dict[str, Any]] = Field(default_factory=list)


class PodTemplate(SpecModel):
    """The pod specification of an EventSource or Sensor deployment (Argo ``Template``).

    Argo's own keys are typed and unknown keys rejected; the Kubernetes core types they
    hold (volumes, tolerations, affinity, security contexts) are passed on as mappings.
    """

    metadata: PodMetadata | None = None
    service_account_name: str = ""
    container: Container | None = None
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    priority_class_name: str = ""
    priority: int | None = None
    affinity: dict[str, Any] | None = None


class TLSConfig(SpecModel):
    """Client TLS settings (Argo ``TLSConfig``)."""

    ca_cert_secret: SecretKeySelector | None = None
    client_cert_secret: SecretKeySelector | None = None
    client_key_secret: SecretKeySelector | None = None
    insecure_skip_verify: bool = False
    enabled: bool = False


class SASLConfig(SpecModel):
    """Kafka SASL settings (Argo ``SASLConfig``)."""

    mechanism: str = ""
    user_secret: SecretKeySelector | None = None
    password_secret: SecretKeySelector | None = None
