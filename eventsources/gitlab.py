"""GitLab event source (``spec.gitlab``): GitLab webhook deliveries, token-checked.

Served over the webhook HTTP contract (:class:`eventsources.webhook.WebhookServedSource`);
this module adds what is GitLab's: the ``X-Gitlab-Token`` check, Argo's
``GitLabEventData`` shape, and project/group hook registration through the GitLab REST
API v4 (:mod:`eventsources.hookapi`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final
from urllib.parse import quote

from pydantic import Field

from app.kernel.argo import SecretKeySelector
from app.kernel.spec import SpecModel
from eventsources.common import EventSourceFilter, formatted_url
from eventsources.hookapi import HookApi, HookTarget
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import (
    MASKED_AUTHORIZATION,
    Request,
    Route,
    json_body,
    provider_data,
)
from eventsources.webhook_verifiers import header_token_verifier

TOKEN_HEADER: Final = "X-Gitlab-Token"

HOOK_EVENTS: Final = (
    "ConfidentialIssuesEvents", "ConfidentialNoteEvents", "DeploymentEvents", "EmojiEvents",
    "IssuesEvents", "JobEvents", "MergeRequestsEvents", "NoteEvents", "PipelineEvents",
    "PushEvents", "ReleasesEvents", "TagPushEvents", "WikiPageEvents",
)  # fmt: skip
"""Argo's ``events`` values: the boolean fields of go-gitlab's ``AddProjectHookOptions``."""


def _api_field(event: str) -> str:
    """``MergeRequestsEvents`` → ``merge_requests_events`` (the REST API's name)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", event).lower()


def gitlab_data(request: Request, route: Route) -> Any:
    """Argo's ``GitLabEventData`` of a delivery, with the ``X-Gitlab-Token`` header (the
    shared secret itself, unlike a signature) masked as ``Authorization`` is."""
    body = json_body(request)
    data = provider_data(request, route, body)
    if TOKEN_HEADER in request.headers:
        data["headers"] = {**request.headers, TOKEN_HEADER: [MASKED_AUTHORIZATION]}
    return data


class GitlabConfig(SpecModel):
    """One GitLab event (Argo ``GitlabEventSource``)."""

    webhook: WebhookContext
    project_id: str = Field("", alias="projectID")
    events: list[str] = Field(default_factory=list)
    access_token: SecretKeySelector | None = None
    enable_ssl_verification: bool = Field(False, alias="enableSSLVerification")
    gitlab_base_url: str = Field("", alias="gitlabBaseURL")
    delete_hook_on_finish: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    projects: list[str] = Field(default_factory=list)
    secret_token: SecretKeySelector | None = None
    filter: EventSourceFilter | None = None
    groups: list[str] = Field(default_factory=list)

    def project_list(self) -> list[str]:
        """``projects``, else the deprecated ``projectID``."""
        return self.projects or ([self.project_id] if self.project_id else [])

    def needs_hooks(self) -> bool:
        """Whether hooks are registered: an access token and ``webhook.url`` (Argo's rule)."""
        return self.access_token is not None and bool(self.webhook.url)


class GitlabSource(WebhookServedSource[GitlabConfig]):
    """Receives GitLab webhook deliveries and registers project/group hooks with GitLab.

    Fields of each event (``spec.gitlab.<eventName>``, Argo's ``GitlabEventSource``):

    * ``webhook`` (required): where the endpoint is served (Argo's ``WebhookContext``).
    * ``secretToken``: Secret key with the hook's secret token; every delivery must
      carry it in ``X-Gitlab-Token`` (constant-time compare: missing 401, other 403,
      nothing published). It is also set on the registered hooks.
    * ``events`` (required): go-gitlab hook flags (``PushEvents``, ``TagPushEvents``,
      ``MergeRequestsEvents``, ...); the registered hook subscribes to exactly these.
    * ``projects`` (ids or ``group/project`` paths; deprecated ``projectID``) and
      ``groups``: where hooks are registered.
    * ``accessToken`` (required, as in Argo) and ``gitlabBaseURL`` (required, e.g.
      ``https://gitlab.com``): the REST API; with ``webhook.url`` set, a hook delivering
      to ``webhook.url`` + ``webhook.endpoint`` is registered on every project and group
      once the port listens; an existing hook with that URL is updated, never
      duplicated; ``enableSSLVerification`` is set on it.
    * ``deleteHookOnFinish``: delete the registered hooks when the source stops.
    * ``metadata``; ``filter.expression`` over the event data.

    Event data (Argo's ``GitLabEventData``): ``{"headers": {...}, "body": <the JSON
    payload>, "metadata": {...}}``, with the ``X-Gitlab-Token`` value masked (it is the
    secret itself). Ack/failure semantics: the webhook source's (200
    only after the PubAck, 503 + ``Retry-After`` when the bus is down, 400 for a body
    that is not JSON; GitLab retries failed deliveries).
    """

    type_name: ClassVar[str] = "gitlab"
    config_model: ClassVar[type[SpecModel]] = GitlabConfig

    @classmethod
    def check_event(cls, event_name: str, cfg: GitlabConfig) -> list[str]:
        """Argo's checks of a GitLab event, plus unknown ``events`` names."""
        path = f"spec.gitlab.{event_name}"
        lines: list[str] = []
        if not cfg.events:
            lines.append(f"{path}.events: events can't be empty")
        for i, event in enumerate(cfg.events):
            if event not in HOOK_EVENTS:
                lines.append(
                    f"{path}.events[{i}]: unknown event {event!r} (one of {', '.join(HOOK_EVENTS)})"
                )
        if not cfg.gitlab_base_url:
            lines.append(f"{path}.gitlabBaseURL: gitlab base url can't be empty")
        if cfg.access_token is None:
            lines.append(f"{path}.accessToken: access token can't be nil")
        return lines

    async def route_hooks(self, event_name: str, cfg: GitlabConfig) -> RouteHooks:
        path = f"spec.gitlab.{event_name}"
        verifier = None
        secret = ""
        if cfg.secret_token is not None:
            secret = await self.read_secret(cfg.secret_token, f"{path}.secretToken")
            verifier = header_token_verifier(TOKEN_HEADER, secret.encode())
        if cfg.needs_hooks() and cfg.access_token is not None:
            token = await self.read_secret(cfg.access_token, f"{path}.accessToken")
            self._add_targets(cfg, token, secret)
        return RouteHooks(verifier=verifier, shaper=gitlab_data, metadata=cfg.metadata)

    def _add_targets(self, cfg: GitlabConfig, token: str, secret: str) -> None:
        api = HookApi(
            provider="GitLab",
            base_url=cfg.gitlab_base_url.rstrip("/") + "/api/v4/",
            headers={"PRIVATE-TOKEN": token},
            url_of=lambda hook: str(hook.get("url", "")),
            id_of=lambda hook: str(hook["id"]),
            update_method="PUT",
        )
        url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
        body: dict[str, Any] = {"url": url, "enable_ssl_verification": cfg.enable_ssl_verification}
        body.update({_api_field(e): e in cfg.events for e in HOOK_EVENTS})
        if secret:
            body["token"] = secret
        places = [(f"group {g}", f"groups/{quote(g, safe='')}/hooks") for g in cfg.groups]
        places += [(f"project {p}", f"projects/{quote(p, safe='')}/hooks")
                   for p in cfg.project_list()]  # fmt: skip
        for label, collection in places:
            self.managed_hooks.add(
                HookTarget(api, label, collection, url, body, cfg.delete_hook_on_finish)
            )
