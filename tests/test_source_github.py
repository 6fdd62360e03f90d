"""The ``github`` source: signature check, Argo's event data, the ``events`` filter, and
hook registration against a FAKE GitHub REST API over HTTP (``tests/fakegithosts``).

In-process (``httpx.ASGITransport``) for the request contract; a real port and the fake
API for registration; and end to end: ``triggerfish run`` on ``examples/train-on-push``
with a real nats-server and the fake Kubernetes API, where a signed push starts a
Workflow with the commit SHA and a badly signed one starts nothing.
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
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import yaml

from app.kernel.events import Event
from eventsources.base import SourceContext
from eventsources.github import GithubConfig, GithubSource
from tests.fakegithosts import FakeHookHost, threaded
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.support.sources import CountingMetrics, DictSecrets
from tests.test_seed_e2e import list_workflows, params_of
from tests.test_source_git_hosts import api_outputs

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train-on-push"
SECRET = "gh-hook-s3cret-5a4b3c"
TOKEN = "ghp-fake-t0ken-9f8e7d"
PUSH = (EXAMPLE / "events" / "push-payload.event.json").read_bytes()
SHA = json.loads(PUSH)["after"]


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gh_headers(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": sign(body, secret),
    }


def config(port: int = 12000, **fields: Any) -> GithubConfig:
    spec: dict[str, Any] = {
        "repositories": [{"owner": "ml-team", "names": ["training"]}],
        "webhook": {"endpoint": "/push", "port": str(port), "method": "POST"},
        "events": ["push"],
        "webhookSecret": {"name": "github-access", "key": "secret"},
    }
    spec.update(fields)
    return GithubConfig.model_validate(spec)


class Publisher:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


def source_for(
    events: Mapping[str, GithubConfig], publisher: Publisher | None = None
) -> tuple[GithubSource, Publisher]:
    publisher = publisher or Publisher()
    secrets = DictSecrets({("github-access", "secret"): SECRET,
                           ("github-access", "token"): TOKEN})  # fmt: skip
    ctx = SourceContext(
        publish=publisher,
        secrets=secrets,
        metrics=CountingMetrics(),
        log=logging.getLogger("test.github"),
        bind_host="127.0.0.1",
    )
    source = GithubSource("github", "argo-events", events, ctx)
    source.registration_retry_seconds = 0.05
    return source, publisher


@contextlib.asynccontextmanager
async def client(cfg: GithubConfig) -> AsyncIterator[tuple[httpx.AsyncClient, Publisher]]:
    source, publisher = source_for({"push": cfg})
    apps = await source.prepare()
    transport = httpx.ASGITransport(app=apps[12000])
    async with httpx.AsyncClient(transport=transport, base_url="http://gh") as c:
        yield c, publisher


# -- the request contract ---------------------------------------------------------------


async def test_signed_push_is_published_as_argo_github_event_data() -> None:
    async with client(config()) as (c, pub):
        r = await c.post("/push", content=PUSH, headers=gh_headers(PUSH))
    assert (r.status_code, r.text) == (200, "success")
    [event] = pub.events
    assert (event.type, event.source, event.subject) == ("github", "github", "push")
    assert set(event.data) == {"headers", "body"}  # metadata omitted when empty, as Go does
    body = event.data["body"]
    assert body["after"] == SHA
    assert body["X-GitHub-Event"] == "push"
    assert body["X-GitHub-Delivery"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.data["headers"]["X-Github-Event"] == ["push"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "application/json", "X-GitHub-Event": "push"}, 401),
        (gh_headers(PUSH, secret="not-the-secret"), 403),
        (gh_headers(b'{"after": "forged"}'), 403),
    ],
)
async def test_unsigned_or_wrongly_signed_push_is_refused(
    headers: dict[str, str], status: int
) -> None:
    async with client(config()) as (c, pub):
        r = await c.post("/push", content=PUSH, headers=headers)
    assert r.status_code == status
    assert pub.events == []


async def test_legacy_sha1_signature_is_accepted() -> None:
    sha1 = hmac.new(SECRET.encode(), PUSH, "sha1").hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature": f"sha1={sha1}"}
    async with client(config()) as (c, pub):
        r = await c.post("/push", content=PUSH, headers=headers)
    assert r.status_code == 200 and len(pub.events) == 1


async def test_events_not_subscribed_are_answered_but_not_published() -> None:
    ping = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    async with client(config()) as (c, pub):
        r = await c.post("/push", content=ping, headers=gh_headers(ping, event="ping"))
    assert (r.status_code, r.text) == (200, "filtered")
    assert pub.events == []
    async with client(config(events=["*"])) as (c, pub):
        r = await c.post("/push", content=ping, headers=gh_headers(ping, event="ping"))
    assert r.text == "success" and pub.events[0].data["body"]["X-GitHub-Event"] == "ping"


async def test_form_delivery_takes_the_payload_field() -> None:
    form = urlencode({"payload": PUSH.decode()}).encode()
    headers = {**gh_headers(form), "Content-Type": "application/x-www-form-urlencoded"}
    async with client(config(contentType="form")) as (c, pub):
        r = await c.post("/push", content=form, headers=headers)
    assert r.status_code == 200
    assert pub.events[0].data["body"]["after"] == SHA


async def test_payload_that_is_not_a_json_object_is_400() -> None:
    async with client(config()) as (c, pub):
        r = await c.post("/push", content=b"[1]", headers=gh_headers(b"[1]"))
    assert r.status_code == 400 and pub.events == []


async def test_metadata_and_filter_expression() -> None:
    cfg = config(metadata={"team": "ml"}, filter={"expression": 'body.ref == "refs/heads/main"'})
    other = PUSH.replace(b"refs/heads/main", b"refs/heads/dev")
    async with client(cfg) as (c, pub):
        dev = await c.post("/push", content=other, headers=gh_headers(other))
        main = await c.post("/push", content=PUSH, headers=gh_headers(PUSH))
    assert (dev.text, main.text) == ("filtered", "success")
    assert [e.data["metadata"] for e in pub.events] == [{"team": "ml"}]


def test_validation_lines_name_the_field() -> None:
    lines = GithubSource.check_config(
        "github",
        {
            "none": config(repositories=[]),
            "hooks": config(
                port=12001, events=[], apiToken={"name": "a", "key": "b"},
                webhook={"endpoint": "/p", "port": "12001", "url": "https://x"},
                githubBaseURL="https://ghe/api/v3",
            ),
        },
    )  # fmt: skip
    required = "either repositories or organizations is required"
    assert f"spec.github.none.repositories: {required}" in lines
    assert "spec.github.hooks.events: events must be defined to create a github webhook" in lines
    assert any(line.startswith("spec.github.hooks.githubBaseURL:") for line in lines)
    with pytest.raises(ValueError, match='content type must be "json" or "form"'):
        config(contentType="xml")


# -- hook registration against the fake GitHub API ---------------------------------------


@contextlib.asynccontextmanager
async def fake_github() -> AsyncIterator[FakeHookHost]:
    fake = FakeHookHost("github", token=TOKEN)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def hooked(fake: FakeHookHost, port: int, **fields: Any) -> GithubConfig:
    spec: dict[str, Any] = {
        "webhook": {"endpoint": "/push", "port": str(port), "url": "https://hooks.example.com/"},
        "apiToken": {"name": "github-access", "key": "token"},
        "githubBaseURL": fake.api_url,
        "githubUploadURL": fake.api_url,
        "active": True,
        "contentType": "json",
    }
    spec.update(fields)
    return config(port, **spec)


async def run_until(source: GithubSource, condition: Any) -> asyncio.Task[None]:
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


COLLECTION = "repos/ml-team/training"
HOOK_URL = "https://hooks.example.com/push"


async def test_registration_creates_one_hook_reuses_it_and_deletes_it_on_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with fake_github() as fake:
        port = free_port()
        caplog.set_level(logging.DEBUG)
        source, _ = source_for({"push": hooked(fake, port, deleteHookOnFinish=True)})
        task = await run_until(source, lambda: fake.urls(COLLECTION))
        [hook] = fake.hooks[COLLECTION]
        assert hook["config"] == {"url": HOOK_URL, "insecure_ssl": "0", "content_type": "json",
                                  "secret_set": True}  # fmt: skip
        assert (hook["events"], hook["active"], hook["name"]) == (["push"], True, "web")
        await stop(task)
        assert fake.hooks[COLLECTION] == []
        assert ("DELETE", f"/{COLLECTION}/hooks/{hook['id']}") in fake.calls
    for secret in (SECRET, TOKEN):
        assert secret not in caplog.text


async def test_an_existing_hook_with_our_url_is_updated_not_duplicated() -> None:
    async with fake_github() as fake:
        fake.hooks[COLLECTION] = [
            {"id": 7, "name": "web", "active": False, "events": ["issues"],
             "config": {"url": HOOK_URL}},
            {"id": 8, "name": "web", "active": True, "events": ["push"],
             "config": {"url": "https://elsewhere.example.com/"}},
        ]  # fmt: skip
        for _ in range(2):  # a restart finds its own hook again
            source, _ = source_for({"push": hooked(fake, free_port())})
            n = len(fake.calls)
            task = await run_until(source, lambda n=n: ("PATCH", f"/{COLLECTION}/hooks/7")
                                   in fake.calls[n:])  # fmt: skip
            await stop(task)
        assert sorted(h["id"] for h in fake.hooks[COLLECTION]) == [7, 8]
        hook = next(h for h in fake.hooks[COLLECTION] if h["id"] == 7)
        assert (hook["events"], hook["active"]) == (["push"], True)
        assert not any(m == "POST" for m, _ in fake.calls)
        assert not any(m == "DELETE" for m, _ in fake.calls)  # deleteHookOnFinish unset


async def test_organization_hooks_and_retry_after_an_outage() -> None:
    async with fake_github() as fake:
        fake.fail_next = [502]
        cfg = hooked(fake, free_port(), repositories=[], organizations=["ml-team"],
                     deleteHookOnFinish=True)  # fmt: skip
        source, _ = source_for({"org": cfg})
        task = await run_until(source, lambda: fake.urls("orgs/ml-team"))
        assert fake.urls("orgs/ml-team") == [HOOK_URL]
        await stop(task)
        assert fake.hooks["orgs/ml-team"] == []


async def test_bad_token_keeps_serving_and_registers_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with fake_github() as fake:
        fake.token = "another-token"
        port = free_port()
        source, pub = source_for({"push": hooked(fake, port)})
        with caplog.at_level(logging.WARNING, "test.github"):
            task = await run_until(source, lambda: len(fake.calls) >= 2)
            async with httpx.AsyncClient() as c:
                r = await c.post(f"http://127.0.0.1:{port}/push", content=PUSH,
                                 headers=gh_headers(PUSH))  # fmt: skip
            await stop(task)
        assert r.status_code == 200 and len(pub.events) == 1
        assert fake.hooks.get(COLLECTION, []) == []
        assert "401" in caplog.text and "Bad credentials" in caplog.text
        assert TOKEN not in caplog.text


# -- end to end -------------------------------------------------------------------------


def _example(tmp_path: Path, fake: FakeHookHost) -> Path:
    out = tmp_path / "train-on-push"
    shutil.copytree(EXAMPLE, out)
    es_path = out / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    push = es["spec"]["github"]["push"]
    push["webhook"]["url"] = "https://hooks.example.com"
    push.update(apiToken={"name": "github-access", "key": "token"}, deleteHookOnFinish=True,
                githubBaseURL=fake.api_url, githubUploadURL=fake.api_url)  # fmt: skip
    es_path.write_text(yaml.safe_dump(es))
    secret = yaml.safe_load((out / "secret.yaml").read_text())
    secret["stringData"] = {"secret": SECRET, "token": TOKEN}
    (out / "secret.yaml").write_text(yaml.safe_dump(secret))
    return out


@pytest.mark.slow
def test_signed_push_starts_a_workflow_with_the_commit_sha_end_to_end(
    tmp_path: Path, kube_api: Any, nats_server: Any
) -> None:
    with threaded(FakeHookHost("github", token=TOKEN)) as fake:
        port = free_port()
        tf = Triggerfish(files=[str(_example(tmp_path, fake))], state_dir=tmp_path / "state",
                         kubeconfig=str(kube_api.kubeconfig), nats_url=nats_server.url,
                         port_map={12000: port},
                         extra_env={"TRIGGERFISH_LOG_LEVEL": "DEBUG"}).start()  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/push"
            forged = httpx.post(url, content=PUSH, headers=gh_headers(PUSH, secret="guess"))
            assert forged.status_code == 403, forged.text
            r = httpx.post(url, content=PUSH, headers=gh_headers(PUSH))
            assert r.status_code == 200, (r.text, tf.log())
            wait_for(lambda: list_workflows(kube_api), timeout=30, interval=0.2)
            wait_for(lambda: fake.urls(COLLECTION), timeout=15, interval=0.1)
            time.sleep(1.0)  # a second Workflow (from the forged push) would show by now
            [workflow] = list_workflows(kube_api)
            assert params_of(workflow) == {"commit": SHA, "repository": "ml-team/training"}
            assert fake.urls(COLLECTION) == ["https://hooks.example.com/push"]
            outputs = api_outputs(tf)
        finally:
            tf.stop()
        assert fake.hooks[COLLECTION] == [], tf.log()  # deleteHookOnFinish
        outputs["log"] = tf.log()
        assert SHA in outputs["/api/v1/traces"]  # the event data is there, its secrets not
        leaks = [(s, where) for where, text in outputs.items() for s in (SECRET, TOKEN)
                 if s in text]  # fmt: skip
        assert leaks == []


def test_two_event_sources_on_one_port_are_found_through_the_webhook_context(
    tmp_path: Path,
) -> None:
    from app.compose.crosscheck import cross_checks
    from app.compose.manifests import load_file

    def es(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
                "metadata": {"name": name, "namespace": "argo-events"}, "spec": spec}  # fmt: skip

    github = {"github": {"push": {"webhook": {"endpoint": "/push", "port": "12000"},
                                  "owner": "o", "repository": "r"}}}  # fmt: skip
    webhook = {"webhook": {"hook": {"endpoint": "/hook", "port": "12000"}}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([es("hooks", webhook), es("github", github)]))
    [finding] = cross_checks(load_file(path))
    assert finding.path == "spec.github.push.webhook.port"
    assert finding.code == "shared-port"
