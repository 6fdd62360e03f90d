"""GitHub event source (``spec.github``): GitHub webhook deliveries, signature-checked.

Served over the webhook HTTP contract (:class:`eventsources.webhook.WebhookServedSource`);
this module adds what is GitHub's: the ``X-Hub-Signature-256`` check, the ``events``
filter, Argo's ``GithubEventData`` shape, and the hook registration through the GitHub
REST API (:mod:`eventsources.hookapi`).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qs, quote

import orjson
from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.spec import SpecModel
from eventsources.common import EventSourceFilter, formatted_url
from eventsources.hookapi import HookApi, HookTarget
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import (
    BadRequest,
    Request,
    Route,
    Shaper,
    Skip,
    json_body,
    provider_data,
)
from eventsources.webhook_verifiers import hub_signature_verifier

GITHUB_API_URL = "https://api.github.com/"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
SIGNATURE_HEADERS = ("X-Hub-Signature-256", "X-Hub-Signature")
"""The SHA-256 signature, else the legacy SHA-1 one (as go-github's ``ValidatePayload``)."""


class OwnedRepositories(SpecModel):
    """Argo's ``OwnedRepositories``: an owner and some of its repositories."""

    owner: str = ""
    names: list[str] = Field(default_factory=list)


class GithubAppCreds(SpecModel):
    """Argo's ``GithubAppCreds`` (GitHub App authentication; not supported yet)."""

    private_key: SecretKeySelector | None = None
    app_id: int = Field(0, alias="appID")
    installation_id: int = Field(0, alias="installationID")


class GithubConfig(SpecModel):
    """One GitHub event (Argo ``GithubEventSource``)."""

    id: int = 0
    webhook: WebhookContext
    owner: str = ""
    repository: str = ""
    events: list[str] = Field(default_factory=list)
    api_token: SecretKeySelector | None = None
    webhook_secret: SecretKeySelector | None = None
    insecure: bool = False
    active: bool = False
    content_type: str = ""
    github_base_url: str = Field("", alias="githubBaseURL")
    github_upload_url: str = Field("", alias="githubUploadURL")
    delete_hook_on_finish: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    repositories: list[OwnedRepositories] = Field(default_factory=list)
    organizations: list[str] = Field(default_factory=list)
    github_app: GithubAppCreds | None = None
    filter: EventSourceFilter | None = None

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, v: str) -> str:
        if v not in ("", "json", "form"):
            raise ValueError('content type must be "json" or "form"')
        return v

    def owned_repositories(self) -> list[OwnedRepositories]:
        """``repositories``, else the deprecated ``owner``/``repository`` pair."""
        if self.repositories:
            return self.repositories
        if self.owner and self.repository:
            return [OwnedRepositories(owner=self.owner, names=[self.repository])]
        return []

    def needs_hooks(self) -> bool:
        """Whether hooks are registered: an API token and the externally visible URL."""
        return self.api_token is not None and bool(self.webhook.url)


def _payload(request: Request) -> Any:
    """The delivery's JSON: the body, or the ``payload`` field of a form delivery."""
    ctype = request.content_type.split(b";", 1)[0].strip().lower()
    if ctype == b"application/x-www-form-urlencoded":
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        values = form.get("payload")
        if not values:
            raise BadRequest("form delivery without a payload field")
        try:
            return orjson.loads(values[0])
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"payload field is not valid JSON: {e}") from None
    return json_body(request)


def github_shaper(events: list[str]) -> Shaper:
    """The shaper of one GitHub event: deliveries of kinds not in ``events`` are skipped
    (unless ``*``); the data is Argo's ``GithubEventData`` whose body is the payload
    with the ``X-GitHub-Event`` and ``X-GitHub-Delivery`` headers added to it."""
    subscribed = None if not events or "*" in events else frozenset(events)

    def shape(request: Request, route: Route) -> Any:
        kind = request.header(EVENT_HEADER) or ""
        if subscribed is not None and kind not in subscribed:
            raise Skip(f"{EVENT_HEADER} {kind!r} is not in events")
        body = _payload(request)
        if not isinstance(body, dict):
            raise BadRequest("the payload must be a JSON object")
        body[EVENT_HEADER] = kind
        body[DELIVERY_HEADER] = request.header(DELIVERY_HEADER) or ""
        return provider_data(request, route, body)

    return shape


def _hook_id(hook: Any) -> str:
    return str(hook["id"])


def _hook_url(hook: Any) -> str:
    config = hook.get("config")
    return str(config.get("url", "")) if isinstance(config, dict) else ""


