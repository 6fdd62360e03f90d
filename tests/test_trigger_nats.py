"""The ``nats`` trigger against a second, real ``nats-server`` (not the bus): directly and
end to end through the sensor runner over the bus.

Covers the payload built from parameters, parameters applied to the config (subject),
token and user/password authentication, TLS with a CA from a Secret, the
``Nats-Msg-Id`` header (a JetStream stream stores a retried firing once), a peer outage
(transient, then retried and dead-lettered by the runner) and secrets kept out of
messages, traces and logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.aio.msg import Msg

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.nats import NatsTrigger, NatsTriggerConfig
from tests.support.natspeer import NatsPeer, operator_setup
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_trigger_http import make_pki, secret_manifest

NS = "ns1"
TOKEN = "nats-t0ken-s3cret"
PASSWORD = "pa55-w0rd-s3cret"


# --------------------------------------------------------------------------- peers


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[NatsPeer]:
    p = NatsPeer(tmp_path / "peer").start()
    try:
        yield p
    finally:
        p.stop()


class Inbox:
    """A subscriber on the peer recording every message of one subject."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.nc: Any = None

    async def open(self, url: str, subject: str, **options: Any) -> Inbox:
        self.nc = await nats.connect(url, **options)

        async def cb(msg: Msg) -> None:
            self.msgs.append(msg)

        await self.nc.subscribe(subject, cb=cb)
        await self.nc.flush()
        return self

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


@contextlib.asynccontextmanager
async def inbox(url: str, subject: str, **options: Any) -> AsyncIterator[Inbox]:
    box = await Inbox().open(url, subject, **options)
    try:
        yield box
    finally:
        await box.close()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("nats", token=TOKEN, user="bob", pw=PASSWORD)])
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="hook", subject="a", type="minio", data=data)


def invocation(data: Any, key: str = "k" * 32) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, key)


def trigger(ctx: TriggerContext, **cfg: Any) -> NatsTrigger:
    cfg.setdefault("payload", [])
    return NatsTrigger(NatsTriggerConfig.model_validate(cfg), ctx)


PAYLOAD = [
    {"src": {"dependencyName": "test-dep", "dataKey": "notification.0.s3.object.key"},
     "dest": "fileName"},
    {"src": {"dependencyName": "test-dep", "dataKey": "notification.0.s3.bucket.name"},
     "dest": "bucket"},
    {"src": {"dependencyName": "test-dep", "dataKey": "size", "useRawData": True},
     "dest": "meta.size"},
]  # fmt: skip
S3 = {"notification": [{"s3": {"object": {"key": "a.txt"}, "bucket": {"name": "b1"}}}], "size": 3}


# --------------------------------------------------------------------------- direct


async def test_payload_arrives_with_the_parameters_applied(
    peer: NatsPeer, ctx: TriggerContext
) -> None:
    async with inbox(peer.url, "minio-events") as box:
        t = trigger(ctx, url=peer.url.removeprefix("nats://"), subject="minio-events",
                    payload=PAYLOAD)  # fmt: skip
        result = await t.execute(invocation(S3, key="f" * 32))
        await eventually(lambda: len(box.msgs) == 1)
    [msg] = box.msgs
    assert orjson.loads(msg.data) == {"fileName": "a.txt", "bucket": "b1", "meta": {"size": 3}}
    assert msg.headers == {"Nats-Msg-Id": "f" * 32}
    assert result.action == "published"
    assert result.detail["subject"] == "minio-events"
    assert [r["dest"] for r in result.parameters] == ["fileName", "bucket", "meta.size"]


async def test_parameters_set_the_subject(peer: NatsPeer, ctx: TriggerContext) -> None:
    async with inbox(peer.url, "files.>") as box:
        t = trigger(ctx, url=peer.url, subject="files.unset", payload=PAYLOAD[:1], parameters=[
            {"src": {"dependencyName": "test-dep",
                     "dataTemplate": "files.n{{ .Input.size }}"},
             "dest": "subject"}])  # fmt: skip
        await t.execute(invocation(S3))
        await eventually(lambda: len(box.msgs) == 1)
    assert box.msgs[0].subject == "files.n3"


