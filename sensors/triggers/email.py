"""The ``email`` trigger: send a text e-mail to each address in ``to`` over SMTP per
firing (Argo ``EmailTrigger``).

Fields (:class:`EmailTriggerConfig`): ``host``, ``port`` (default 587 when 0);
``username`` and ``smtpPassword`` (a Secret key); ``from``; ``to`` (addresses);
``subject``; ``body`` (plain text); ``parameters`` (applied to this config first: Argo's
example appends to ``to`` and renders ``body`` with a ``dataTemplate``, a Go template
over the event). ``to``, ``subject``, ``body`` and ``from`` must be non-empty once the
parameters are applied.

Transport, as Argo's mail library does it: port 465 speaks TLS from the first byte,
any other port upgrades with STARTTLS when the server offers it; the server's
certificate is verified against the system's CAs (Argo offers no TLS fields). With a
``username`` the client logs in, and refuses to send the password over a connection
without TLS unless the host is ``localhost``, ``127.0.0.1`` or ``::1``. Python's
standard ``smtplib`` does the SMTP, in a worker thread per send.

Semantics:
* One message per recipient (``To:`` names only that recipient), as Argo sends them.
  Each carries ``Message-ID: <firing key>.<n>@triggerfish``, the same on every retry.
* Not idempotent in general (SMTP has no idempotency key), but a retry of a firing in
  the same process sends only to the recipients not yet served: which were delivered,
  and which were refused for good, is remembered per firing key for
  :data:`STATE_TTL_SECONDS`. A crash between the server's acceptance and the
  acknowledgement may still send a message twice.
* Failure: the server cannot be reached, drops the connection, times out, or answers
  4xx → :class:`~app.kernel.errors.TransientError`; rejected credentials, a 5xx for
  the sender or a recipient, an address that is not valid, a certificate that fails
  verification, a password over a connection without TLS, an empty to/subject/body/from,
  a missing Secret key or parameter value → :class:`~app.kernel.errors.PermanentError`.
  When some recipients failed transiently and others permanently, the firing is
  retried for the former and then dead-lettered naming the latter.
* The password never appears in logs, traces or messages.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, ClassVar

from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerResult
from sensors.triggers.http import read_secret
from sensors.triggers.parameterized import ParameterizedTrigger

DEFAULT_PORT = 587
IMPLICIT_TLS_PORT = 465
TIMEOUT_SECONDS = 30.0
"""Per SMTP socket operation."""

STATE_TTL_SECONDS = 3600.0
"""How long which recipients of a firing were served is remembered for its retries."""

VALID_ADDRESS = re.compile(r"^[\w\-.+]+@([\w-]+\.)+[\w-]{2,}$")
"""Argo's address check, with ``+`` in the local part and top-level domains of any length
(Argo's allows 2-4 letters, refusing e.g. ``.online``)."""

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_address(v: str) -> str:
    if not VALID_ADDRESS.match(v):
        raise ValueError(f"{v!r} is not a valid e-mail address")
    return v


class EmailTriggerConfig(SpecModel):
    """``template.email``: send ``subject``/``body`` from ``from`` to each of ``to``."""

    parameters: list[TriggerParameter] = Field(default_factory=list)
    username: str = ""
    smtp_password: SecretKeySelector | None = None
    host: str
    port: int = Field(0, ge=0, le=65535)
    to: list[str] = Field(default_factory=list)
    from_: str = Field("", alias="from")
    subject: str = ""
    body: str = ""

    @field_validator("host")
    @classmethod
    def _host_given(cls, v: str) -> str:
        if not v:
            raise ValueError("host can't be empty")
        return v

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [_check_address(a) for a in v]

    @field_validator("from_")
    @classmethod
    def _from_address(cls, v: str) -> str:
        return _check_address(v) if v else v

    def problem(self) -> str | None:
        """What is missing to send (checked per firing: parameters may fill it)."""
        for name, value in (("to", self.to), ("subject", self.subject), ("body", self.body),
                            ("from", self.from_)):  # fmt: skip
            if not value:
                return f"{name} can't be empty"
        return None


@dataclass
class _Served:
    """Per firing: recipients delivered, and those refused for good (with why)."""

    delivered: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    """One recipient's send failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _classify(e: Exception) -> _Refused:
    """An SMTP or socket failure as transient (retry) or permanent."""
    if isinstance(e, smtplib.SMTPAuthenticationError):
        return _Refused(f"authentication failed ({e.smtp_code})", False)
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in e.recipients.values()]
        text = ", ".join(f"{code} {msg.decode(errors='replace')}"
                         for code, msg in e.recipients.values())  # fmt: skip
        return _Refused(f"recipient refused: {text}", all(400 <= c < 500 for c in codes))
    if isinstance(e, smtplib.SMTPResponseException):
        text = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else ""
        return _Refused(f"{type(e).__name__} {e.smtp_code} {text}", 400 <= e.smtp_code < 500)
    if isinstance(e, ssl.SSLCertVerificationError):
        return _Refused(f"certificate verification failed: {e.verify_message}", False)
    if isinstance(e, smtplib.SMTPNotSupportedError):
        return _Refused(f"not supported by the server: {e}", False)
    if isinstance(e, smtplib.SMTPServerDisconnected | OSError | TimeoutError):
        return _Refused(f"{type(e).__name__}: {e}", True)
    return _Refused(f"{type(e).__name__}: {e}", False)


def _listing(failures: dict[str, str]) -> str:
    return "; ".join(f"{addr}: {why}" for addr, why in failures.items())


def _send_one(host: str, port: int, username: str, password: str, message: EmailMessage) -> None:
    """One SMTP session delivering ``message`` (blocking: runs in a worker thread)."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if port == IMPLICIT_TLS_PORT:
        smtp = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_SECONDS, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=TIMEOUT_SECONDS)
    with smtp:
        smtp.ehlo()
        secure = port == IMPLICIT_TLS_PORT
        if not secure and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
            secure = True
        if username:
            if not secure and host not in _LOCAL_HOSTS:
                raise _Refused("the server offers no TLS: the password is not sent in clear",
                               False)  # fmt: skip
            smtp.login(username, password)
        smtp.send_message(message)


