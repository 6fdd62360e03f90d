"""AWS SNS event source (``spec.sns``): an HTTP(S) subscription to an SNS topic.

Argo's ``SNSEventSource``: a message published on a topic (an S3 upload, a CloudWatch
alarm, another team's pipeline finishing) becomes an event. Served over the webhook
HTTP contract (:class:`~eventsources.webhook.WebhookServedSource`); this module adds
what is SNS's own:

* subscribing ``<webhook.url><endpoint>`` to ``topicArn`` once the server listens
  (SNS ``Subscribe``; ``Unsubscribe`` on shutdown, as Argo), through the AWS SDK with
  the shared credentials of :mod:`eventsources.aws`;
* answering SNS's ``SubscriptionConfirmation`` by fetching its ``SubscribeURL``;
* ``validateSignature``: SNS signature version 1 (RSA SHA1) and 2 (RSA SHA256) over
  the canonical string, with the certificate fetched from ``SigningCertURL``, whose host
  must be SNS's (``sns.<region>.amazonaws.com[.cn]``, https) or one listed in the
  ``TRIGGERFISH_SOURCES__SNS_CERT_HOSTS`` setting (a local SNS-compatible server).

The AWS SDK is reached only through :mod:`eventsources.aws`; ``cryptography`` checks
the signatures. Registered as ``sns`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import httpx
import orjson
from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.settings import Settings
from app.kernel.spec import SpecModel
from eventsources.aws import role_session_name, session_for
from eventsources.common import EventSourceFilter, formatted_url
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import (
    BadRequest,
    Rejection,
    Reply,
    Request,
    Route,
    Verifier,
)

#: Argo's test of a SigningCertURL's host (AWS's own documentation gives the same).
SNS_HOST: Final = re.compile(r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$")
#: A signing certificate is small; Argo reads at most 65 KiB of it.
MAX_CERT_BYTES: Final = 65 * 1024
#: Certificates kept (SNS rotates them rarely; one per region in practice).
CERT_CACHE_SIZE: Final = 16
HTTP_TIMEOUT_SECONDS: Final = 10.0

#: The keys of the canonical string SNS signs, per message type, in order.
SIGNED_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
_DIGESTS: Final[dict[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class SNSConfig(SpecModel):
    """One SNS event (Argo ``SNSEventSource``)."""

    webhook: WebhookContext
    topic_arn: str
    access_key: SecretKeySelector | None = None
    secret_key: SecretKeySelector | None = None
    region: str
    role_arn: str = Field("", alias="roleARN", description="role to assume through STS")
    metadata: dict[str, str] = Field(default_factory=dict)
    validate_signature: bool = False
    filter: EventSourceFilter | None = None
    endpoint: str = Field("", description="SNS endpoint URL instead of AWS's")

    @field_validator("topic_arn")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must specify topic arn")
        return v.strip()

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must specify region")
        return v.strip()

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> SNSConfig:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("accessKey and secretKey must be given together")
        return self


def canonical_string(message: dict[str, Any]) -> bytes:
    """What SNS signs: ``Key\\nvalue\\n`` for each signed key the message has, in order."""
    out: list[str] = []
    for key in SIGNED_KEYS.get(str(message.get("Type")), ()):
        value = message.get(key)
        if isinstance(value, str) and value:
            out += [key, "\n", value, "\n"]
    return "".join(out).encode()


class UrlPolicy:
    """Which URLs an SNS message may make this source fetch (certificates, confirmations).

    Allowed: ``https`` on SNS's own hosts (Argo's test), ``http`` or ``https`` on the
    hosts of the ``sns_cert_hosts`` setting. Anything else could make a forged message
    turn this source into a proxy to internal addresses.
    """

    def __init__(self, extra_hosts: list[str]) -> None:
        self.extra = {h.lower() for h in extra_hosts}

    def resolve(self, url: str) -> str | None:
        """The URL to fetch for ``url``, or ``None`` when it may not be fetched."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return None
        if host in self.extra and parts.scheme in ("http", "https"):
            return url
        if not SNS_HOST.match(host) or parts.scheme != "https":
            return None
        return url


