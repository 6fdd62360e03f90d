"""Stripe event source (``spec.stripe``): Stripe's webhook events, signature checked.

Argo's ``StripeEventSource``: a payment, a subscription or an invoice event reaches a
pipeline (retrain a churn model when subscriptions change, score a new charge). Served
over the webhook HTTP contract (:class:`~eventsources.webhook.WebhookServedSource`);
this module adds the ``Stripe-Signature`` check, ``eventFilter``, Argo's data shape and
``createWebhook`` (registering the endpoint through Stripe's REST API, spoken with
httpx: no Stripe SDK).

Argo does not check Stripe's signature at all; here every request must be signed (the
signing secret comes from ``signingSecret`` or from the endpoint ``createWebhook``
made), so nobody who finds the URL can forge a payment event.

Registered as ``stripe`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import Field

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import ConfigError
from app.kernel.logs import register_secret
from app.kernel.settings import Settings
from app.kernel.spec import SpecModel
from eventsources.common import formatted_url
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import BadRequest, Rejection, Request, Route, Skip, Verifier
from eventsources.webhook_verifiers import hmac_hex_matches

#: Stripe's default tolerance (its SDKs' ``DEFAULT_TOLERANCE``): a signature whose
#: timestamp is further from now is refused, so a captured request cannot be replayed.
TOLERANCE_SECONDS = 300
#: Stripe API requests: a slow API fails the registration, which is retried.
API_TIMEOUT_SECONDS = 10.0


class StripeConfig(SpecModel):
    """One Stripe event (Argo ``StripeEventSource``, plus ``signingSecret``)."""

    webhook: WebhookContext
    create_webhook: bool = False
    api_key: SecretKeySelector | None = Field(
        None, description="Secret key holding the Stripe API key (for createWebhook)"
    )
    event_filter: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    signing_secret: SecretKeySelector | None = Field(
        None,
        description="Secret key holding the endpoint's signing secret (whsec_...); "
        "not needed with createWebhook, which gets it from Stripe",
    )
    namespace: str = Field("", description="accepted as in older Argo; changes nothing")


def stripe_signature_verifier(
    secret: Callable[[], bytes | None], clock: Callable[[], float] = time.time
) -> Verifier:
    """Stripe's ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=...]`` check: one ``v1``
    must be the HMAC-SHA256 of ``<t>.<raw body>`` under the endpoint's secret, and ``t``
    within :data:`TOLERANCE_SECONDS` of ``clock()``. ``secret()`` is read per request
    (``createWebhook`` learns it after the server started). Missing header 401; no
    secret yet 401; malformed, stale or wrong 403."""
    missing = Rejection(401, "missing Stripe-Signature header")
    unknown = Rejection(401, "the endpoint's signing secret is not known yet")
    malformed = Rejection(403, "Stripe-Signature is malformed")
    stale = Rejection(403, "Stripe-Signature timestamp is outside the tolerance")
    wrong = Rejection(403, "payload signature check failed")

    async def verify(request: Request) -> Rejection | None:
        header = request.header("Stripe-Signature")
        if not header:
            return missing
        key = secret()
        if key is None:
            return unknown
        stamp = ""
        signatures: list[str] = []
        for item in header.split(","):
            name, sep, value = item.strip().partition("=")
            if sep and name == "t":
                stamp = value
            elif sep and name == "v1":
                signatures.append(value)
        if not stamp.isdigit() or not signatures:
            return malformed
        if abs(clock() - int(stamp)) > TOLERANCE_SECONDS:
            return stale
        message = stamp.encode() + b"." + request.raw_body
        # Every candidate is compared, so the time taken does not say which one matched.
        matched = [hmac_hex_matches(key, message, s, "sha256") for s in signatures]
        return None if any(matched) else wrong

    return verify


class StripeSource(WebhookServedSource[StripeConfig]):
    """Stripe webhook events: ``spec.stripe.<eventName>``.

    Fields (Argo's ``StripeEventSource``): ``webhook`` (the endpoint, as on
    ``webhook``; ``url`` is the public base URL Stripe posts to), ``createWebhook`` and
    ``apiKey`` (register the endpoint through the Stripe API once the server listens),
    ``eventFilter`` (event types to accept; empty: all), ``metadata``; and, beyond Argo,
    ``signingSecret`` (a Secret key holding the endpoint's ``whsec_`` secret), required
    unless ``createWebhook`` is set.

    Every request must carry ``Stripe-Signature`` with ``t`` within five minutes and a
    ``v1`` HMAC-SHA256 of ``<t>.<body>`` (constant-time compare): missing 401, wrong or
    stale 403, nothing published. A body that is not a JSON object is 400; an event type
    outside ``eventFilter`` is answered 200 ``filtered`` (Argo answers 400, which makes
    Stripe retry it for days).

    Event data (Argo's ``StripeEventData``): ``{"event": <the Stripe event object>,
    "metadata": {...}}``.

    ``createWebhook``: the endpoint ``<url><endpoint>`` is created with
    ``enabled_events`` = ``eventFilter`` (``["*"]`` when empty), and its signing secret
    (which Stripe returns only on creation) is used; an endpoint already registered for
    the same URL is replaced by a new one, so there is exactly one and its secret is
    known (a ``signingSecret`` given with ``createWebhook`` keeps the existing
    endpoint instead). The API base URL is the ``TRIGGERFISH_SOURCES__STRIPE_API_URL``
    setting. Registration failures are logged and retried; until it succeeds, requests
    without a ``signingSecret`` are refused (401) and Stripe retries them. The endpoint
    is left registered on shutdown, as in Argo.

    Ack/failure semantics are the webhook source's: 200 only after the PubAck, 503 +
    ``Retry-After`` when the bus is down (Stripe retries).
    """

    type_name: ClassVar[str] = "stripe"
    config_model: ClassVar[type[SpecModel]] = StripeConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._secrets: dict[str, bytes] = {}
        """Signing secret per event name (configured, or learnt from createWebhook)."""
        self._registered: set[str] = set()

    @classmethod
    def check_event(cls, event_name: str, cfg: StripeConfig) -> list[str]:
        path = f"spec.stripe.{event_name}"
        lines: list[str] = []
        if cfg.create_webhook:
            if cfg.api_key is None:
                lines.append(f"{path}.apiKey: required with createWebhook")
            if not cfg.webhook.url:
                lines.append(f"{path}.webhook.url: required with createWebhook")
        elif cfg.signing_secret is None:
            lines.append(
                f"{path}.signingSecret: required unless createWebhook is set (Stripe "
                "events must be signed; Argo accepts them unsigned)"
            )
        return lines

    async def route_hooks(self, event_name: str, cfg: StripeConfig) -> RouteHooks:
        if cfg.signing_secret is not None:
            value = await self.read_secret(
                cfg.signing_secret, f"spec.stripe.{event_name}.signingSecret"
            )
            self._secrets[event_name] = value.encode()
        accepted = frozenset(cfg.event_filter)

        def shape(request: Request, route: Route) -> Any:
            try:
                event = orjson.loads(request.body)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"request body is not valid JSON: {e}") from None
            if not isinstance(event, dict):
                raise BadRequest("request body is not a Stripe event object")
            if accepted and event.get("type") not in accepted:
                raise Skip(f"event type {event.get('type')!r} is not in eventFilter")
            return {"event": event, "metadata": dict(route.metadata)}

        verifier = stripe_signature_verifier(lambda: self._secrets.get(event_name))
        return RouteHooks(verifier=verifier, shaper=shape, metadata=cfg.metadata)

    async def register_hooks(self) -> bool:
        done = True
        for name, cfg in self.events.items():
            if not cfg.create_webhook or name in self._registered:
                continue
            try:
                await self._create_endpoint(name, cfg)
            except (httpx.HTTPError, ValueError) as e:
                self.ctx.log.error(
                    "stripe %s/%s: cannot register the webhook endpoint: %s",
                    self.source_name,
                    name,
                    e,
                )
                done = False
                continue
            self._registered.add(name)
        return done

    async def _create_endpoint(self, name: str, cfg: StripeConfig) -> None:
        path = f"spec.stripe.{name}"
        if cfg.api_key is None:
            raise ConfigError("required with createWebhook", f"{path}.apiKey")
        api_key = await self.read_secret(cfg.api_key, f"{path}.apiKey")
        url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
        base = Settings().sources.stripe_api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=API_TIMEOUT_SECONDS
        ) as client:
            existing = await _ours(client, url)
            if existing and name in self._secrets:
                self.ctx.log.info(
                    "stripe %s/%s: webhook endpoint %s already registered for %s",
                    self.source_name,
                    name,
                    existing[0],
                    url,
                )
                return
            for endpoint_id in existing:  # its secret is not readable: make a new one
                _check(await client.delete(f"/v1/webhook_endpoints/{endpoint_id}"))
            events = cfg.event_filter or ["*"]
            form = {"url": url, "enabled_events[]": events}
            created = _check(await client.post("/v1/webhook_endpoints", data=form))
        secret = created.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ValueError("Stripe returned no signing secret for the new endpoint")
        register_secret(secret)
        self._secrets[name] = secret.encode()
        self.ctx.log.info(
            "stripe %s/%s: webhook endpoint %s created for %s",
            self.source_name,
            name,
            created.get("id", "?"),
            url,
        )


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful Stripe API answer; ``ValueError`` naming the
    status and Stripe's message otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_success and isinstance(body, dict):
        return body
    message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
    raise ValueError(
        f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}"
        + (f": {message}" if message else "")
    )


async def _ours(client: httpx.AsyncClient, url: str) -> list[str]:
    """The ids of the registered endpoints that deliver to ``url`` (all pages)."""
    ids: list[str] = []
    params: dict[str, str] = {"limit": "100"}
    while True:
        page = _check(await client.get("/v1/webhook_endpoints", params=params))
        items = page.get("data", [])
        ids += [e["id"] for e in items if isinstance(e, dict) and e.get("url") == url]
        if not page.get("has_more") or not items:
            return ids
        params["starting_after"] = str(items[-1]["id"])
