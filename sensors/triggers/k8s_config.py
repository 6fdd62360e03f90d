"""Config model of the ``k8s`` trigger (Argo ``StandardK8STrigger``), and the artifact
locations a trigger's object can come from (Argo ``ArtifactLocation``).

The trigger class (:mod:`sensors.triggers.k8s`) is registered with this model in
:mod:`sensors.triggers.registry`; the Sensor model validates ``template.k8s`` with it, so
a typo (``operation: craete``) fails at load time with its path. Which of these fields
the engine implements today is declared in :mod:`app.compose.support`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from app.kernel.spec import SpecModel
from eventsources.common import SecretKeySelector
from sensors.spec import TriggerParameter

K8sOperation = Literal["create", "update", "patch", "delete"]

PATCH_STRATEGIES: frozenset[str] = frozenset(
    {
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    }
)


class ConfigMapKeySelector(SpecModel):
    """A key of a ConfigMap in the Sensor's namespace (``{name, key}``)."""

    name: str
    key: str
    optional: bool | None = None


class FileArtifact(SpecModel):
    """``source.file``: the object is read from a file in the sensor pod."""

    path: str = ""


class URLArtifact(SpecModel):
    """``source.url``: the object is fetched over HTTP(S)."""

    path: str
    verify_cert: bool = False


class GitCreds(SpecModel):
    """Username and password secrets for a Git checkout."""

    username: SecretKeySelector | None = None
    password: SecretKeySelector | None = None


class GitRemoteConfig(SpecModel):
    """A named Git remote with its URLs."""

    name: str
    urls: list[str]


class GithubAppCreds(SpecModel):
    """GitHub App credentials for a Git checkout."""

    private_key: SecretKeySelector
    app_id: int = Field(alias="appID")
    installation_id: int = Field(alias="installationID")


class GitArtifact(SpecModel):
    """``source.git``: the object is a file in a Git repository."""

    url: str
    clone_directory: str
    creds: GitCreds | None = None
    ssh_key_secret: SecretKeySelector | None = None
    file_path: str
    branch: str = ""
    tag: str = ""
    ref: str = ""
    remote: GitRemoteConfig | None = None
    insecure_ignore_host_key: bool = False
    github_app: GithubAppCreds | None = None


class S3Bucket(SpecModel):
    """An S3 bucket and object key."""

    key: str = ""
    name: str


class S3Filter(SpecModel):
    """Object key prefix/suffix constraints."""

    prefix: str = ""
    suffix: str = ""


class S3Artifact(SpecModel):
    """``source.s3``: the object is read from an S3-compatible bucket."""

    endpoint: str
    bucket: S3Bucket
    region: str = ""
    insecure: bool = False
    access_key: SecretKeySelector | None = None
    secret_key: SecretKeySelector | None = None
    events: list[str] = Field(default_factory=list)
    filter: S3Filter | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    ca_certificate: SecretKeySelector | None = None


class ArtifactLocation(SpecModel):
    """Where the object a trigger acts on comes from: exactly one location.

    ``resource`` is the object itself (any mapping), ``inline`` its YAML/JSON text.
    """

    s3: S3Artifact | None = None
    inline: str | None = None
    file: FileArtifact | None = None
    url: URLArtifact | None = None
    configmap: ConfigMapKeySelector | None = None
    git: GitArtifact | None = None
    resource: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ArtifactLocation:
        given = [k for k in ("s3", "inline", "file", "url", "configmap", "git", "resource")
                 if getattr(self, k) is not None]  # fmt: skip
        if not given:
            raise ValueError(
                "no source given (one of resource, inline, file, url, configmap, git, s3)"
            )
        if len(given) > 1:
            raise ValueError(f"only one source may be given, found {', '.join(given)}")
        return self


class K8sTriggerConfig(SpecModel):
    """``template.k8s``: create, update, patch or delete one Kubernetes object.

    ``operation`` defaults to ``create`` (an empty string means the same, as in Argo);
    ``parameters`` are applied to the object after the template-level ones;
    ``patchStrategy`` is one of the four Kubernetes patch media types (default merge);
    ``liveObject`` (update only) fetches the live object instead of the template.
    """

    source: ArtifactLocation
    operation: K8sOperation = "create"
    parameters: list[TriggerParameter] = Field(default_factory=list)
    patch_strategy: str = ""
    live_object: bool = False

    @field_validator("operation", mode="before")
    @classmethod
    def _empty_means_create(cls, v: object) -> object:
        return "create" if v == "" else v

    @field_validator("patch_strategy")
    @classmethod
    def _known_patch_strategy(cls, v: str) -> str:
        if v and v not in PATCH_STRATEGIES:
            raise ValueError(
                f"unknown patch strategy {v!r} (one of {', '.join(sorted(PATCH_STRATEGIES))})"
            )
        return v