class Certificates:
    """Signing certificates by URL, fetched once (bounded cache)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.cache: collections.OrderedDict[str, rsa.RSAPublicKey] = collections.OrderedDict()

    async def key(self, url: str) -> rsa.RSAPublicKey:
        """The RSA public key of the PEM certificate at ``url``; ``ValueError`` when it
        cannot be fetched or read."""
        cached = self.cache.get(url)
        if cached is not None:
            self.cache.move_to_end(url)
            return cached
        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ValueError(
                        f"fetching the signing certificate: HTTP {response.status_code}"
                    )
                pem = b""
                async for chunk in response.aiter_bytes():
                    pem += chunk
                    if len(pem) > MAX_CERT_BYTES:
                        raise ValueError("the signing certificate is too large")
        except httpx.HTTPError as e:
            raise ValueError(f"fetching the signing certificate: {type(e).__name__}") from e
        try:
            public = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as e:
            raise ValueError("the signing certificate is not a PEM certificate") from e
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the signing certificate's key is not RSA")
        self.cache[url] = public
        while len(self.cache) > CERT_CACHE_SIZE:
            self.cache.popitem(last=False)
        return public


def _message(request: Request) -> dict[str, Any]:
    try:
        value = orjson.loads(request.body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not a valid SNS message: {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get("Type"), str):
        raise BadRequest("bad request, not a valid SNS notification")
    return value


def sns_signature_verifier(
    topic_arn: str, validate: bool, policy: UrlPolicy, certificates: Certificates
) -> Verifier:
    """Checks that a message is SNS's for ``topic_arn`` (else 403) and, with
    ``validate``, its signature: missing ``Signature``/``SigningCertURL`` 401; an
    unknown version, a certificate URL not allowed by ``policy``, a certificate that
    cannot be had, or a signature that does not verify 403."""
    unsigned = Rejection(401, "missing Signature or SigningCertURL")
    wrong = Rejection(403, "message signature check failed")

    async def verify(request: Request) -> Rejection | None:
        try:
            message = _message(request)
        except BadRequest as e:
            return Rejection(400, str(e))
        if message.get("TopicArn") != topic_arn:
            return Rejection(403, "TopicArn is not the subscribed topic")
        if not validate:
            return None
        signature, cert_url = message.get("Signature"), message.get("SigningCertURL")
        if not isinstance(signature, str) or not isinstance(cert_url, str):
            return unsigned
        digest = _DIGESTS.get(str(message.get("SignatureVersion", "1")))
        if digest is None:
            return Rejection(403, "unsupported SignatureVersion")
        url = policy.resolve(cert_url)
        if url is None:
            return Rejection(403, "SigningCertURL is not an SNS certificate URL")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return wrong
        try:
            key = await certificates.key(url)
        except ValueError as e:
            return Rejection(403, str(e))
        try:
            key.verify(raw, canonical_string(message), padding.PKCS1v15(), digest())
        except InvalidSignature:
            return wrong
        return None

    return verify


class SNSSource(WebhookServedSource[SNSConfig]):
    """SNS topic messages as events: ``spec.sns.<eventName>``.

    Fields (Argo's ``SNSEventSource``): ``webhook`` (the endpoint, as on ``webhook``;
    ``url`` is the public base URL SNS posts to), ``topicArn``, ``region``,
    ``accessKey``/``secretKey`` (Secret keys; else the default AWS chain), ``roleARN``
    (assumed through STS), ``endpoint`` (an SNS-compatible server instead of AWS),
    ``validateSignature``, ``metadata``, ``filter.expression``.

    When ``webhook.url`` is set, ``<url><endpoint>`` is subscribed to the topic once the
    server listens (``http`` or ``https`` by the URL's scheme; retried while AWS
    fails) and unsubscribed on shutdown. A ``SubscriptionConfirmation`` is confirmed by
    fetching its ``SubscribeURL`` (allowed hosts only, see :class:`UrlPolicy`) and
    answered 200, nothing published; if the fetch fails it is answered 503 (SNS
    sends it again). ``UnsubscribeConfirmation`` is answered 200, not published.

    Every message must name the configured ``topicArn`` (else 403). With
    ``validateSignature`` its ``Signature`` (version 1: SHA1, 2: SHA256, RSA PKCS#1
    v1.5) must verify over the canonical string with the certificate at
    ``SigningCertURL``: unsigned 401; anything wrong 403; nothing published.

    Event data (Argo's ``SNSEventData``): ``{"header": {...}, "body": <the SNS message
    as JSON>, "metadata": {...}}``. Ack/failure semantics are the webhook source's:
    200 only after the PubAck, 503 + ``Retry-After`` when the bus is down (SNS retries
    by its delivery policy).
    """

    type_name: ClassVar[str] = "sns"
    config_model: ClassVar[type[SpecModel]] = SNSConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: httpx.AsyncClient | None = None
        self._subscriptions: dict[str, str] = {}
        """Subscription ARN per event name, from Subscribe (undone on shutdown)."""

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        return self._http

    async def route_hooks(self, event_name: str, cfg: SNSConfig) -> RouteHooks:
        policy = UrlPolicy(Settings().sources.sns_cert_hosts)
        verifier = sns_signature_verifier(
            cfg.topic_arn, cfg.validate_signature, policy, Certificates(self._client())
        )
        where = f"sns {self.source_name}/{event_name}"

        async def respond(request: Request) -> Reply | None:
            message = _message(request)
            kind = message["Type"]
            if kind == "Notification":
                return None
            if kind != "SubscriptionConfirmation":
                return Reply(b"success")
            url = policy.resolve(str(message.get("SubscribeURL", "")))
            if url is None:
                return Reply(b"SubscribeURL is not an SNS URL", status=403)
            try:
                response = await self._client().get(url)
            except httpx.HTTPError as e:
                self.ctx.log.warning("%s: confirming the subscription failed: %s", where, e)
                return Reply(b"cannot confirm the subscription", status=503)
            if response.status_code != 200:
                self.ctx.log.warning(
                    "%s: confirming the subscription failed: HTTP %s", where, response.status_code
                )
                return Reply(b"cannot confirm the subscription", status=503)
            self.ctx.log.info("%s: subscription to %s confirmed", where, cfg.topic_arn)
            return Reply(b"subscription confirmed")

        def shape(request: Request, route: Route) -> Any:
            return {
                "header": request.headers,
                "body": _message(request),
                "metadata": dict(route.metadata),
            }

        return RouteHooks(verifier=verifier, responder=respond, shaper=shape, metadata=cfg.metadata)

    async def _sns(self, name: str, cfg: SNSConfig) -> Any:
        """An SNS client context for ``cfg`` (credentials from the Secrets, else the chain)."""
        path = f"spec.sns.{name}"
        keys: dict[str, str] = {}
        if cfg.access_key is not None and cfg.secret_key is not None:
            keys = {
                "aws_access_key_id": await self.read_secret(cfg.access_key, f"{path}.accessKey"),
                "aws_secret_access_key": await self.read_secret(
                    cfg.secret_key, f"{path}.secretKey"
                ),
            }
        session, keys = await session_for(
            keys,
            role_arn=cfg.role_arn,
            region=cfg.region,
            endpoint=cfg.endpoint,
            session_name=role_session_name(self.source_name, name),
            role_path=f"{path}.roleARN",
        )
        return session.create_client(
            "sns", region_name=cfg.region, endpoint_url=cfg.endpoint or None, **keys
        )

    async def register_hooks(self) -> bool:
        done = True
        for name, cfg in self.events.items():
            if not cfg.webhook.url or name in self._subscriptions:
                continue
            url = formatted_url(cfg.webhook.url, cfg.webhook.endpoint)
            protocol = "https" if url.startswith("https://") else "http"
            try:
                async with await self._sns(name, cfg) as sns:
                    answer = await sns.subscribe(
                        TopicArn=cfg.topic_arn,
                        Protocol=protocol,
                        Endpoint=url,
                        ReturnSubscriptionArn=True,
                    )
            except (ClientError, BotoCoreError, OSError) as e:
                self.ctx.log.error(
                    "sns %s/%s: cannot subscribe %s to %s: %s",
                    self.source_name,
                    name,
                    url,
                    cfg.topic_arn,
                    e,
                )
                done = False
                continue
            self._subscriptions[name] = str(answer.get("SubscriptionArn", ""))
            self.ctx.log.info(
                "sns %s/%s: subscribed %s to %s", self.source_name, name, url, cfg.topic_arn
            )
        return done

    async def unregister_hooks(self) -> None:
        for name, arn in list(self._subscriptions.items()):
            if not arn.startswith("arn:"):
                continue  # still pending confirmation: nothing to undo
            try:
                async with await self._sns(name, self.events[name]) as sns:
                    await sns.unsubscribe(SubscriptionArn=arn)
            except (ClientError, BotoCoreError, OSError) as e:
                self.ctx.log.warning(
                    "sns %s/%s: cannot unsubscribe %s: %s", self.source_name, name, arn, e
                )
                continue
            del self._subscriptions[name]
        if self._http is not None:
            await self._http.aclose()
            self._http = None