class EmailTrigger(ParameterizedTrigger[EmailTriggerConfig]):
    """Sends one e-mail per recipient per firing (see the module docstring)."""

    type_name: ClassVar[str] = "email"
    config_model: ClassVar[type[SpecModel]] = EmailTriggerConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg, records = self._config_for(inv.events)
        problem = cfg.problem()
        if problem is not None:
            raise PermanentError(f"email: {problem}")
        password = ""
        if cfg.smtp_password is not None:
            sel = cfg.smtp_password
            password = await read_secret(self.ctx, inv.namespace, sel.name, sel.key)
        port = cfg.port or DEFAULT_PORT

        async def new_state() -> _Served:
            return _Served()

        served = await self.ctx.shared.get(
            ("email.served", inv.namespace, inv.key), new_state, ttl_seconds=STATE_TTL_SECONDS
        )
        transient: dict[str, str] = {}
        for n, addr in enumerate(dict.fromkeys(cfg.to)):
            if addr in served.delivered or addr in served.refused:
                continue
            message = EmailMessage()
            message["From"] = cfg.from_
            message["To"] = addr
            message["Subject"] = cfg.subject
            message["Date"] = formatdate(localtime=False)
            message["Message-ID"] = f"<{inv.key}.{n}@triggerfish>"
            message.set_content(cfg.body)
            try:
                await asyncio.to_thread(_send_one, cfg.host, port, cfg.username, password, message)
            except _Refused as e:
                (transient if e.transient else served.refused)[addr] = str(e)
            except Exception as e:  # smtplib, ssl and socket errors: classified
                refused = _classify(e)
                text = str(refused).replace(password, "<password>") if password else str(refused)
                (transient if refused.transient else served.refused)[addr] = text
            else:
                served.delivered.add(addr)
        where = f"email via {cfg.host}:{port}"
        if transient:
            raise TransientError(f"{where}: {_listing(transient)}")
        if served.refused:
            raise PermanentError(f"{where}: {_listing(served.refused)}")
        detail: dict[str, Any] = {"name": where, "to": sorted(served.delivered),
                                  "subject": cfg.subject}  # fmt: skip
        return TriggerResult("sent", detail, records)


__all__ = ["EmailTrigger", "EmailTriggerConfig"]