async def test_missing_payload_value_is_permanent(peer: NatsPeer, ctx: TriggerContext) -> None:
    t = trigger(ctx, url=peer.url, subject="x", payload=PAYLOAD)
    with pytest.raises(PermanentError, match=r"notification\.0\.s3\.object\.key"):
        await t.execute(invocation({"other": 1}))


async def test_token_auth(tmp_path: Path, ctx: TriggerContext) -> None:
    p = NatsPeer(tmp_path / "tok", token=TOKEN).start()
    try:
        async with inbox(p.url, "s", token=TOKEN) as box:
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                        auth={"token": {"name": "nats", "key": "token"}})  # fmt: skip
            await t.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 1)
        # the wrong token: refused, permanently, and the message shows no secret
        bad = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                      auth={"token": {"name": "nats", "key": "pw"}})  # fmt: skip
        with pytest.raises(PermanentError, match="authorization violation") as err:
            await bad.execute(invocation(S3))
        assert TOKEN not in str(err.value) and PASSWORD not in str(err.value)
        # no auth at all
        with pytest.raises(PermanentError, match="authorization violation"):
            await trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1]).execute(invocation(S3))
    finally:
        p.stop()


async def test_basic_auth(tmp_path: Path, ctx: TriggerContext) -> None:
    p = NatsPeer(tmp_path / "basic", user="bob", password=PASSWORD).start()
    try:
        async with inbox(p.url, "s", user="bob", password=PASSWORD) as box:
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                        auth={"basic": {"username": {"name": "nats", "key": "user"},
                                        "password": {"name": "nats", "key": "pw"}}})  # fmt: skip
            await t.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 1)
        assert orjson.loads(box.msgs[0].data) == {"fileName": "a.txt"}
    finally:
        p.stop()


async def test_nkey_auth(tmp_path: Path) -> None:
    import os

    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    other = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    p = NatsPeer(
        tmp_path / "nkey", config=f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'
    )
    p.start()
    values = {"seed": seed.decode() + "\n", "other": other.decode(), "junk": "SUnot-a-seed"}
    secrets = ManifestSecrets([secret_manifest("nk", **values)])
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"), secrets=secrets)
    try:
        async with inbox(p.url, "s", nkeys_seed_str=seed.decode()) as box:
            auth = {"nkey": {"name": "nk", "key": "seed"}}
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1], auth=auth)
            await t.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 1)
        for key in ("other", "junk"):
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                        auth={"nkey": {"name": "nk", "key": key}})  # fmt: skip
            with pytest.raises(PermanentError) as err:
                await t.execute(invocation(S3))
            assert seed.decode() not in str(err.value) and other.decode() not in str(err.value)
    finally:
        await ctx.shared.aclose()
        p.stop()


async def test_credential_auth(tmp_path: Path) -> None:
    from nats.aio.client import RawCredentials

    setup = operator_setup()
    p = NatsPeer(tmp_path / "jwt", config=setup.config).start()
    values = {"creds": setup.creds, "stranger": setup.stranger_creds, "junk": "not creds"}
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"),
                         secrets=ManifestSecrets([secret_manifest("nc", **values)]))  # fmt: skip
    try:
        async with inbox(p.url, "s", user_credentials=RawCredentials(setup.creds)) as box:
            auth = {"credential": {"name": "nc", "key": "creds"}}
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1], auth=auth)
            await t.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 1)
        for key in ("stranger", "junk"):
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                        auth={"credential": {"name": "nc", "key": key}})  # fmt: skip
            with pytest.raises(PermanentError) as err:
                await t.execute(invocation(S3))
            assert "SEED" not in str(err.value) and "NKEY" not in str(err.value)
    finally:
        await ctx.shared.aclose()
        p.stop()


