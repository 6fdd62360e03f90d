"""Where the object of a ``k8s`` or ``argoWorkflow`` trigger comes from (Argo
``ArtifactLocation``), shared by both trigger types.

:class:`ResourceSource` is built from ``<type>.source`` when the trigger is built and
hands out the object template with :meth:`ResourceSource.load`:

* ``resource``: the object given inline in the manifest;
* ``inline``: YAML or JSON text, parsed when the trigger is built;
* ``file: {path}``: a YAML/JSON file in the sensor's filesystem, read when the trigger is
  built (a file mounted from a ConfigMap, as in Argo's example);
* ``url: {path, verifyCert}``: fetched over HTTP(S) at first use, with a timeout of
  :data:`URL_TIMEOUT_SECONDS`, at most :data:`URL_MAX_BYTES` (Argo's limit), answer 200
  only; ``verifyCert: false`` (Argo's default) skips certificate verification;
* ``configmap: {name, key}``: a key of a ConfigMap in the Sensor's namespace, read
  through the Kubernetes API at first use (Argo reads a volume mounted into the pod).

Fetched objects (url, configmap) are cached in the context's
:class:`~sensors.triggers.base.SharedCache` per location, so trigger instances rebuilt
per firing do not fetch again; a changed URL or ConfigMap is seen after a restart.
``git`` and ``s3`` are not supported (the support table refuses them at load).

Failures: a source that cannot be parsed or is not a YAML/JSON object, a missing file,
a missing ConfigMap or key, a URL answering other than 200, an invalid URL →
:class:`~app.kernel.errors.PermanentError` (raised when the trigger is built for the static
sources, else on the firing, which is dead-lettered). A URL that cannot be reached or
times out, or an API error a retry may fix → :class:`~app.kernel.errors.TransientError`.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, model_validator

from app.kernel.argo import ConfigMapKeySelector, SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel

if TYPE_CHECKING:
    import aiohttp

    from sensors.triggers.base import TriggerContext


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


URL_TIMEOUT_SECONDS = 30.0
"""Total time allowed to fetch a ``url`` source."""

URL_MAX_BYTES = 512 * 1024
"""Largest ``url`` source read (Argo's limit); longer bodies are rejected."""

SOURCE_KINDS = ("resource", "inline", "file", "url", "configmap", "git", "s3")
SUPPORTED_KINDS = frozenset({"resource", "inline", "file", "url", "configmap"})

_SESSION_KEY = ("aiohttp.ClientSession",)


def parse_object(text: str | bytes, what: str) -> dict[str, Any]:
    """Parse YAML (or JSON) text into one object; :class:`PermanentError` otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PermanentError(f"{what} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise PermanentError(f"{what} is not a YAML/JSON object")
    return data


async def http_session(ctx: TriggerContext) -> aiohttp.ClientSession:
    """The context's shared HTTP client session (created at first use, closed by
    ``ctx.shared.aclose()``); triggers pass timeouts and TLS settings per request."""
    import aiohttp

    async def create() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            headers={"User-Agent": "triggerfish"},
        )

    return await ctx.shared.get(_SESSION_KEY, create)


class ResourceSource:
    """The object template of one trigger, from its ``source`` (see the module doc).

    ``where`` names the field in messages (``k8s.source``). The static kinds
    (resource, inline, file) are read here, so a bad one fails when the trigger is
    built (a file only with ``read_files``: validating manifests away from the pod that
    runs them leaves it for the first firing); :attr:`static` is then the object.
    :meth:`load` returns the object, which callers must not modify (``apply_parameters``
    copies it).
    """

    def __init__(
        self, location: ArtifactLocation | None, *, where: str, read_files: bool = True
    ) -> None:
        self.where = where
        if location is None:
            raise PermanentError(f"{where} is not given")
        self.location = location
        given = [k for k in SOURCE_KINDS if getattr(location, k) is not None]
        if not given:
            raise PermanentError(f"{where} has no resource, inline, file, url or configmap")
        self.kind = given[0]
        if self.kind not in SUPPORTED_KINDS:
            raise PermanentError(f"{where}.{self.kind} is not supported")
        self.static: dict[str, Any] | None = None
        if location.resource is not None:
            if not location.resource:
                raise PermanentError(f"{where}.resource is empty")
            self.static = copy.deepcopy(dict(location.resource))
        elif location.inline is not None:
            self.static = parse_object(location.inline, f"{where}.inline")
        elif location.file is not None:
            if not location.file.path:
                raise PermanentError(f"{where}.file.path is empty")
            if read_files:
                self.static = self._read_file(location.file.path)

    def _read_file(self, path: str) -> dict[str, Any]:
        if not path:
            raise PermanentError(f"{self.where}.file.path is empty")
        try:
            text = Path(path).read_bytes()
        except OSError as e:
            raise PermanentError(f"{self.where}.file: cannot read {path}: {e}") from e
        return parse_object(text, f"{self.where}.file {path}")

    async def load(self, ctx: TriggerContext, namespace: str) -> dict[str, Any]:
        """The object template; fetched (and cached) at first use for url/configmap."""
        if self.static is not None:
            return self.static
        loc = self.location
        if loc.url is not None:
            url, verify = loc.url.path, loc.url.verify_cert
            return await ctx.shared.get(
                ("source.url", url, verify), lambda: self._fetch_url(ctx, url, verify)
            )
        if loc.file is not None:  # not read when built (manifest validation): read it now
            self.static = self._read_file(loc.file.path)
            return self.static
        if loc.configmap is not None:
            name, key = loc.configmap.name, loc.configmap.key
            return await ctx.shared.get(
                ("source.configmap", namespace, name, key),
                lambda: self._read_configmap(ctx, namespace, name, key),
            )
        raise PermanentError(f"{self.where}.{self.kind} is not supported")  # unreachable

    async def _fetch_url(self, ctx: TriggerContext, url: str, verify: bool) -> dict[str, Any]:
        import aiohttp

        what = f"{self.where}.url {url}"
        if not url.startswith(("http://", "https://")):
            raise PermanentError(f"{what}: only http and https URLs are supported")
        session = await http_session(ctx)
        try:
            async with session.get(
                url, ssl=verify, timeout=aiohttp.ClientTimeout(total=URL_TIMEOUT_SECONDS)
            ) as resp:
                if resp.status != 200:
                    raise PermanentError(f"{what}: answered {resp.status}, expected 200")
                body = bytearray()
                while len(body) <= URL_MAX_BYTES:
                    chunk = await resp.content.read(URL_MAX_BYTES + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
        except TimeoutError as e:
            raise TransientError(f"{what}: timed out after {URL_TIMEOUT_SECONDS:g}s") from e
        except (aiohttp.InvalidURL, aiohttp.ClientConnectorCertificateError) as e:
            raise PermanentError(f"{what}: {e}") from e
        except aiohttp.ClientError as e:
            raise TransientError(f"{what}: {e}") from e
        if len(body) > URL_MAX_BYTES:
            raise PermanentError(f"{what}: larger than {URL_MAX_BYTES} bytes")
        ctx.log.info("%s fetched (%d bytes)", what, len(body))
        return parse_object(bytes(body), what)

    async def _read_configmap(
        self, ctx: TriggerContext, namespace: str, name: str, key: str
    ) -> dict[str, Any]:
        what = f"{self.where}.configmap {namespace}/{name}"
        cm = await ctx.kube.get("v1", "ConfigMap", name, namespace)
        if cm is None:
            raise PermanentError(f"{what} not found")
        data = cm.get("data") or {}
        if key in data:
            return parse_object(str(data[key]), f"{what} key {key!r}")
        binary = cm.get("binaryData") or {}
        if key in binary:
            return parse_object(base64.b64decode(binary[key]), f"{what} key {key!r}")
        raise PermanentError(f"{what} has no key {key!r}")
