"""The ``email`` trigger against a real SMTP server (``aiosmtpd``, on 127.0.0.1): directly
and end to end through the sensor runner over the bus.

Covers one message per recipient with Argo's fields, parameters filling ``to`` and
``body`` (Argo's example), STARTTLS with a certificate from a test CA and login,
rejected credentials and certificates, recipients refused for good or for now (a retry
sends only to those not yet served), an outage retried then dead-lettered by the
runner, and the password kept out of messages, traces and logs.
"""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_file, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.email import EmailTrigger, EmailTriggerConfig
from tests.support.net import free_port
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_argo_corpus import CORPUS
from tests.test_trigger_http import make_pki, secret_manifest

NS = "ns1"
PASSWORD = "smtp-pa55-s3cret"
PASSWORD_REF = {"name": "smtp-secret", "key": "password"}


# --------------------------------------------------------------------------- the server


@dataclass
class Mailbox:
    """What the SMTP server accepted, and the answers it gives to some recipients."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    rcpt_answers: dict[str, list[str]] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        answers = self.rcpt_answers.get(address)
        if answers:
            return answers.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"mailer",
            PASSWORD.encode(),
        )
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    box: Mailbox
    controller: Controller
    port: int


def start_smtp(box: Mailbox, tls: ssl.SSLContext | None = None, port: int = 0) -> SmtpServer:
    port = port or free_port()
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"tls_context": tls, "require_starttls": True, "auth_required": True,
                   "authenticator": box.authenticate, "auth_require_tls": True}  # fmt: skip
    controller = Controller(box, hostname="127.0.0.1", port=port, **options)
    controller.start()
    return SmtpServer(box, controller, port)


def text(msg: EmailMessage) -> str:
    """The body as sent, with SMTP's CRLF line ends as written."""
    return str(msg.get_content()).replace("\r\n", "\n")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    s = start_smtp(Mailbox())
    try:
        yield s
    finally:
        s.controller.stop()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("smtp-secret", password=PASSWORD, wrong="nope")])
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="webhook", subject="example", type="webhook",
                 data=data)  # fmt: skip


def invocation(data: Any, key: str = "k" * 32) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, key)


def trigger(ctx: TriggerContext, port: int, **cfg: Any) -> EmailTrigger:
    base = {"host": "127.0.0.1", "port": port, "from": "example@email.com",
            "subject": "Hello There", "body": "hi", "to": ["target1@email.com"]}  # fmt: skip
    return EmailTrigger(EmailTriggerConfig.model_validate({**base, **cfg}), ctx)


# --------------------------------------------------------------------------- direct


async def test_one_message_per_recipient(smtp: SmtpServer, ctx: TriggerContext) -> None:
    to = ["target1@email.com", "target2@email.online"]
    result = await trigger(ctx, smtp.port, to=to, body="line 1\nline 2 é").execute(
        invocation({}, key="f" * 32)
    )
    assert [(frm, rcpts) for frm, rcpts, _ in smtp.box.messages] == [
        ("example@email.com", ["target1@email.com"]),
        ("example@email.com", ["target2@email.online"]),
    ]
    for n, (_frm, rcpts, msg) in enumerate(smtp.box.messages):
        assert msg["To"] == rcpts[0] and msg["From"] == "example@email.com"
        assert msg["Subject"] == "Hello There"
        assert msg["Message-ID"] == f"<{'f' * 32}.{n}@triggerfish>"
        assert text(msg) == "line 1\nline 2 é\n"
    assert result.action == "sent" and result.detail["to"] == sorted(to)


async def test_parameters_fill_to_and_body(smtp: SmtpServer, ctx: TriggerContext) -> None:
    t = trigger(ctx, smtp.port, to=[], body="", parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "body.to"}, "dest": "to.-1"},
        {"src": {"dependencyName": "test-dep",
                 "dataTemplate": "Hi {{.Input.body.name}},\n\n\tHello There."}, "dest": "body"},
    ])  # fmt: skip
    await t.execute(invocation({"body": {"to": "obi@email.com", "name": "Obi"}}))
    [(_frm, rcpts, msg)] = smtp.box.messages
    assert rcpts == ["obi@email.com"]
    assert text(msg) == "Hi Obi,\n\n\tHello There.\n"


async def test_invalid_address_from_a_parameter_is_permanent(
    smtp: SmtpServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, smtp.port, parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "to"}, "dest": "to.-1"}])  # fmt: skip
    with pytest.raises(PermanentError, match="not a valid e-mail address"):
        await t.execute(invocation({"to": "not-an-address"}))
    assert smtp.box.messages == []


@pytest.mark.parametrize(("field_name", "value"), [("to", []), ("subject", ""), ("body", ""),
                                                   ("from", "")])  # fmt: skip
async def test_empty_fields_are_permanent(
    smtp: SmtpServer, ctx: TriggerContext, field_name: str, value: Any
) -> None:
    with pytest.raises(PermanentError, match=f"{field_name} can't be empty"):
        await trigger(ctx, smtp.port, **{field_name: value}).execute(invocation({}))


