"""Bitbucket Server event source (``spec.bitbucketserver``): signed webhook deliveries.

Served over the webhook HTTP contract (:class:`eventsources.webhook.WebhookServedSource`);
this module adds what is Bitbucket Server's (Data Center's): the ``X-Hub-Signature``
HMAC-SHA256 check, Argo's ``BitbucketServerEventData`` shape, and repository webhook
registration through its REST API 1.0 (:mod:`eventsources.hookapi`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final
from urllib.parse import quote

from pydantic import Field

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.spec import SpecModel
from eventsources.common import EventSourceFilter, formatted_url
from eventsources.hookapi import HookApi, HookTarget
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import json_provider_data
from eventsources.webhook_verifiers import hub_signature_verifier

SIGNATURE_HEADER: Final = "X-Hub-Signature"


class BitbucketServerRepository(SpecModel):
    """Argo's ``BitbucketServerRepository``."""

    project_key: str
    repository_slug: str


class BitbucketServerConfig(SpecModel):
    """One Bitbucket Server event (Argo ``BitbucketServerEventSource``)."""

    webhook: WebhookContext
    project_key: str = ""
    repository_slug: str = ""
    projects: list[str] = Field(default_factory=list)
    repositories: list[BitbucketServerRepository] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)
    skip_branch_refs_changed_on_open_pr: bool = Field(False, alias="skipBranchRefsChangedOnOpenPR")
    one_event_per_change: bool = False
    access_token: SecretKeySelector | None = None
    webhook_secret: SecretKeySelector | None = None
    bitbucketserver_base_url: str = Field("", alias="bitbucketserverBaseURL")
    delete_hook_on_finish: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    tls: TLSConfig | None = None
    check_interval: str = ""

    def repository_list(self) -> list[BitbucketServerRepository]:
        """``repositories``, else the deprecated ``projectKey``/``repositorySlug`` pair."""
        if self.repositories:
            return self.repositories
        if self.project_key and self.repository_slug:
            return [BitbucketServerRepository(project_key=self.project_key,
                                              repository_slug=self.repository_slug)]  # fmt: skip
        return []

    def needs_hooks(self) -> bool:
        """Whether hooks are registered (Argo's rule): a token, ``webhook.url`` and
        somewhere to put them."""
        return (
            self.access_token is not None
            and bool(self.webhook.url)
            and bool(self.repository_list() or self.projects)
        )


class BitbucketServerSource(WebhookServedSource[BitbucketServerConfig]):
    """Receives Bitbucket Server deliveries and registers repository webhooks.

    Fields of each event (``spec.bitbucketserver.<eventName>``, Argo's
    ``BitbucketServerEventSource``):

    * ``webhook`` (required): where the endpoint is served (Argo's ``WebhookContext``).
    * ``webhookSecret``: Secret key with the hook's secret; every delivery must carry
      ``X-Hub-Signature: sha256=<HMAC-SHA256 of the body>`` (constant-time compare:
      missing 401, wrong 403, nothing published). Set on registered hooks too.
    * ``events`` (``repo:refs_changed``, ``pr:opened``, ...; required when hooks are
      registered): what the hook subscribes to.
    * ``repositories`` (``projectKey`` + ``repositorySlug``; deprecated ``projectKey``/
      ``repositorySlug``): where hooks are registered.
    * ``bitbucketserverBaseURL`` (required, ``https://bitbucket.example.com/rest``) and
      ``accessToken`` (Secret key, an HTTP access token sent as a bearer token): with them and
      ``webhook.url``, a webhook named "Argo Events" delivering to ``webhook.url`` +
      ``webhook.endpoint`` is registered on every repository once the port listens; an
      existing one with that URL is updated, never duplicated.
    * ``deleteHookOnFinish``: delete the registered hooks when the source stops.
    * ``metadata``; ``filter.expression`` over the event data.
    * Not supported yet (refused when set): ``projects``, ``oneEventPerChange``,
      ``skipBranchRefsChangedOnOpenPR``, ``tls``, ``checkInterval``.

    Event data (Argo's ``BitbucketServerEventData``): ``{"headers": {...}, "body": <the
    JSON payload>, "metadata": {...}}``. Ack/failure semantics: the webhook source's
    (200 only after the PubAck, 503 + ``Retry-After`` when the bus is down, 400 for a
    body that is not JSON).
    """

    type_name: ClassVar[str] = "bitbucketserver"
    config_model: ClassVar[type[SpecModel]] = BitbucketServerConfig

    @classmethod
    def check_event(cls, event_name: str, cfg: BitbucketServerConfig) -> list[str]:
        """Argo's checks of a Bitbucket Server event."""
        path = f"spec.bitbucketserver.{event_name}"
        lines: list[str] = []
        if cfg.needs_hooks() and not cfg.events:
            lines.append(
                f"{path}.events: events must be defined to create a bitbucket server webhook"
            )
        if not cfg.bitbucketserver_base_url:
            lines.append(f"{path}.bitbucketserverBaseURL: bitbucket server base url can't be empty")
        return lines

    async def route_hooks(self, event_name: str, cfg: BitbucketServerConfig) -> RouteHooks:
        path = f"spec.bitbucketserver.{event_name}"
        verifier = None
        secret = ""
        if cfg.webhook_secret is not None:
            secret = await self.read_secret(cfg.webhook_secret, f"{path}.webhookSecret")
            verifier = hub_signature_verifier(secret.encode(), [SIGNATURE_HEADER])
        if cfg.needs_hooks() and cfg.access_token is not None:
            token = await self.read_secret(cfg.access_token, f"{path}.accessToken")
            self._add_targets(cfg, token, secret)
        return RouteHooks(verifier=verifier, shaper=json_provider_data, metadata=cfg.metadata)

    def _add_targets(self, cfg: BitbucketServerConfig, token: str, secret: str) -> None:
        api = HookApi(
            provider="Bitbucket Server",
            base_url=cfg.bitbucketserver_base_url.rstrip("/") + "/api/1.0/",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            url_of=lambda hook: str(hook.get("url", "")),
            id_of=lambda hook: str(hook["id"]),
            update_method="PUT",
            list_key="values",
            page_param="limit",
        )
        url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
        body: dict[str, Any] = {"name": "Argo Events", "url": url, "active": True,
                                "events": cfg.events}  # fmt: skip
        if secret:  # an empty secret makes Bitbucket Server answer 500: leave it out
            body["configuration"] = {"secret": secret}
        for repo in cfg.repository_list():
            key, slug = quote(repo.project_key, safe=""), quote(repo.repository_slug, safe="")
            label = f"repository {repo.project_key}/{repo.repository_slug}"
            collection = f"projects/{key}/repos/{slug}/webhooks"
            target = HookTarget(api, label, collection, url, body, cfg.delete_hook_on_finish)
            self.managed_hooks.add(target)
