"""Registering a webhook with a Git hosting provider's REST API, idempotently.

GitHub, GitLab, Bitbucket Cloud and Bitbucket Server all keep hooks the same way: a
collection per repository (or organization, project, group) that can be listed,
created in, updated and deleted from, each hook carrying the URL it delivers to. What
differs is the base URL, the auth header, where a hook's URL and id sit in the JSON,
the update verb and the body; a :class:`HookApi` holds those, and :class:`ManagedHooks`
does the rest for every webhook-served type
(:meth:`eventsources.webhook.WebhookServedSource.register_hooks`):

* a hook whose URL is ours is reused and updated to the wanted settings, never
  duplicated (a restart, or several replicas, leave exactly one hook);
* each target is done once; a failed one is retried on the next call;
* on shutdown the hooks of targets with ``deleteHookOnFinish`` are deleted (a 404 is
  fine: someone removed it already), found by URL when a shutdown cut the
  registration short.

Credentials are sent as headers only and never logged; request bodies (which may carry
the hook's secret) are never logged either. Errors name the provider, the target and
the HTTP status with the provider's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

TIMEOUT_SECONDS: Final = 10.0
"""One REST call's timeout (connect, read, write)."""

PAGE_SIZE: Final = 100
"""Hooks listed per collection (one page; a repository rarely has more)."""


class HookApiError(Exception):
    """A provider's REST API refused or failed a hook call (status and message)."""


@dataclass(frozen=True)
class HookApi:
    """How one provider's hook collections are reached and read."""

    provider: str
    """For messages: ``GitHub``, ``GitLab``, ..."""
    base_url: str
    """The API root, ending in ``/`` (collections are relative to it)."""
    headers: Mapping[str, str] = field(repr=False)
    """Auth and media-type headers sent with every call (never logged)."""
    url_of: Callable[[Mapping[str, Any]], str]
    """The URL a listed hook delivers to."""
    id_of: Callable[[Mapping[str, Any]], str]
    """A listed or created hook's id, as used in its path."""
    update_method: str = "PATCH"
    list_key: str | None = None
    """Where the list of hooks is in a list answer (``values``); ``None``: the answer."""
    page_param: str | None = "per_page"
    auth: httpx.Auth | None = field(default=None, repr=False)

    def client(self) -> httpx.AsyncClient:
        """A client for this API (the caller closes it)."""
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=dict(self.headers),
            auth=self.auth,
            timeout=TIMEOUT_SECONDS,
            follow_redirects=False,
        )


@dataclass(frozen=True)
class HookTarget:
    """One hook to keep: where, delivering to which URL, with which settings."""

    api: HookApi
    label: str
    """For messages: ``repository argoproj/argo-events``."""
    collection: str
    """The hooks collection, relative to the API root: ``repos/argoproj/argo-events/hooks``."""
    url: str
    """The URL the hook delivers to (``webhook.url`` + ``webhook.endpoint``)."""
    body: Mapping[str, Any] = field(repr=False)
    """The create/update request body (may hold the hook's secret: never logged)."""
    delete_on_finish: bool = False


async def _call(
    client: httpx.AsyncClient,
    api: HookApi,
    target: HookTarget,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, str | int] | None = None,
    ok_missing: bool = False,
) -> Any:
    try:
        response = await client.request(method, path, json=body, params=params)
    except httpx.HTTPError as e:
        raise HookApiError(
            f"{api.provider} {target.label}: {method} hooks failed: {type(e).__name__}: {e}"
        ) from e
    if ok_missing and response.status_code == 404:
        return None
    if response.status_code >= 300:
        message = response.text[:300].strip()
        raise HookApiError(
            f"{api.provider} {target.label}: {method} hooks answered "
            f"{response.status_code}: {message}"
        )
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as e:
        raise HookApiError(
            f"{api.provider} {target.label}: {method} hooks answered non-JSON"
        ) from e


async def _find_hook(client: httpx.AsyncClient, target: HookTarget) -> str | None:
    """The id of the hook in ``target``'s collection delivering to ``target.url``."""
    api = target.api
    params = {api.page_param: PAGE_SIZE} if api.page_param else None
    listed = await _call(client, api, target, "GET", target.collection, params=params)
    hooks = listed.get(api.list_key, []) if api.list_key and isinstance(listed, dict) else listed
    if not isinstance(hooks, list):
        raise HookApiError(f"{api.provider} {target.label}: unexpected hook list {hooks!r:.100}")
    for hook in hooks:
        if isinstance(hook, dict) and api.url_of(hook) == target.url:
            return api.id_of(hook)
    return None


async def ensure_hook(client: httpx.AsyncClient, target: HookTarget) -> str:
    """Make ``target``'s hook exist with its settings; its id. Reuses (and updates) a
    hook already delivering to ``target.url`` instead of adding a second one."""
    api = target.api
    hook_id = await _find_hook(client, target)
    if hook_id is not None:
        path = f"{target.collection}/{quote(hook_id, safe='')}"
        await _call(client, api, target, api.update_method, path, body=target.body)
        return hook_id
    created = await _call(client, api, target, "POST", target.collection, body=target.body)
    if not isinstance(created, dict):
        raise HookApiError(f"{api.provider} {target.label}: create answered {created!r:.100}")
    return api.id_of(created)


class ManagedHooks:
    """The hooks one EventSource keeps; registered and removed as a whole."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._targets: list[HookTarget] = []
        self._ids: dict[int, str] = {}
        """Registered hook id by the target's index."""

    def add(self, target: HookTarget) -> None:
        """Keep ``target``'s hook (from the next :meth:`register` on)."""
        self._targets.append(target)

    @property
    def targets(self) -> list[HookTarget]:
        return list(self._targets)

    @property
    def complete(self) -> bool:
        """Whether every target's hook is registered."""
        return len(self._ids) == len(self._targets)

    async def register(self) -> bool:
        """Ensure every target's hook not yet done; ``True`` when all are. Failures are
        logged per target and raised together (the caller retries later)."""
        errors: list[str] = []
        for index, target in enumerate(self._targets):
            if index in self._ids:
                continue
            try:
                async with target.api.client() as client:
                    hook_id = await ensure_hook(client, target)
            except HookApiError as e:
                errors.append(str(e))
                continue
            self._ids[index] = hook_id
            self._log.info(
                "%s hook %s for %s delivers to %s",
                target.api.provider,
                hook_id,
                target.label,
                target.url,
            )
        if errors:
            raise HookApiError("; ".join(errors))
        return True

    async def unregister(self) -> None:
        """Delete the hooks of targets with ``delete_on_finish``: by the id registered,
        or, for a registration cut short (stopped while the create was under way), the
        hook found delivering to our URL."""
        errors: list[str] = []
        for index, target in enumerate(self._targets):
            if not target.delete_on_finish:
                continue
            try:
                async with target.api.client() as client:
                    hook_id = self._ids.get(index) or await _find_hook(client, target)
                    if hook_id is None:
                        continue
                    path = f"{target.collection}/{quote(hook_id, safe='')}"
                    await _call(client, target.api, target, "DELETE", path, ok_missing=True)
            except HookApiError as e:
                errors.append(str(e))
                continue
            self._ids.pop(index, None)
            self._log.info("%s hook %s for %s deleted", target.api.provider, hook_id, target.label)
        if errors:
            raise HookApiError("; ".join(errors))