async def test_a_publish_the_user_may_not_make_is_permanent(tmp_path: Path) -> None:
    permissions = '{ publish: ["allowed.>", "_INBOX.>"], subscribe: ">" }'
    user = f'{{ user: "bob", password: "{PASSWORD}", permissions: {permissions} }}'
    config = f"authorization {{ users = [ {user} ] }}"
    p = NatsPeer(tmp_path / "perm", config=config).start()
    secrets = ManifestSecrets([secret_manifest("nats", user="bob", pw=PASSWORD)])
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"), secrets=secrets)
    auth = {"basic": {"username": {"name": "nats", "key": "user"},
                      "password": {"name": "nats", "key": "pw"}}}  # fmt: skip
    try:
        async with inbox(p.url, ">", user="bob", password=PASSWORD) as box:
            denied = trigger(ctx, url=p.url, subject="other.x", payload=PAYLOAD[:1], auth=auth)
            with pytest.raises(PermanentError, match=r"not permitted to publish on 'other\.x'"):
                await denied.execute(invocation(S3))
            allowed = trigger(ctx, url=p.url, subject="allowed.x", payload=PAYLOAD[:1], auth=auth)
            await allowed.execute(invocation(S3))  # the same connection, still usable
            await eventually(lambda: len(box.msgs) == 1)
        assert box.msgs[0].subject == "allowed.x"
    finally:
        await ctx.shared.aclose()
        p.stop()


async def test_missing_secret_is_permanent(peer: NatsPeer, ctx: TriggerContext) -> None:
    t = trigger(ctx, url=peer.url, subject="s", payload=PAYLOAD[:1],
                auth={"token": {"name": "nats", "key": "nokey"}})  # fmt: skip
    with pytest.raises(PermanentError, match="nokey"):
        await t.execute(invocation(S3))


async def test_tls_with_a_ca_from_a_secret(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "s.crt").write_text(pki.server_cert_pem)
    (tmp_path / "s.key").write_text(pki.server_key_pem)
    p = NatsPeer(tmp_path / "tls", tls_cert=tmp_path / "s.crt", tls_key=tmp_path / "s.key")
    p.start()
    secrets = ManifestSecrets([secret_manifest("tls", ca=pki.ca_pem)])
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"), secrets=secrets)
    try:
        import ssl

        client_tls = ssl.create_default_context(cadata=pki.ca_pem)
        async with inbox(p.url, "s", tls=client_tls) as box:
            t = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                        tls={"caCertSecret": {"name": "tls", "key": "ca"}})  # fmt: skip
            await t.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 1)
            # without the CA the server's certificate is not trusted
            with pytest.raises(PermanentError, match="certificate verification failed"):
                await trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                              tls={}).execute(invocation(S3))  # fmt: skip
            skip = trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                           tls={"insecureSkipVerify": True})  # fmt: skip
            await skip.execute(invocation(S3))
            await eventually(lambda: len(box.msgs) == 2)
    finally:
        await ctx.shared.aclose()
        p.stop()


async def test_mutual_tls(tmp_path: Path) -> None:
    import ssl

    pki = make_pki(tmp_path)
    for name, text in (("s.crt", pki.server_cert_pem), ("s.key", pki.server_key_pem),
                       ("ca.pem", pki.ca_pem), ("c.crt", pki.client_cert_pem),
                       ("c.key", pki.client_key_pem)):  # fmt: skip
        (tmp_path / name).write_text(text)
    p = NatsPeer(tmp_path / "mtls", tls_cert=tmp_path / "s.crt", tls_key=tmp_path / "s.key",
                 tls_client_ca=tmp_path / "ca.pem").start()  # fmt: skip
    secrets = ManifestSecrets([secret_manifest("tls", ca=pki.ca_pem, crt=pki.client_cert_pem,
                                               key=pki.client_key_pem)])  # fmt: skip
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"), secrets=secrets)
    try:
        client_tls = ssl.create_default_context(cadata=pki.ca_pem)
        client_tls.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
        async with inbox(p.url, "s", tls=client_tls) as box:
            mtls = {"caCertSecret": {"name": "tls", "key": "ca"},
                    "clientCertSecret": {"name": "tls", "key": "crt"},
                    "clientKeySecret": {"name": "tls", "key": "key"}}  # fmt: skip
            await trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1], tls=mtls).execute(
                invocation(S3)
            )
            await eventually(lambda: len(box.msgs) == 1)
            # trusted server, but no client certificate: the server refuses the handshake
            ca_only = {"caCertSecret": {"name": "tls", "key": "ca"}}
            with pytest.raises(TransientError, match="cannot connect"):
                await trigger(ctx, url=p.url, subject="s", payload=PAYLOAD[:1],
                              tls=ca_only).execute(invocation(S3))  # fmt: skip
    finally:
        await ctx.shared.aclose()
        p.stop()


