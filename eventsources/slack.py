"""Slack event source (``spec.slack``): the Events API, interactions and slash commands.

Argo's ``SlackEventSource``: a Slack app posts to this endpoint; a message, a mention,
a button press or ``/train resnet`` becomes an event that can start a pipeline. Served
over the webhook HTTP contract (:class:`~eventsources.webhook.WebhookServedSource`):
this module only adds Slack's request signature, its URL verification handshake and
Argo's data shapes. No Slack library is needed (the checks are HMAC and JSON).

Registered as ``slack`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import parse_qs

import orjson
from pydantic import Field

from app.kernel.argo import SecretKeySelector
from app.kernel.spec import SpecModel
from eventsources.common import EventSourceFilter
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import BadRequest, Rejection, Reply, Request, Route, Verifier
from eventsources.webhook_verifiers import hmac_hex_matches

#: Slack's replay window: a request whose timestamp is further from now is refused
#: (slack-go's ``NewSecretsVerifier``, which Argo uses).
REPLAY_WINDOW_SECONDS = 5 * 60

_FORM = "application/x-www-form-urlencoded"

#: Argo's slash-command data: slack-go's ``SlashCommand`` (its JSON names, in order).
SLASH_COMMAND_FIELDS = (
    "token",
    "team_id",
    "team_domain",
    "enterprise_id",
    "enterprise_name",
    "is_enterprise_install",
    "channel_id",
    "channel_name",
    "user_id",
    "user_name",
    "command",
    "text",
    "response_url",
    "trigger_id",
    "api_app_id",
)
_OMIT_EMPTY = frozenset({"enterprise_id", "enterprise_name"})


class SlackConfig(SpecModel):
    """One Slack event (Argo ``SlackEventSource``)."""

    signing_secret: SecretKeySelector = Field(description="the Slack app's signing secret")
    token: SecretKeySelector = Field(description="the app's verification token")
    webhook: WebhookContext
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    namespace: str = Field("", description="accepted as in older Argo; changes nothing")


def slack_signature_verifier(secret: bytes, clock: Callable[[], float] = time.time) -> Verifier:
    """Slack's ``X-Slack-Signature`` check: ``v0=`` + hex HMAC-SHA256 over
    ``v0:<X-Slack-Request-Timestamp>:<raw body>``, the timestamp within
    :data:`REPLAY_WINDOW_SECONDS` of ``clock()``. Missing headers 401; a timestamp out of
    the window, another version or a wrong HMAC 403."""
    missing = Rejection(401, "missing X-Slack-Signature or X-Slack-Request-Timestamp")
    stale = Rejection(403, "X-Slack-Request-Timestamp is outside the replay window")
    wrong = Rejection(403, "payload signature check failed")

    async def verify(request: Request) -> Rejection | None:
        signature = request.header("X-Slack-Signature")
        stamp = request.header("X-Slack-Request-Timestamp")
        if not signature or not stamp:
            return missing
        try:
            sent = int(stamp.strip())
        except ValueError:
            return Rejection(403, "X-Slack-Request-Timestamp is not a number")
        if abs(clock() - sent) > REPLAY_WINDOW_SECONDS:
            return stale
        version, sep, digest = signature.partition("=")
        if not sep or version != "v0":
            return wrong
        message = b"v0:" + stamp.strip().encode() + b":" + request.raw_body
        return None if hmac_hex_matches(secret, message, digest, "sha256") else wrong

    return verify


def _is_form(request: Request) -> bool:
    media = request.content_type.split(b";", 1)[0].strip().lower()
    return media == _FORM.encode()


def _form(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body is not a JSON object")
    return value


def slash_command(form: dict[str, list[str]]) -> dict[str, Any]:
    """A slash command's form fields as Argo publishes them (slack-go's ``SlashCommand``)."""
    out: dict[str, Any] = {}
    for name in SLASH_COMMAND_FIELDS:
        value = form.get(name, [""])[0]
        if name == "is_enterprise_install":
            out[name] = value == "true"
        elif value or name not in _OMIT_EMPTY:
            out[name] = value
    return out


def slack_data(request: Request, route: Route) -> Any:
    """Argo's Slack event data (see :class:`SlackSource`), plus ``metadata``."""
    metadata = dict(route.metadata)
    if _is_form(request):
        form = _form(request)
        payload = form.get("payload", [""])[0]
        if payload:
            try:
                interaction = orjson.loads(payload)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"payload is not valid JSON: {e}") from None
            if not isinstance(interaction, dict):
                raise BadRequest("payload is not a JSON object")
            return {**interaction, "metadata": metadata}
        if form.get("command", [""])[0]:
            return {**slash_command(form), "metadata": metadata}
        raise BadRequest("could not determine slack type from form parameters")
    outer = _json_object(request.body)
    inner = outer.get("event")
    if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
        raise BadRequest("event_callback without an inner event type")
    return {"type": inner["type"], "Data": inner, "metadata": metadata}