async def test_refused_recipients_and_retries_send_only_the_rest(
    smtp: SmtpServer, ctx: TriggerContext
) -> None:
    smtp.box.rcpt_answers = {"later@email.com": ["451 4.3.0 try again later"],
                             "gone@email.com": ["550 5.1.1 no such user"]}  # fmt: skip
    t = trigger(ctx, smtp.port, to=["ok@email.com", "later@email.com", "gone@email.com"])
    with pytest.raises(TransientError, match=r"later@email\.com: recipient refused: 451"):
        await t.execute(invocation({}))
    assert [r for _f, r, _m in smtp.box.messages] == [["ok@email.com"]]
    # the retry of the same firing: only the recipient refused for now is tried again
    with pytest.raises(PermanentError, match=r"gone@email\.com: recipient refused: 550") as err:
        await t.execute(invocation({}))
    assert "ok@email.com" not in str(err.value)
    assert [r for _f, r, _m in smtp.box.messages] == [["ok@email.com"], ["later@email.com"]]


async def test_an_unreachable_server_is_transient(ctx: TriggerContext) -> None:
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        await trigger(ctx, free_port()).execute(invocation({}))


async def test_no_password_over_a_plain_connection_to_a_remote_name(
    smtp: SmtpServer, ctx: TriggerContext
) -> None:
    # "127.1" is this machine, but not one of the names a password may go to in clear
    t = trigger(ctx, smtp.port, host="127.1", username="mailer", smtpPassword=PASSWORD_REF)
    with pytest.raises(PermanentError, match="the password is not sent in clear"):
        await t.execute(invocation({}))
    assert smtp.box.messages == [] and smtp.box.logins == []


async def test_starttls_and_login(
    tmp_path: Path, ctx: TriggerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "s.crt").write_text(pki.server_cert_pem)
    (tmp_path / "s.key").write_text(pki.server_key_pem)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    server = start_smtp(Mailbox(), tls)
    try:
        # the server's certificate is not trusted by the system store
        with pytest.raises(PermanentError, match="certificate verification failed"):
            await trigger(ctx, server.port, username="mailer", smtpPassword=PASSWORD_REF).execute(
                invocation({})
            )
        # trusted through the process's CA file, as a mounted CA bundle would be
        (tmp_path / "ca.pem").write_text(pki.ca_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        await trigger(ctx, server.port, username="mailer", smtpPassword=PASSWORD_REF).execute(
            invocation({}, key="t" * 32)  # another firing: the refusal above is remembered
        )
        assert len(server.box.messages) == 1 and server.box.logins
        wrong = trigger(ctx, server.port, username="mailer",
                        smtpPassword={**PASSWORD_REF, "key": "wrong"})  # fmt: skip
        with pytest.raises(PermanentError, match="authentication failed") as err:
            await wrong.execute(invocation({}, key="w" * 32))
        assert PASSWORD not in str(err.value)
        # without login the server refuses the mail (530): permanent
        with pytest.raises(PermanentError, match="530"):
            await trigger(ctx, server.port).execute(invocation({}, key="n" * 32))
    finally:
        server.controller.stop()


# --------------------------------------------------------------------------- config


def sensor_doc(email_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "mail", "email": email_cfg}, **trigger_extra}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"host": ""}, "host can't be empty"),
        ({}, "host: required field is missing"),
        ({"host": "h", "port": 70000}, "port"),
        ({"host": "h", "to": ["a@b.cd", "nope"]}, "'nope' is not a valid e-mail address"),
        ({"host": "h", "from": "x"}, "'x' is not a valid e-mail address"),
        ({"host": "h", "smtpPassword": {"name": "a"}}, "smtpPassword.key"),
    ],
)
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_argo_example_loads() -> None:
    assert load_file(CORPUS / "sensors" / "email-trigger.yaml").errors == []


# --------------------------------------------------------------------------- end to end


async def test_runner_sends_argos_example_and_keeps_the_password_secret(
    bus: Bus, smtp: SmtpServer, ctx: TriggerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc(
        {"username": "", "smtpPassword": PASSWORD_REF, "host": "127.0.0.1", "port": smtp.port,
         "from": "example@email.com", "subject": "Hello There"},
        parameters=[
            {"src": {"dependencyName": "test-dep", "dataKey": "body.to"}, "dest": "email.to.-1"},
            {"src": {"dependencyName": "test-dep",
                     "dataTemplate": "Hi {{.Input.body.name}},\n\n\tHello There.\n\nThanks,\nObi"},
             "dest": "email.body"},
        ])))  # fmt: skip
    await bus.publish("default", event({"body": {"to": "luke@email.com", "name": "Luke"}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "sent", 1)
    [(_frm, rcpts, msg)] = smtp.box.messages
    assert rcpts == ["luke@email.com"]
    assert text(msg) == "Hi Luke,\n\n\tHello There.\n\nThanks,\nObi\n"
    trace = orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
    assert PASSWORD not in trace and PASSWORD not in caplog.text


async def test_runner_retries_an_outage_then_dead_letters(bus: Bus, ctx: TriggerContext) -> None:
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc(
        {"host": "127.0.0.1", "port": free_port(), "from": "a@email.com", "subject": "s",
         "body": "b", "to": ["b@email.com"]},
        retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    ev = event({})
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert "ConnectionRefusedError" in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "mail" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()
