"""The ``gitlab``, ``bitbucket`` and ``bitbucketserver`` sources: their checks, Argo's
event data, and hook registration against FAKE provider APIs over HTTP
(``tests/fakegithosts``); then one end-to-end run each through ``triggerfish run`` on the
type's example (``examples/train-on-<type>-push``) with a real nats-server and the fake
Kubernetes API (its sample push starts a Workflow with the commit from the payload; a
bad token/signature, or for Bitbucket Cloud, which does not sign, a body that is not
JSON, starts nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.kernel.events import Event
from app.kernel.spec import SpecModel
from eventsources.base import SourceContext
from eventsources.bitbucket import BitbucketConfig, BitbucketSource
from eventsources.bitbucketserver import BitbucketServerConfig, BitbucketServerSource
from eventsources.gitlab import GitlabConfig, GitlabSource
from eventsources.webhook import WebhookServedSource
from tests.fakegithosts import FakeHookHost, threaded
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.support.sources import CountingMetrics, DictSecrets
from tests.test_seed_e2e import list_workflows, params_of

SECRET = "hook-secret-7c6b5a4d"
TOKEN = "api-t0ken-3e2d1c0b"
USER, PASSWORD = "robot", "app-passw0rd-8d7c6b"
HOOK_URL = "https://hooks.example.com/push"
SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"

GITLAB_PUSH = {"object_kind": "push", "ref": "refs/heads/main", "checkout_sha": SHA,
               "project": {"path_with_namespace": "ml-team/training"}}  # fmt: skip
BITBUCKET_PUSH = {"push": {"changes": [{"new": {"name": "main", "target": {"hash": SHA}}}]},
                  "repository": {"full_name": "ml-team/training"}}  # fmt: skip
BBS_REFS_CHANGED = {"eventKey": "repo:refs_changed", "changes": [
    {"ref": {"id": "refs/heads/main"}, "toHash": SHA, "type": "UPDATE"}]}  # fmt: skip

SECRETS = DictSecrets({("git", "secret"): SECRET, ("git", "token"): TOKEN,
                       ("git", "user"): USER, ("git", "password"): PASSWORD})  # fmt: skip
SECRET_REF = {"name": "git", "key": "secret"}
TOKEN_REF = {"name": "git", "key": "token"}


def hub(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Publisher:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


def make(cls: type[WebhookServedSource[Any]], events: Mapping[str, SpecModel]) -> tuple[
    WebhookServedSource[Any], Publisher]:  # fmt: skip
    pub = Publisher()
    ctx = SourceContext(publish=pub, secrets=SECRETS, metrics=CountingMetrics(),
                        log=logging.getLogger("test.githosts"), bind_host="127.0.0.1")  # fmt: skip
    source = cls(cls.type_name, "argo-events", events, ctx)
    source.registration_retry_seconds = 0.05
    return source, pub


@contextlib.asynccontextmanager
async def asgi(
    cls: type[WebhookServedSource[Any]], cfg: SpecModel
) -> AsyncIterator[tuple[httpx.AsyncClient, Publisher]]:
    source, pub = make(cls, {"push": cfg})
    apps = await source.prepare()
    port = next(iter(apps))
    transport = httpx.ASGITransport(app=apps[port])
    async with httpx.AsyncClient(transport=transport, base_url="http://git") as c:
        yield c, pub


async def run_until(source: WebhookServedSource[Any], condition: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(source.run())
    for _ in range(1000):
        if condition():
            return task
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def fake_host(kind: str, **creds: str) -> AsyncIterator[FakeHookHost]:
    fake = FakeHookHost(kind, **creds)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def register_twice_then_finish(
    cls: type[WebhookServedSource[Any]], make_cfg: Any, fake: FakeHookHost, collection: str
) -> list[dict[str, Any]]:
    """Run the source twice (a restart), each time until its hook exists; the second run
    ends with ``deleteHookOnFinish``. The hooks seen after the second registration."""
    seen: list[dict[str, Any]] = []
    for delete in (False, True):
        source, _ = make(cls, {"push": make_cfg(free_port(), delete)})
        task = await run_until(
            source, lambda s=source: s.ready() and bool(s.managed_hooks.targets)
            and s.managed_hooks.complete)  # fmt: skip
        seen = [dict(h) for h in fake.hooks.get(collection, [])]
        await stop(task)
    return seen


# -- gitlab -----------------------------------------------------------------------------


def gitlab_cfg(port: int = 12000, **fields: Any) -> GitlabConfig:
    spec: dict[str, Any] = {
        "webhook": {"endpoint": "/push", "port": str(port)},
        "projects": ["ml-team/training"],
        "events": ["PushEvents", "TagPushEvents"],
        "accessToken": TOKEN_REF,
        "secretToken": SECRET_REF,
        "gitlabBaseURL": "https://gitlab.example.com",
    }
    spec.update(fields)
    return GitlabConfig.model_validate(spec)


@pytest.mark.parametrize(("token", "status", "published"),
                         [(SECRET, 200, 1), (None, 401, 0), ("guess", 403, 0)])  # fmt: skip
async def test_gitlab_token_is_checked_and_data_is_argo_shaped(
    token: str | None, status: int, published: int
) -> None:
    headers = {"X-Gitlab-Event": "Push Hook"} | ({"X-Gitlab-Token": token} if token else {})
    async with asgi(GitlabSource, gitlab_cfg(metadata={"k": "v"})) as (c, pub):
        r = await c.post("/push", json=GITLAB_PUSH, headers=headers)
    assert r.status_code == status
    assert len(pub.events) == published
    if published:
        data = pub.events[0].data
        assert data["body"] == GITLAB_PUSH and data["metadata"] == {"k": "v"}
        assert data["headers"]["X-Gitlab-Event"] == ["Push Hook"]
        assert data["headers"]["X-Gitlab-Token"] == ["*** Masked Auth Secret ***"]
        assert pub.events[0].type == "gitlab"


async def test_gitlab_body_must_be_json() -> None:
    async with asgi(GitlabSource, gitlab_cfg()) as (c, pub):
        r = await c.post("/push", content=b"not json", headers={"X-Gitlab-Token": SECRET})
    assert r.status_code == 400 and pub.events == []


def test_gitlab_validation() -> None:
    lines = GitlabSource.check_config("gitlab", {"push": gitlab_cfg(
        events=["PushEvents", "Pushes"], gitlabBaseURL="", accessToken=None)})  # fmt: skip
    assert any(line.startswith("spec.gitlab.push.events[1]: unknown event 'Pushes'")
               for line in lines)  # fmt: skip
    assert "spec.gitlab.push.gitlabBaseURL: gitlab base url can't be empty" in lines
    assert "spec.gitlab.push.accessToken: access token can't be nil" in lines


async def test_gitlab_project_and_group_hooks_registered_once_and_deleted() -> None:
    async with fake_host("gitlab", token=TOKEN) as fake:

        def cfg(port: int, delete: bool) -> GitlabConfig:
            return gitlab_cfg(port, groups=["ml-team"], gitlabBaseURL=fake.api_url,
                              deleteHookOnFinish=delete,
                              webhook={"endpoint": "/push", "port": str(port),
                                       "url": "https://hooks.example.com"})  # fmt: skip

        hooks = await register_twice_then_finish(
            GitlabSource, cfg, fake, "projects/ml-team/training"
        )
        [hook] = hooks
        assert hook["url"] == HOOK_URL and hook["token"] == SECRET
        assert (hook["push_events"], hook["tag_push_events"], hook["issues_events"]) == (
            True, True, False)  # fmt: skip
        assert hook["enable_ssl_verification"] is False
        assert fake.hooks["projects/ml-team/training"] == []
        assert fake.hooks["groups/ml-team"] == []
        assert [m for m, _ in fake.calls].count("POST") == 2  # one per place, never again


# -- bitbucket (cloud) ------------------------------------------------------------------


def bitbucket_cfg(port: int = 12000, **fields: Any) -> BitbucketConfig:
    spec: dict[str, Any] = {
        "webhook": {"endpoint": "/push", "port": str(port)},
        "repositories": [{"owner": "ml-team", "repositorySlug": "training"}],
        "events": ["repo:push"],
    }
    spec.update(fields)
    return BitbucketConfig.model_validate(spec)


async def test_bitbucket_publishes_argo_shaped_data_without_verification() -> None:
    async with asgi(BitbucketSource, bitbucket_cfg()) as (c, pub):
        r = await c.post("/push", json=BITBUCKET_PUSH, headers={"X-Event-Key": "repo:push"})
        bad = await c.post("/push", content=b"<xml/>")
    assert r.status_code == 200 and bad.status_code == 400
    [event] = pub.events
    assert event.data == {"headers": event.data["headers"], "body": BITBUCKET_PUSH}
    assert event.data["headers"]["X-Event-Key"] == ["repo:push"]


def test_bitbucket_validation() -> None:
    lines = BitbucketSource.check_config("bb", {"push": bitbucket_cfg(
        repositories=[], events=[], auth={"oauthToken": TOKEN_REF},
        webhook={"endpoint": "/push", "port": "12000", "url": "https://x"})})  # fmt: skip
    assert "spec.bitbucket.push.repositories: at least one repository is required" in lines
    assert any(line.startswith("spec.bitbucket.push.events:") for line in lines)


@pytest.mark.parametrize(
    "auth",
    [
        {"basic": {"username": {"name": "git", "key": "user"},
                   "password": {"name": "git", "key": "password"}}},
        {"oauthToken": TOKEN_REF},
    ],
)  # fmt: skip
async def test_bitbucket_hooks_with_basic_or_oauth_auth(
    auth: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_host("bitbucket", token=TOKEN, username=USER, password=PASSWORD) as fake:
        monkeypatch.setattr(BitbucketSource, "api_url", fake.api_url)

        def cfg(port: int, delete: bool) -> BitbucketConfig:
            return bitbucket_cfg(port, auth=auth, deleteHookOnFinish=delete,
                                 webhook={"endpoint": "/push", "port": str(port),
                                          "url": "https://hooks.example.com"})  # fmt: skip

        collection = "repositories/ml-team/training"
        [hook] = await register_twice_then_finish(BitbucketSource, cfg, fake, collection)
        assert (hook["url"], hook["events"], hook["active"]) == (HOOK_URL, ["repo:push"], True)
        assert hook["uuid"].startswith("{")
        assert fake.hooks[collection] == []
        assert [m for m, _ in fake.calls].count("POST") == 1


async def test_bitbucket_wrong_credentials_register_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with fake_host("bitbucket", username=USER, password="other") as fake:
        monkeypatch.setattr(BitbucketSource, "api_url", fake.api_url)
        auth = {"basic": {"username": {"name": "git", "key": "user"},
                          "password": {"name": "git", "key": "password"}}}  # fmt: skip
        webhook = {
            "endpoint": "/push",
            "port": str(free_port()),
            "url": "https://hooks.example.com",
        }
        cfg = bitbucket_cfg(auth=auth, webhook=webhook)
        source, _ = make(BitbucketSource, {"push": cfg})
        with caplog.at_level(logging.WARNING, "test.githosts"):
            task = await run_until(source, lambda: len(fake.calls) >= 2)
            await stop(task)
        assert fake.hooks.get("repositories/ml-team/training", []) == []
        assert "401" in caplog.text and PASSWORD not in caplog.text


# -- bitbucketserver --------------------------------------------------------------------


def bbs_cfg(port: int = 12000, **fields: Any) -> BitbucketServerConfig:
    spec: dict[str, Any] = {
        "webhook": {"endpoint": "/push", "port": str(port)},
        "repositories": [{"projectKey": "ML", "repositorySlug": "training"}],
        "events": ["repo:refs_changed"],
        "accessToken": TOKEN_REF,
        "webhookSecret": SECRET_REF,
        "bitbucketserverBaseURL": "https://bitbucket.example.com/rest",
    }
    spec.update(fields)
    return BitbucketServerConfig.model_validate(spec)


BBS_BODY = json.dumps(BBS_REFS_CHANGED).encode()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Hub-Signature": hub(BBS_BODY)}, 200),
        ({}, 401),
        ({"X-Hub-Signature": hub(BBS_BODY, "guess")}, 403),
        ({"X-Hub-Signature": hub(b"{}")}, 403),
    ],
)
async def test_bitbucketserver_signature(headers: dict[str, str], status: int) -> None:
    headers = {"X-Event-Key": "repo:refs_changed", **headers}
    async with asgi(BitbucketServerSource, bbs_cfg()) as (c, pub):
        r = await c.post("/push", content=BBS_BODY, headers=headers)
    assert r.status_code == status
    assert len(pub.events) == (status == 200)
    if pub.events:
        assert pub.events[0].data["body"] == BBS_REFS_CHANGED


def test_bitbucketserver_validation_and_unsupported_fields() -> None:
    lines = BitbucketServerSource.check_config("bbs", {"push": bbs_cfg(
        bitbucketserverBaseURL="")})  # fmt: skip
    assert lines == [
        "spec.bitbucketserver.push.bitbucketserverBaseURL: bitbucket server base url can't be empty"
    ]


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("bitbucketserver", "projects", ["ML"]),
        ("bitbucketserver", "oneEventPerChange", True),
        ("bitbucketserver", "checkInterval", "1m"),
        ("github", "githubApp", {"appID": 1, "installationID": 2,
                                 "privateKey": {"name": "g", "key": "k"}}),
    ],
)  # fmt: skip
def test_unsupported_fields_fail_with_one_clear_line(
    kind: str, field: str, value: Any, tmp_path: Path
) -> None:
    from app.compose.manifests import load_file

    spec: dict[str, Any] = {"webhook": {"endpoint": "/push", "port": "12000"}, field: value,
                            "repositories": [{"projectKey": "ML", "repositorySlug": "t"}],
                            "bitbucketserverBaseURL": "https://b/rest"}  # fmt: skip
    if kind == "github":
        spec = {"webhook": spec["webhook"], field: value, "owner": "o", "repository": "r"}
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
           "metadata": {"name": "x", "namespace": NS}, "spec": {kind: {"push": spec}}}  # fmt: skip
    path = tmp_path / "es.yaml"
    path.write_text(yaml.safe_dump(doc))
    lines = [f"{e.path}: {e.message}" for e in load_file(path).errors]
    assert len(lines) == 1 and lines[0].startswith(f"spec.{kind}.push.{field}"), lines
    assert "not supported" in lines[0]


async def test_bitbucketserver_webhook_registered_once_and_deleted() -> None:
    async with fake_host("bitbucketserver", token=TOKEN) as fake:

        def cfg(port: int, delete: bool) -> BitbucketServerConfig:
            return bbs_cfg(port, bitbucketserverBaseURL=fake.api_url, deleteHookOnFinish=delete,
                           webhook={"endpoint": "/push", "port": str(port),
                                    "url": "https://hooks.example.com/"})  # fmt: skip

        collection = "projects/ML/repos/training"
        [hook] = await register_twice_then_finish(BitbucketServerSource, cfg, fake, collection)
        assert (hook["name"], hook["url"], hook["events"]) == (
            "Argo Events", HOOK_URL, ["repo:refs_changed"])  # fmt: skip
        assert hook["configuration"] == {"secret": SECRET}
        assert fake.hooks[collection] == []
        assert [m for m, _ in fake.calls].count("POST") == 1


# -- end to end -------------------------------------------------------------------------

NS = "argo-events"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Case:
    """One type's shipped example and how the provider would deliver its sample push."""

    example: str
    port: int
    """The example's webhook port (mapped to a free one)."""
    good: Callable[[bytes], dict[str, str]]
    """The headers of a genuine delivery of a body (given the test's secret)."""
    bad: dict[str, str]
    """The headers of a refused delivery (a wrong token or signature)."""
    bad_body: bytes | None
    """For Bitbucket Cloud, which does not sign: a body it refuses instead."""
    collection: str
    """Where the fake provider keeps the registered hook ("": none registered)."""
    repository: str