class SlackSource(WebhookServedSource[SlackConfig]):
    """Slack requests as events: ``spec.slack.<eventName>``.

    Fields (Argo's ``SlackEventSource``): ``webhook`` (the endpoint: port, endpoint,
    method, TLS, ``maxPayloadSize`` as on ``webhook``), ``signingSecret`` and ``token``
    (Secret keys, both required as in Argo; read once at start, never logged),
    ``metadata``, ``filter.expression``.

    Every request must carry a valid ``X-Slack-Signature`` (``v0``, HMAC-SHA256 over
    ``v0:<timestamp>:<body>`` with the signing secret, compared in constant time) and an
    ``X-Slack-Request-Timestamp`` within five minutes: missing headers are 401, a
    wrong signature or an old timestamp 403, and nothing is published. Events API posts
    (JSON) must also hold the verification ``token`` (else 403).

    * ``url_verification``: answered with the ``challenge`` (``text/plain``), nothing
      published.
    * ``event_callback``: published as Argo's ``{"type": <inner event type>, "Data":
      <the inner event>}``.
    * any other Events API type (``app_rate_limited``): answered 200, not published.
    * a form post with ``payload`` (interactions: buttons, shortcuts, modals): the
      parsed payload; with ``command`` (slash commands): slack-go's ``SlashCommand``
      fields (``token``, ``team_id``, ``channel_id``, ``user_name``, ``command``,
      ``text``, ``response_url``, ``trigger_id``, ...); neither: 400.

    ``metadata`` is added to the data. Ack/failure semantics are the webhook source's:
    200 only after the PubAck, 503 + ``Retry-After`` when the bus is down (Slack retries).
    """

    type_name: ClassVar[str] = "slack"
    config_model: ClassVar[type[SpecModel]] = SlackConfig

    async def route_hooks(self, event_name: str, cfg: SlackConfig) -> RouteHooks:
        path = f"spec.slack.{event_name}"
        secret = await self.read_secret(cfg.signing_secret, f"{path}.signingSecret")
        token = (await self.read_secret(cfg.token, f"{path}.token")).encode()
        signature = slack_signature_verifier(secret.encode())
        wrong_token = Rejection(403, "invalid verification token")

        async def verify(request: Request) -> Rejection | None:
            rejection = await signature(request)
            if rejection is not None or _is_form(request):
                return rejection
            try:
                sent = _json_object(request.body).get("token")
            except BadRequest as e:
                return Rejection(400, str(e))
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), token):
                return wrong_token
            return None

        async def respond(request: Request) -> Reply | None:
            if _is_form(request):
                return None
            outer = _json_object(request.body)
            kind = outer.get("type")
            if kind == "url_verification":
                challenge = outer.get("challenge")
                if not isinstance(challenge, str):
                    return Reply(b"url_verification without a challenge", status=400)
                return Reply(challenge.encode(), content_type="text/plain; charset=utf-8")
            if kind != "event_callback":
                return Reply(b"success")
            return None

        return RouteHooks(
            verifier=verify, responder=respond, shaper=slack_data, metadata=cfg.metadata
        )