async def test_outage_is_transient_and_the_next_attempt_reconnects(
    peer: NatsPeer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, url=peer.url, subject="s", payload=PAYLOAD[:1])
    await t.execute(invocation(S3))  # connected
    peer.stop()
    with pytest.raises(TransientError, match="publish on 's' failed"):
        await t.execute(invocation(S3))
    with pytest.raises(TransientError, match="cannot connect"):
        await t.execute(invocation(S3))
    peer.start()  # same port
    async with inbox(peer.url, "s") as box:
        await t.execute(invocation(S3))
        await eventually(lambda: len(box.msgs) == 1)


async def test_jetstream_stores_a_retried_firing_once(tmp_path: Path, ctx: TriggerContext) -> None:
    p = NatsPeer(tmp_path / "js", jetstream=True).start()
    nc = await nats.connect(p.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FILES", subjects=["files"])
        t = trigger(ctx, url=p.url, subject="files", payload=PAYLOAD[:1])
        await t.execute(invocation(S3, key="a" * 32))
        await t.execute(invocation(S3, key="a" * 32))  # the same firing, again
        await t.execute(invocation(S3, key="b" * 32))
        info = await js.stream_info("FILES")
        assert info.state.messages == 2
    finally:
        await nc.close()
        p.stop()


# --------------------------------------------------------------------------- config


def sensor_doc(nats_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "hook", "eventName": "a"}],
            "triggers": [{"template": {"name": "pub", "nats": nats_cfg}, **trigger_extra}],
        },
    }


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"url": "", "subject": "s", "payload": []}, "nats server url can't be empty"),
        ({"url": "h:4222", "subject": "", "payload": []}, "nats subject can't be empty"),
        ({"url": "h:4222", "subject": "a.*", "payload": []}, "not a subject to publish on"),
        ({"url": "h:4222", "subject": "s"}, "payload: required field is missing"),
        ({"url": "h:4222", "subject": "s", "payload": [{"src": {"dependencyName": "test-dep"},
                                                         "dest": ""}]}, "must not be empty"),
        ({"url": "h:4222", "subject": "s", "payload": [],
          "auth": {"token": {"name": "a", "key": "b"}, "basic": {}}}, "only one of"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


def test_argo_example_shape_loads() -> None:
    _obj, lines = check_one(sensor_doc({"url": "nats.argo-events.svc:4222",
                                        "subject": "minio-events", "payload": PAYLOAD,
                                        "auth": {"token": {"name": "a", "key": "b"}},
                                        "tls": {"insecureSkipVerify": True}}))  # fmt: skip
    assert lines == []


# --------------------------------------------------------------------------- end to end


async def test_runner_publishes_once_per_event_and_keeps_the_token_secret(
    bus: Bus, tmp_path: Path, ctx: TriggerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = NatsPeer(tmp_path / "tok", token=TOKEN).start()
    h = SensorHarness(bus, ctx)
    try:
        async with inbox(p.url, "minio-events", token=TOKEN) as box:
            await h.start(load_one(sensor_doc({
                "url": p.url, "subject": "minio-events", "payload": PAYLOAD,
                "auth": {"token": {"name": "nats", "key": "token"}}})))  # fmt: skip
            ev = event(S3)
            await bus.publish("default", ev)
            await eventually(lambda: len(h.traces.recent()) == 1)
            await eventually(lambda: len(box.msgs) == 1)
        out = h.traces.recent()[0].triggers[0]
        assert (out.status, out.action, out.attempts) == ("succeeded", "published", 1)
        assert orjson.loads(box.msgs[0].data) == {"fileName": "a.txt", "bucket": "b1",
                                                  "meta": {"size": 3}}  # fmt: skip
        trace = orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
        assert TOKEN not in trace
        assert TOKEN not in caplog.text
    finally:
        await h.stop()
        p.stop()


async def test_runner_retries_an_outage_then_dead_letters(
    bus: Bus, peer: NatsPeer, ctx: TriggerContext
) -> None:
    url = peer.url
    peer.stop()
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"url": url, "subject": "s", "payload": PAYLOAD},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    ev = event(S3)
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1, timeout=30)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert "cannot connect" in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "pub" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()