CASES = {
    "gitlab": Case("train-on-gitlab-push", 12400,
                   lambda _b: {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET},
                   {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"}, None,
                   "projects/ml-team/training", "ml-team/training"),
    "bitbucket": Case("train-on-bitbucket-push", 12500, lambda _b: {"X-Event-Key": "repo:push"},
                      {"X-Event-Key": "repo:push"}, b"not json", "", "ml-team/training"),
    "bitbucketserver": Case("train-on-bitbucketserver-push", 12600,
                            lambda b: {"X-Event-Key": "repo:refs_changed",
                                       "X-Hub-Signature": hub(b)},
                            {"X-Event-Key": "repo:refs_changed",
                             "X-Hub-Signature": hub(BBS_BODY, "guess")}, None,
                            "projects/ML/repos/training", "training"),
}  # fmt: skip


def _example(kind: str, case: Case, tmp_path: Path, fake: FakeHookHost) -> Path:
    """The shipped example with its Secret filled in with the test's values and, where
    it registers hooks, the provider's API pointed at ``fake``, ``webhook.url`` set and
    ``deleteHookOnFinish`` on (as its comment says to)."""
    out = tmp_path / case.example
    shutil.copytree(EXAMPLES / case.example, out)
    es_path = out / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    push = es["spec"][kind]["push"]
    if kind == "gitlab":
        push["gitlabBaseURL"] = fake.api_url
    elif kind == "bitbucketserver":
        push["bitbucketserverBaseURL"] = fake.api_url
    if case.collection:
        push["webhook"]["url"] = "https://hooks.example.com"
        push["deleteHookOnFinish"] = True
    es_path.write_text(yaml.safe_dump(es))
    secret_path = out / "secret.yaml"
    secret = yaml.safe_load(secret_path.read_text())
    secret["stringData"] = {key: {"secret": SECRET, "token": TOKEN}.get(key, PASSWORD)
                            for key in secret["stringData"]}  # fmt: skip
    secret_path.write_text(yaml.safe_dump(secret))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_delivery_starts_a_workflow_and_a_bad_one_nothing_end_to_end(
    kind: str, tmp_path: Path, kube_api: Any, nats_server: Any
) -> None:
    """``triggerfish run`` on the type's example: its sample push, delivered as the
    provider delivers it, starts one Workflow with the commit; a badly signed one (for
    Bitbucket Cloud: one that is not JSON) starts none; the hook is registered once and
    deleted on shutdown."""
    case = CASES[kind]
    with threaded(FakeHookHost(kind, token=TOKEN)) as fake:
        example = _example(kind, case, tmp_path, fake)
        body = (example / "events" / "push-payload.event.json").read_bytes()
        port = free_port()
        tf = Triggerfish(files=[str(example)], state_dir=tmp_path / "state",
                         kubeconfig=str(kube_api.kubeconfig), nats_url=nats_server.url,
                         port_map={case.port: port},
                         extra_env={"TRIGGERFISH_LOG_LEVEL": "DEBUG"}).start()  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/push"
            ctype = {"Content-Type": "application/json"}
            refused = httpx.post(url, content=case.bad_body or body,
                                 headers={**ctype, **case.bad})  # fmt: skip
            assert refused.status_code in (400, 401, 403), refused.text
            r = httpx.post(url, content=body, headers={**ctype, **case.good(body)})
            assert r.status_code == 200, (r.text, tf.log())
            wait_for(lambda: list_workflows(kube_api), timeout=30, interval=0.2)
            if case.collection:
                wait_for(lambda: fake.urls(case.collection), timeout=15, interval=0.1)
                assert fake.urls(case.collection) == [HOOK_URL]
            time.sleep(1.0)  # a Workflow from the refused request would show by now
            [workflow] = list_workflows(kube_api)
            assert params_of(workflow) == {"commit": SHA, "repository": case.repository}
            outputs = api_outputs(tf)
        finally:
            tf.stop()
        if case.collection:
            assert fake.hooks[case.collection] == [], tf.log()
        outputs["log"] = tf.log()
        assert SHA in outputs["/api/v1/traces"]  # what the API shows of the event
        leaks = [(s, where) for where, text in outputs.items() for s in (SECRET, TOKEN)
                 if s in text]  # fmt: skip
        assert leaks == []


SOURCES: dict[str, type[WebhookServedSource[Any]]] = {
    "gitlab": GitlabSource, "bitbucket": BitbucketSource, "bitbucketserver": BitbucketServerSource,
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_examples_sample_event_is_what_its_source_makes_of_the_sample_push(
    kind: str,
) -> None:
    """The example's ``events/push.event.json`` (what ``triggerfish test`` is given) is
    the event data its own EventSource and Secret make of ``push-payload.event.json``
    delivered with those headers: the same body, the same header values (the token
    masked), the signature header aside (the sample shows it elided)."""
    case = CASES[kind]
    example = EXAMPLES / case.example
    es = yaml.safe_load((example / "event-source.yaml").read_text())
    secret = yaml.safe_load((example / "secret.yaml").read_text())
    name = secret["metadata"]["name"]
    pub = Publisher()
    ctx = SourceContext(
        publish=pub,
        secrets=DictSecrets({(name, k): v for k, v in secret["stringData"].items()}),
        metrics=CountingMetrics(),
        log=logging.getLogger("test.githosts"),
        bind_host="127.0.0.1",
    )
    cls = SOURCES[kind]
    cfg = cls.config_model.model_validate(es["spec"][kind]["push"])
    source = cls(es["metadata"]["name"], NS, {"push": cfg}, ctx)
    sample = json.loads((example / "events" / "push.event.json").read_text())
    body = (example / "events" / "push-payload.event.json").read_bytes()
    signature = "X-Hub-Signature"
    headers = {k: v[0] for k, v in sample["headers"].items() if k != signature}
    if signature in sample["headers"]:
        headers[signature] = hub(body, secret["stringData"]["secret"])
    if kind == "gitlab":
        headers["X-Gitlab-Token"] = secret["stringData"]["secret"]
    [app] = (await source.prepare()).values()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://git") as c:
        r = await c.post("/push", content=body, headers=headers)
    assert r.status_code == 200, r.text
    [event] = pub.events
    assert event.data["body"] == sample["body"] == json.loads(body)
    assert set(event.data) == set(sample)
    for key, value in sample["headers"].items():
        if key != signature:
            assert event.data["headers"][key] == value, key


def api_outputs(tf: Triggerfish) -> dict[str, str]:
    """What the operations API serves (traces carry the event data with its headers)."""
    base = f"http://127.0.0.1:{tf.api_port}"
    paths = ["/api/v1/eventsources", "/api/v1/traces", "/api/v1/objects", "/metrics"]
    return {path: httpx.get(base + path, timeout=5).text for path in paths}
