"""Config model of the ``http`` trigger (Argo ``HTTPTrigger``).

Registered in :mod:`sensors.triggers.registry`; the Sensor model validates
``template.http`` with it, so a typo fails at load with its path. The trigger itself is
:mod:`sensors.triggers.http`, whose docstring gives the semantics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from app.kernel.eventbus import TLSConfig
from app.kernel.spec import SpecModel
from eventsources.common import SecretKeySelector
from sensors.spec import TriggerParameter
from sensors.triggers.k8s_config import ConfigMapKeySelector

HttpMethod = Literal["GET", "DELETE", "PATCH", "POST", "PUT"]
"""The methods Argo's validation accepts (case-sensitive, as there)."""

DEFAULT_TIMEOUT_SECONDS = 60
"""Argo's default request timeout."""


class PayloadParameter(TriggerParameter):
    """A ``payload`` entry: a parameter whose ``dest`` may be empty, in which case its
    value is the whole request body (Argo's rule for HTTP payloads)."""

    dest: str = ""

    @field_validator("dest")
    @classmethod
    def _dest_given(cls, v: str) -> str:  # overrides TriggerParameter's non-empty rule
        return v


class ValueFromSource(SpecModel):
    """``valueFrom``: exactly one of a Secret key or a ConfigMap key."""

    secret_key_ref: SecretKeySelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueFromSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("exactly one of secretKeyRef or configMapKeyRef must be given")
        return self


class SecureHeader(SpecModel):
    """``secureHeaders[]``: a header whose value is read from a Secret or ConfigMap."""

    name: str
    value_from: ValueFromSource

    @field_validator("name")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v


class BasicAuth(SpecModel):
    """``basicAuth``: username and password, each from a Secret key (either may be
    omitted: it is then empty, as in Argo)."""

    username: SecretKeySelector | None = None
    password: SecretKeySelector | None = None


class HttpTriggerConfig(SpecModel):
    """``template.http``: send one HTTP request per firing.

    ``url`` (required), ``method`` (GET | DELETE | PATCH | POST | PUT, default POST),
    ``payload`` (parameters building the JSON body), ``parameters`` (applied to this
    config before the request, e.g. ``dest: url``), ``headers``, ``secureHeaders``,
    ``dynamicHeaders`` (parameters whose ``dest`` is the header name), ``basicAuth``,
    ``tls``, ``timeout`` (seconds, default 60), ``host`` (the ``Host`` header).
    """

    url: str
    payload: list[PayloadParameter] = Field(default_factory=list)
    tls: TLSConfig | None = None
    method: HttpMethod = "POST"
    parameters: list[TriggerParameter] = Field(default_factory=list)
    timeout: int = Field(0, ge=0)
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    secure_headers: list[SecureHeader] = Field(default_factory=list)
    dynamic_headers: list[TriggerParameter] = Field(default_factory=list)
    host: str = ""

    @field_validator("url")
    @classmethod
    def _url_given(cls, v: str) -> str:
        if not v:
            raise ValueError("server URL is not specified")
        return v

    @field_validator("method", mode="before")
    @classmethod
    def _empty_means_post(cls, v: object) -> object:
        return "POST" if v in ("", None) else v

    @field_validator("tls")
    @classmethod
    def _client_pair(cls, v: TLSConfig | None) -> TLSConfig | None:
        if v is not None and (v.client_cert_secret is None) != (v.client_key_secret is None):
            raise ValueError("clientCertSecret and clientKeySecret must be given together")
        return v

    @property
    def timeout_seconds(self) -> float:
        """The request timeout in seconds (``timeout``, or Argo's default of 60)."""
        return float(self.timeout or DEFAULT_TIMEOUT_SECONDS)