class GithubSource(WebhookServedSource[GithubConfig]):
    """Receives GitHub webhook deliveries and registers the hooks with GitHub.

    Fields of each event (``spec.github.<eventName>``, Argo's ``GithubEventSource``):

    * ``webhook`` (required): where the endpoint is served (Argo's ``WebhookContext``:
      ``port``, ``endpoint``, ``method``, ``url``, TLS, ``maxPayloadSize``, ...).
    * ``webhookSecret``: Secret key with the hook's secret. Every delivery must carry
      ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`` (or the legacy SHA-1
      ``X-Hub-Signature``), compared in constant time: missing 401, wrong 403, nothing
      published. Without it deliveries are not verified (as in Argo).
    * ``events``: the event kinds the hook subscribes to (``push``, ``pull_request``,
      ``*``); a delivery whose ``X-GitHub-Event`` is not among them is answered 200
      ``filtered`` and not published.
    * ``repositories`` (``owner`` + ``names``) or ``organizations`` (exactly one of
      them; the deprecated ``owner``/``repository`` pair still works): where hooks go.
    * ``apiToken``: Secret key with a GitHub token; with it and ``webhook.url`` set, a
      hook delivering to ``webhook.url`` + ``webhook.endpoint`` is registered on every
      repository/organization once the port listens: an existing hook with that URL is
      reused and updated (``events``, ``active``, ``contentType``, ``insecure``, the
      secret), never duplicated. Failures are logged and retried; the endpoint serves
      meanwhile.
    * ``deleteHookOnFinish``: delete the registered hooks when the source stops.
    * ``active``, ``contentType`` (``json``/``form``), ``insecure`` (GitHub's
      ``insecure_ssl``): settings of the registered hook.
    * ``githubBaseURL`` / ``githubUploadURL``: GitHub Enterprise API URLs (both or
      neither; only the base URL is used: hooks are not uploads).
    * ``metadata``: copied into every event; ``filter.expression``: over the event data.

    Event data (Argo's ``GithubEventData``): ``{"headers": {...}, "body": <payload with
    "X-GitHub-Event" and "X-GitHub-Delivery" added>, "metadata": {...}}``.

    Ack/failure semantics: the webhook source's: 200 only after the bus holds the
    event, 503 + ``Retry-After`` when it does not (GitHub shows the failed delivery and
    it can be redelivered), 400 for a payload that is not a JSON object.
    """

    type_name: ClassVar[str] = "github"
    config_model: ClassVar[type[SpecModel]] = GithubConfig

    @classmethod
    def check_event(cls, event_name: str, cfg: GithubConfig) -> list[str]:
        """Argo's checks of a GitHub event, with the field named."""
        path = f"spec.github.{event_name}"
        lines: list[str] = []
        repos, orgs = cfg.owned_repositories(), cfg.organizations
        if not repos and not orgs:
            lines.append(f"{path}.repositories: either repositories or organizations is required")
        if repos and orgs:
            lines.append(f"{path}.organizations: only one of repositories and organizations")
        if cfg.needs_hooks() and not cfg.events:
            lines.append(f"{path}.events: events must be defined to create a github webhook")
        if bool(cfg.github_base_url) != bool(cfg.github_upload_url):
            lines.append(f"{path}.githubBaseURL: githubBaseURL and githubUploadURL go together")
        return lines

    async def route_hooks(self, event_name: str, cfg: GithubConfig) -> RouteHooks:
        path = f"spec.github.{event_name}"
        verifier = None
        secret = ""
        if cfg.webhook_secret is not None:
            secret = await self.read_secret(cfg.webhook_secret, f"{path}.webhookSecret")
            verifier = hub_signature_verifier(secret.encode(), SIGNATURE_HEADERS)
        if cfg.needs_hooks() and cfg.api_token is not None:
            token = await self.read_secret(cfg.api_token, f"{path}.apiToken")
            self._add_targets(cfg, token, secret)
        shaper = github_shaper(cfg.events)
        return RouteHooks(verifier=verifier, shaper=shaper, metadata=cfg.metadata)

    def _add_targets(self, cfg: GithubConfig, token: str, secret: str) -> None:
        base = cfg.github_base_url or GITHUB_API_URL
        api = HookApi(
            provider="GitHub",
            base_url=base if base.endswith("/") else base + "/",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            url_of=_hook_url,
            id_of=_hook_id,
            update_method="PATCH",
        )
        url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
        config: dict[str, str] = {"url": url, "insecure_ssl": "1" if cfg.insecure else "0"}
        if cfg.content_type:
            config["content_type"] = cfg.content_type
        if secret:
            config["secret"] = secret
        body = {"name": "web", "active": cfg.active, "events": cfg.events, "config": config}
        places = [(f"organization {org}", f"orgs/{quote(org, safe='')}/hooks")
                  for org in cfg.organizations]  # fmt: skip
        for repo in cfg.owned_repositories():
            for name in repo.names:
                collection = f"repos/{quote(repo.owner, safe='')}/{quote(name, safe='')}/hooks"
                places.append((f"repository {repo.owner}/{name}", collection))
        for label, collection in places:
            self.managed_hooks.add(
                HookTarget(api, label, collection, url, body, cfg.delete_hook_on_finish)
            )
