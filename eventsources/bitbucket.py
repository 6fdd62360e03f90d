"""Bitbucket Cloud event source (``spec.bitbucket``): Bitbucket webhook deliveries.

Served over the webhook HTTP contract (:class:`eventsources.webhook.WebhookServedSource`);
this module adds Argo's ``BitbucketEventData`` shape and repository hook registration
through the Bitbucket Cloud REST API 2.0 (:mod:`eventsources.hookapi`).

Bitbucket Cloud deliveries are not verified: Argo's manifest has no secret for them
(Bitbucket signs a delivery only when its hook has a secret, which Argo's API cannot
set). Protect the endpoint by network means, or keep its URL unguessable.
"""

from __future__ import annotations

from typing import ClassVar, Final
from urllib.parse import quote

import httpx
from pydantic import Field

from app.kernel.argo import SecretKeySelector
from app.kernel.spec import SpecModel
from eventsources.common import EventSourceFilter, formatted_url
from eventsources.hookapi import HookApi, HookTarget
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import json_provider_data

BITBUCKET_API_URL: Final = "https://api.bitbucket.org/2.0/"


class BitbucketBasicAuth(SpecModel):
    """Argo's ``BitbucketBasicAuth``: username and (app) password from Secrets."""

    username: SecretKeySelector
    password: SecretKeySelector


class BitbucketAuth(SpecModel):
    """Argo's ``BitbucketAuth``: basic auth or an OAuth bearer token."""

    basic: BitbucketBasicAuth | None = None
    oauth_token: SecretKeySelector | None = None


class BitbucketRepository(SpecModel):
    """Argo's ``BitbucketRepository``."""

    owner: str
    repository_slug: str


class BitbucketConfig(SpecModel):
    """One Bitbucket Cloud event (Argo ``BitbucketEventSource``)."""

    delete_hook_on_finish: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: WebhookContext
    auth: BitbucketAuth | None = None
    events: list[str] = Field(default_factory=list)
    owner: str = ""
    project_key: str = ""
    repository_slug: str = ""
    repositories: list[BitbucketRepository] = Field(default_factory=list)
    filter: EventSourceFilter | None = None

    def repository_list(self) -> list[BitbucketRepository]:
        """``repositories``, else the deprecated ``owner``/``repositorySlug`` pair."""
        if self.repositories:
            return self.repositories
        if self.owner and self.repository_slug:
            return [BitbucketRepository(owner=self.owner, repository_slug=self.repository_slug)]
        return []

    def needs_hooks(self) -> bool:
        """Whether hooks are registered: credentials and ``webhook.url`` (Argo's rule)."""
        auth = self.auth
        has_auth = auth is not None and (auth.basic is not None or auth.oauth_token is not None)
        return has_auth and bool(self.webhook.url)


class BitbucketSource(WebhookServedSource[BitbucketConfig]):
    """Receives Bitbucket Cloud webhook deliveries and registers repository hooks.

    Fields of each event (``spec.bitbucket.<eventName>``, Argo's ``BitbucketEventSource``):

    * ``webhook`` (required): where the endpoint is served (Argo's ``WebhookContext``).
    * ``repositories`` (``owner`` + ``repositorySlug``; deprecated ``owner``/
      ``repositorySlug``; at least one): where hooks are registered.
    * ``events`` (``repo:push``, ``pullrequest:created``, ...): what the hook subscribes
      to (required when hooks are registered).
    * ``auth``: ``basic`` (``username`` + ``password`` Secret keys: an app password) or
      ``oauthToken`` (Secret key, sent as a bearer token). With it and ``webhook.url``, a
      hook delivering to ``webhook.url`` + ``webhook.endpoint`` is registered on every
      repository once the port listens; an existing hook with that URL is updated,
      never duplicated.
    * ``deleteHookOnFinish``: delete the registered hooks when the source stops.
    * ``metadata``; ``filter.expression`` over the event data.

    No signature check: Bitbucket Cloud does not sign deliveries of hooks without a
    secret, and Argo's manifest has none (see the module docstring).

    Event data (Argo's ``BitbucketEventData``): ``{"headers": {...}, "body": <the JSON
    payload>, "metadata": {...}}``. Ack/failure semantics: the webhook source's (200
    only after the PubAck, 503 + ``Retry-After`` when the bus is down, 400 for a body
    that is not JSON).
    """

    type_name: ClassVar[str] = "bitbucket"
    config_model: ClassVar[type[SpecModel]] = BitbucketConfig
    api_url: ClassVar[str] = BITBUCKET_API_URL
    """Bitbucket Cloud's API root (Argo's manifest has no field for it)."""

    @classmethod
    def check_event(cls, event_name: str, cfg: BitbucketConfig) -> list[str]:
        """Argo's checks of a Bitbucket event."""
        path = f"spec.bitbucket.{event_name}"
        lines: list[str] = []
        if not cfg.repository_list():
            lines.append(f"{path}.repositories: at least one repository is required")
        if cfg.needs_hooks() and not cfg.events:
            lines.append(f"{path}.events: events must be defined to create a bitbucket webhooks")
        return lines

    async def route_hooks(self, event_name: str, cfg: BitbucketConfig) -> RouteHooks:
        if cfg.needs_hooks() and cfg.auth is not None:
            await self._add_targets(event_name, cfg, cfg.auth)
        return RouteHooks(shaper=json_provider_data, metadata=cfg.metadata)

    async def _add_targets(
        self, event_name: str, cfg: BitbucketConfig, auth: BitbucketAuth
    ) -> None:
        path = f"spec.bitbucket.{event_name}.auth"
        headers: dict[str, str] = {"Accept": "application/json"}
        basic: httpx.Auth | None = None
        if auth.basic is not None:
            user = await self.read_secret(auth.basic.username, f"{path}.basic.username")
            password = await self.read_secret(auth.basic.password, f"{path}.basic.password")
            basic = httpx.BasicAuth(user, password)
        elif auth.oauth_token is not None:
            token = await self.read_secret(auth.oauth_token, f"{path}.oauthToken")
            headers["Authorization"] = f"Bearer {token}"
        api = HookApi(
            provider="Bitbucket",
            base_url=self.api_url,
            headers=headers,
            auth=basic,
            url_of=lambda hook: str(hook.get("url", "")),
            id_of=lambda hook: str(hook["uuid"]),
            update_method="PUT",
            list_key="values",
            page_param="pagelen",
        )
        url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
        body = {"description": "webhook managed by Argo-Events", "url": url, "active": True,
                "events": cfg.events}  # fmt: skip
        for repo in cfg.repository_list():
            owner, slug = quote(repo.owner, safe=""), quote(repo.repository_slug, safe="")
            label = f"repository {repo.owner}/{repo.repository_slug}"
            collection = f"repositories/{owner}/{slug}/hooks"
            target = HookTarget(api, label, collection, url, body, cfg.delete_hook_on_finish)
            self.managed_hooks.add(target)
