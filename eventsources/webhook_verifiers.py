"""Request verifiers that several webhook-served types share: HMAC signatures and tokens.

A verifier (:data:`eventsources.webhook_http.Verifier`) sees one request once its body
is read and answers ``None`` (accept) or a :class:`~eventsources.webhook_http.Rejection`
(401 when the credential is missing, 403 when it is wrong; nothing is published). Every
comparison here is constant-time (:func:`hmac.compare_digest`), and no rejection reason
holds a secret or the signature a client sent.

Who uses what: ``github`` checks ``X-Hub-Signature-256`` (falling back to the SHA-1
``X-Hub-Signature``, as GitHub's Go client does), ``bitbucketserver`` checks
``X-Hub-Signature`` (``sha256=``), ``gitlab`` compares ``X-Gitlab-Token``. A type with
its own scheme (Slack's ``v0=`` over ``v0:<timestamp>:<body>``, Stripe's ``t=,v1=``) can
build on :func:`hmac_hex_matches`.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from eventsources.webhook_http import Rejection, Request, Verifier

DIGESTS: Final[dict[str, str]] = {"sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
"""The ``<algorithm>=`` prefixes of a hub signature header that are accepted."""


def hmac_hex_matches(secret: bytes, message: bytes, signature_hex: str, digest: str) -> bool:
    """Whether ``signature_hex`` is the hex HMAC-``digest`` of ``message`` under ``secret``
    (case-insensitive hex, compared in constant time)."""
    expected = hmac.new(secret, message, digest).hexdigest()
    return hmac.compare_digest(expected.encode(), signature_hex.strip().lower().encode("latin-1"))


def hub_signature_verifier(secret: bytes, headers: Sequence[str]) -> Verifier:
    """A verifier of ``<algorithm>=<hex HMAC of the raw body>`` signature headers.

    ``headers`` are tried in order; the first one present is checked (GitHub sends
    ``X-Hub-Signature-256`` and, for old hooks, ``X-Hub-Signature``). No such header:
    401; an unknown algorithm, a malformed value or a wrong HMAC: 403.
    """
    names = tuple(headers)
    missing = Rejection(401, f"missing signature ({' or '.join(names)})")
    wrong = Rejection(403, "payload signature check failed")

    async def verify(request: Request) -> Rejection | None:
        for name in names:
            value = request.header(name)
            if value is None:
                continue
            algorithm, sep, signature = value.partition("=")
            digest = DIGESTS.get(algorithm.strip().lower())
            if not sep or digest is None:
                return Rejection(403, f"{name}: unsupported signature format")
            if hmac_hex_matches(secret, request.raw_body, signature, digest):
                return None
            return wrong
        return missing

    return verify


def header_token_verifier(header: str, token: bytes) -> Verifier:
    """A verifier comparing header ``header`` with a shared ``token`` in constant time:
    missing header 401, another value 403."""
    missing = Rejection(401, f"missing {header} header")
    wrong = Rejection(403, f"{header} mismatch")

    async def verify(request: Request) -> Rejection | None:
        value = request.header(header)
        if value is None:
            return missing
        if hmac.compare_digest(value.encode("utf-8", "surrogateescape"), token):
            return None
        return wrong

    return verify
