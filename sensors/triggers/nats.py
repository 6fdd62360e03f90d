"""The ``nats`` trigger: publish one message on a NATS subject per firing (Argo
``NATSTrigger``).

Fields (:class:`NatsTriggerConfig`): ``url`` (``host:port`` or ``nats://``/``tls://``
URLs, comma-separated for a cluster); ``subject``; ``payload`` (parameters set into an
empty JSON document, which becomes the message body, as Argo's ``ConstructPayload``);
``parameters`` (applied to this config first, e.g. ``dest: subject``); ``tls``
(``caCertSecret``, ``clientCertSecret`` + ``clientKeySecret``, ``insecureSkipVerify``);
``auth`` (one of ``basic`` {username, password}, ``token``, ``nkey`` (the user's seed),
``credential`` (the text of a ``.creds`` file: the user's JWT and seed): Secret keys).

Why a connection of its own: the target server is whoever the manifest names, not the
bus, so the trigger keeps one client per (URL, auth, TLS) in the context's
:class:`~sensors.triggers.base.SharedCache` (closed with it), connected at first use.

Semantics:
* Delivery: core NATS has no acknowledgement, so each publish is followed by two
  flushes (PINGs answered by the server): success means the server has the message
  and did not refuse it. The
  client does not reconnect or buffer on its own; a broken connection is dropped and
  the next attempt connects again, so a retried firing is never also sent from a
  reconnect buffer.
* Every message carries the header ``Nats-Msg-Id: <firing key>``, the same on every
  retry and redelivery: a JetStream stream capturing the subject stores the firing
  once (within its duplicate window). Plain subscribers may see a retried firing twice.
* ``parameters`` may set ``subject`` (a deliberate difference: Argo applies them but
  publishes on the manifest's subject) and ``url``.
* Failure: the server cannot be reached, the connection breaks, the flush times out →
  :class:`~app.kernel.errors.TransientError`; a publish the user is not permitted to
  make (the server drops it and says so with an -ERR, awaited with a second flush),
  authentication refused, a bad TLS certificate or key, a missing Secret key, a missing
  parameter value, a config that ``parameters`` made invalid →
  :class:`~app.kernel.errors.PermanentError`.
* Secret values (token, password, keys) never appear in logs, traces or messages; the
  URL is shown without credentials.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerContext, TriggerResult
from sensors.triggers.http import read_secret, safe_url, ssl_context
from sensors.triggers.parameterized import ParameterizedTrigger

CONNECT_TIMEOUT_SECONDS = 5.0
"""How long connecting to the target server may take before the attempt is retried."""

FLUSH_TIMEOUT_SECONDS = 5.0
"""How long the server may take to confirm a publish (PING/PONG) before it is retried."""

MSG_ID_HEADER = "Nats-Msg-Id"

_CREDS_FILE = re.compile(
    r"-{3,}BEGIN NATS USER JWT-{3,}\s*\S+\s*-{3,}END NATS USER JWT-{3,}.*"
    r"-{3,}BEGIN USER NKEY SEED-{3,}\s*SU\S+\s*-{3,}END USER NKEY SEED-{3,}",
    re.DOTALL,
)
"""The shape of a ``.creds`` file (what ``nsc`` writes)."""


class NatsBasicAuth(SpecModel):
    """``auth.basic``: username and password from Secret keys."""

    username: SecretKeySelector | None = None
    password: SecretKeySelector | None = None


class NatsAuth(SpecModel):
    """``auth``: at most one way to authenticate (Argo ``NATSAuth``)."""

    basic: NatsBasicAuth | None = None
    token: SecretKeySelector | None = None
    nkey: SecretKeySelector | None = None
    credential: SecretKeySelector | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> NatsAuth:
        given = [k for k in ("basic", "token", "nkey", "credential") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"only one of basic, token, nkey, credential may be given: {given}")
        return self


class NatsTriggerConfig(SpecModel):
    """``template.nats``: publish the payload on ``subject`` at ``url``."""

    url: str
    subject: str
    payload: list[TriggerParameter]
    parameters: list[TriggerParameter] = Field(default_factory=list)
    tls: TLSConfig | None = None
    auth: NatsAuth | None = None

    @field_validator("url")
    @classmethod
    def _url_given(cls, v: str) -> str:
        if not v:
            raise ValueError("nats server url can't be empty")
        return v

    @field_validator("subject")
    @classmethod
    def _subject_valid(cls, v: str) -> str:
        if not v:
            raise ValueError("nats subject can't be empty")
        if any(c in v for c in " \t\r\n") or "*" in v.split(".") or ">" in v.split("."):
            raise ValueError(f"{v!r} is not a subject to publish on")
        return v

    @field_validator("tls")
    @classmethod
    def _client_pair(cls, v: TLSConfig | None) -> TLSConfig | None:
        if v is not None and (v.client_cert_secret is None) != (v.client_key_secret is None):
            raise ValueError("clientCertSecret and clientKeySecret must be given together")
        return v

    def servers(self) -> list[str]:
        """The server URLs, with ``nats://`` added where no scheme is given (Argo's
        examples write ``host:port``)."""
        out = []
        for part in self.url.split(","):
            part = part.strip()
            if part:
                out.append(part if "://" in part else f"nats://{part}")
        return out


class _Connection:
    """One client to one target server, connected on demand and dropped when broken.

    Kept in the SharedCache, which calls :meth:`close` at shutdown.
    """

    def __init__(self, ctx: TriggerContext, cfg: NatsTriggerConfig, namespace: str) -> None:
        self._ctx = ctx
        self._cfg = cfg
        self._namespace = namespace
        self._lock = asyncio.Lock()
        self._client: Any = None
        # What the server reported asynchronously (-ERR), numbered, the latest few.
        self._errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=64)
        self._error_count = 0

    @property
    def where(self) -> str:
        return ", ".join(safe_url(s) for s in self._cfg.servers())

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        import nats.errors

        client = await self._connected()
        mark = self._error_count
        try:
            await client.publish(subject, body, headers={MSG_ID_HEADER: msg_id})
            await client.flush(timeout=FLUSH_TIMEOUT_SECONDS)
            # A publish the user may not make is dropped by the server, which says so
            # with an -ERR that it may write just after this round trip's PONG; a second
            # round trip is answered after it (measured: 2 of 60 fresh connections saw
            # the -ERR only after the second PONG, none later).
            await client.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except nats.errors.MaxPayloadError as e:
            raise PermanentError(f"nats {self.where}: message too large: {e}") from e
        except (nats.errors.Error, OSError, TimeoutError) as e:
            await self._drop(client)
            raise TransientError(
                f"nats {self.where}: publish on {subject!r} failed: {type(e).__name__}: {e}"
            ) from e
        denied = f'permissions violation for publish to "{subject.lower()}"'
        if any(n > mark and denied in text.lower() for n, text in self._errors):
            raise PermanentError(f"nats {self.where}: not permitted to publish on {subject!r}")

    async def _connected(self) -> Any:
        async with self._lock:
            client = self._client
            if client is not None and client.is_connected:
                return client
            if client is not None:
                await self._drop(client)
            self._client = await self._connect()
            return self._client

    async def _connect(self) -> Any:
        import nats
        import nats.errors
        from nkeys import NkeysError

        cfg = self._cfg
        options: dict[str, Any] = {
            "servers": cfg.servers(),
            "allow_reconnect": False,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            # The client's first connect loops over its server pool until each server
            # failed more than this many times (0 would loop forever).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.05,
            "name": "triggerfish-nats-trigger",
        }
        auth = cfg.auth
        ns = self._namespace
        if auth is not None and auth.basic is not None:
            user = pw = ""
            if auth.basic.username is not None:
                user = await read_secret(self._ctx, ns, auth.basic.username.name,
                                         auth.basic.username.key)  # fmt: skip
            if auth.basic.password is not None:
                pw = await read_secret(self._ctx, ns, auth.basic.password.name,
                                       auth.basic.password.key)  # fmt: skip
            options["user"], options["password"] = user, pw
        elif auth is not None and auth.token is not None:
            options["token"] = await read_secret(self._ctx, ns, auth.token.name, auth.token.key)
        elif auth is not None and auth.nkey is not None:
            seed = await read_secret(self._ctx, ns, auth.nkey.name, auth.nkey.key)
            options["nkeys_seed_str"] = seed.strip()
        elif auth is not None and auth.credential is not None:
            from nats.aio.client import RawCredentials

            sel = auth.credential
            text = await read_secret(self._ctx, ns, sel.name, sel.key)
            if not _CREDS_FILE.search(text):
                raise PermanentError(
                    f"secret {ns}/{sel.name} key {sel.key!r} is not a NATS credentials file "
                    "(a user JWT block and a user nkey seed block)"
                )
            options["user_credentials"] = RawCredentials(text)
        if cfg.tls is not None:
            options["tls"] = await ssl_context(self._ctx, cfg.tls, ns)

        errors: list[str] = []  # this attempt's, for the message when it fails

        async def on_error(e: Exception) -> None:
            text = f"{type(e).__name__}: {e}"
            errors.append(text)
            self._error_count += 1
            self._errors.append((self._error_count, text))

        options["error_cb"] = on_error
        try:
            return await asyncio.wait_for(nats.connect(**options), CONNECT_TIMEOUT_SECONDS * 2)
        except ssl.SSLCertVerificationError as e:
            raise PermanentError(f"nats {self.where}: certificate verification failed") from e
        except nats.errors.NoServersError as e:
            detail = "; ".join(errors[-3:]) or str(e)
            if "authorization violation" in detail.lower():
                raise PermanentError(f"nats {self.where}: authorization violation") from e
            if "certificate verify failed" in detail.lower():
                raise PermanentError(f"nats {self.where}: certificate verification failed") from e
            raise TransientError(f"nats {self.where}: cannot connect: {detail}") from e
        except (ValueError, NkeysError) as e:  # e.g. an nkey seed that does not decode
            raise PermanentError(
                f"nats {self.where}: invalid credentials: {type(e).__name__}"
            ) from e
        except (nats.errors.Error, OSError, TimeoutError) as e:
            text = f"{type(e).__name__}: {e}"
            if "authorization violation" in text.lower():
                raise PermanentError(f"nats {self.where}: authorization violation") from e
            raise TransientError(f"nats {self.where}: cannot connect: {text}") from e

    async def _drop(self, client: Any) -> None:
        if self._client is client:
            self._client = None
        with contextlib.suppress(Exception):
            await client.close()

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._drop(self._client)


class NatsTrigger(ParameterizedTrigger[NatsTriggerConfig]):
    """Publishes the payload on a NATS subject per firing (see the module docstring)."""

    has_payload: ClassVar[bool] = True

    type_name: ClassVar[str] = "nats"
    config_model: ClassVar[type[SpecModel]] = NatsTriggerConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg, records = self._config_for(inv.events)
        body, payload_records = self._payload_for(cfg, inv.events)
        records += payload_records
        conn = await self._connection(cfg, inv.namespace)
        await conn.publish(cfg.subject, body, inv.key)
        detail = {"name": f"nats {cfg.subject}", "subject": cfg.subject, "url": conn.where,
                  "bytes": len(body)}  # fmt: skip
        return TriggerResult("published", detail, records)

    async def _connection(self, cfg: NatsTriggerConfig, namespace: str) -> _Connection:
        key = (
            "nats.connection",
            namespace,
            tuple(cfg.servers()),
            None if cfg.auth is None else cfg.auth.model_dump_json(),
            None if cfg.tls is None else cfg.tls.model_dump_json(),
        )

        async def make() -> _Connection:
            return _Connection(self.ctx, cfg, namespace)

        return await self.ctx.shared.get(key, make)


__all__ = ["NatsTrigger", "NatsTriggerConfig"]
