"""The ``slack`` trigger against a FAKE Slack Web API over real HTTP (``tests/fakeslack``):
directly and end to end through the sensor runner over the bus.

Covers the message, sender, attachments and blocks as posted, the channel and text set
by parameters, threads per aggregation key (including concurrent first firings),
Slack's error answers classified transient or permanent, an outage retried then
dead-lettered by the runner, and the token kept out of messages, traces and logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_file, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.slack import SlackTrigger, SlackTriggerConfig
from tests.fakeslack import FakeSlack
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_argo_corpus import CORPUS
from tests.test_trigger_http import secret_manifest

NS = "ns1"
TOKEN = "xoxb-s3cret-slack-token"
TOKEN_REF = {"name": "slack-secret", "key": "token"}


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(TOKEN, channels={"general": "C0GENERAL", "ops": "C0OPS"})
    monkeypatch.setenv("TRIGGERFISH_SENSOR__SLACK_API_URL", await fake.start())
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("slack-secret", token=TOKEN, old="xoxb-revoked")])
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="webhook", subject="example", type="webhook",
                 data=data)  # fmt: skip


def invocation(data: Any) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, "k" * 32)


def trigger(ctx: TriggerContext, **cfg: Any) -> SlackTrigger:
    cfg.setdefault("slackToken", TOKEN_REF)
    return SlackTrigger(SlackTriggerConfig.model_validate(cfg), ctx)


ATTACHMENTS = '[{"title": "Attachment1!", "color": "#18be52", "fields": [{"title": "a"}]}]'
BLOCKS = '[{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]'


# --------------------------------------------------------------------------- direct


async def test_message_sender_attachments_and_blocks_are_posted(
    slack: FakeSlack, ctx: TriggerContext
) -> None:
    t = trigger(ctx, channel="#general", message="hello world", attachments=ATTACHMENTS,
                blocks=BLOCKS, sender={"username": "argo", "icon": ":robot_face:"})  # fmt: skip
    result = await t.execute(invocation({}))
    [p] = slack.posted
    assert (p.channel, p.text) == ("C0GENERAL", "hello world")
    assert p.fields["channel"] == "general"  # the leading '#' is dropped
    assert p.json_field("attachments")[0]["title"] == "Attachment1!"
    assert p.json_field("blocks")[0]["type"] == "section"
    assert (p.fields["username"], p.fields["icon_emoji"]) == ("argo", ":robot_face:")
    assert "thread_ts" not in p.fields and "reply_broadcast" not in p.fields
    assert result.action == "posted" and result.detail["ts"] == p.ts
    assert TOKEN not in repr(result)


async def test_icon_url(slack: FakeSlack, ctx: TriggerContext) -> None:
    icon = "https://example.test/icon.png"
    await trigger(ctx, channel="general", message="m", sender={"icon": icon}).execute(
        invocation({})
    )
    assert slack.posted[0].fields["icon_url"] == icon


async def test_parameters_set_channel_and_message(slack: FakeSlack, ctx: TriggerContext) -> None:
    t = trigger(ctx, channel="general", message="unused", parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "body.channel"}, "dest": "channel"},
        {"src": {"dependencyName": "test-dep",
                 "dataTemplate": "build {{ .Input.body.id }} failed"}, "dest": "message"},
    ])  # fmt: skip
    result = await t.execute(invocation({"body": {"channel": "ops", "id": 42}}))
    [p] = slack.posted
    assert (p.channel, p.text) == ("C0OPS", "build 42 failed")
    assert [r["dest"] for r in result.parameters] == ["channel", "message"]


async def test_threads_per_aggregation_key(slack: FakeSlack, ctx: TriggerContext) -> None:
    def t(key: str, broadcast: bool = False) -> SlackTrigger:
        thread = {"messageAggregationKey": key, "broadcastMessageToChannel": broadcast}
        return trigger(ctx, channel="general", message=key, thread=thread)

    await t("build-1").execute(invocation({}))
    await t("build-1", broadcast=True).execute(invocation({}))
    await t("build-2").execute(invocation({}))
    await t("build-1").execute(invocation({}))
    first, reply, other, reply2 = slack.posted
    assert "thread_ts" not in first.fields and "thread_ts" not in other.fields
    assert reply.fields["thread_ts"] == first.ts == reply2.fields["thread_ts"]
    assert reply.fields["reply_broadcast"] == "true"
    assert "reply_broadcast" not in reply2.fields


async def test_concurrent_first_firings_start_one_thread(
    slack: FakeSlack, ctx: TriggerContext
) -> None:
    t = trigger(ctx, channel="general", message="m", thread={"messageAggregationKey": "k"})
    await asyncio.gather(*(t.execute(invocation({})) for _ in range(4)))
    tops = [p for p in slack.posted if "thread_ts" not in p.fields]
    assert len(slack.posted) == 4 and len(tops) == 1


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (500, TransientError),
        (503, TransientError),
        (429, TransientError),
        ("ratelimited", TransientError),
        ("service_unavailable", TransientError),
        (404, PermanentError),
        ("not_in_channel", PermanentError),
        ("is_archived", PermanentError),
    ],
)
async def test_answers_are_classified(
    slack: FakeSlack, ctx: TriggerContext, failure: int | str, error: type[Exception]
) -> None:
    slack.fail_next = [failure]
    with pytest.raises(error, match=str(failure)) as err:
        await trigger(ctx, channel="general", message="m").execute(invocation({}))
    assert TOKEN not in str(err.value)
    assert slack.posted == []
    if failure == 429:  # the fake asks for one second: retries wait at least that long
        assert isinstance(err.value, TransientError) and err.value.retry_after_seconds == 1.0


async def test_wrong_token_and_unknown_channel_are_permanent(
    slack: FakeSlack, ctx: TriggerContext
) -> None:
    bad = trigger(ctx, channel="general", message="m", slackToken={**TOKEN_REF, "key": "old"})
    with pytest.raises(PermanentError, match="invalid_auth"):
        await bad.execute(invocation({}))
    with pytest.raises(PermanentError, match="channel_not_found"):
        await trigger(ctx, channel="nowhere", message="m").execute(invocation({}))


async def test_nothing_to_post_is_permanent(slack: FakeSlack, ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match="no slack channel provided"):
        await trigger(ctx, channel="#", message="m").execute(invocation({}))
    with pytest.raises(PermanentError, match="no text to post"):
        await trigger(ctx, channel="general").execute(invocation({}))
    assert slack.requests == 0


async def test_missing_secret_is_permanent(slack: FakeSlack, ctx: TriggerContext) -> None:
    t = trigger(ctx, channel="general", message="m", slackToken={"name": "nope", "key": "t"})
    with pytest.raises(PermanentError, match="nope"):
        await t.execute(invocation({}))


async def test_an_unreachable_api_is_transient(slack: FakeSlack, ctx: TriggerContext) -> None:
    t = trigger(ctx, channel="general", message="m")
    await slack.stop()
    with pytest.raises(TransientError, match="ClientConnectorError"):
        await t.execute(invocation({}))


# --------------------------------------------------------------------------- config


def sensor_doc(slack_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "notify", "slack": slack_cfg}, **trigger_extra}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"channel": "c", "message": "m"}, "slackToken: required field is missing"),
        ({"slackToken": TOKEN_REF, "attachments": "{not json"}, "attachments must be a JSON array"),
        ({"slackToken": TOKEN_REF, "blocks": '{"type": "section"}'}, "blocks must be a JSON array"),
        ({"slackToken": TOKEN_REF, "thread": {"key": "x"}}, "thread.key: unknown field"),
        ({"slackToken": TOKEN_REF, "parameters": [{"src": {"dependencyName": "test-dep"},
                                                    "dest": ""}]}, "must not be empty"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_argo_example_loads() -> None:
    result = load_file(CORPUS / "sensors" / "slack-trigger.yaml")
    assert result.errors == []


# --------------------------------------------------------------------------- end to end


async def test_runner_posts_once_per_event_with_template_parameters(
    bus: Bus, slack: FakeSlack, ctx: TriggerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = SensorHarness(bus, ctx)
    # Argo's example: template-level parameters set slack.channel and slack.message
    await h.start(load_one(sensor_doc(
        {"slackToken": TOKEN_REF, "channel": "general", "message": "hello world"},
        parameters=[
            {"src": {"dependencyName": "test-dep", "dataKey": "body.channel"},
             "dest": "slack.channel"},
            {"src": {"dependencyName": "test-dep", "dataKey": "body.message"},
             "dest": "slack.message"},
        ])))  # fmt: skip
    await bus.publish("default", event({"body": {"channel": "ops", "message": "deployed"}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "posted", 1)
    [p] = slack.posted
    assert (p.channel, p.text) == ("C0OPS", "deployed")
    trace = orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
    assert TOKEN not in trace and TOKEN not in caplog.text


async def test_runner_retries_transient_answers(
    bus: Bus, slack: FakeSlack, ctx: TriggerContext
) -> None:
    slack.fail_next = [503, "service_unavailable"]
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"slackToken": TOKEN_REF, "channel": "general",
                                       "message": "m"},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    await bus.publish("default", event({}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("succeeded", 3)
    assert len(slack.posted) == 1 and slack.requests == 3


async def test_runner_dead_letters_an_outage(
    bus: Bus, slack: FakeSlack, ctx: TriggerContext
) -> None:
    await slack.stop()
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"slackToken": TOKEN_REF, "channel": "general",
                                       "message": "m"},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    ev = event({})
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "notify" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()


async def test_runner_dead_letters_a_permanent_answer_at_once(
    bus: Bus, slack: FakeSlack, ctx: TriggerContext
) -> None:
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"slackToken": TOKEN_REF, "channel": "nowhere",
                                       "message": "m"},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    await bus.publish("default", event({}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 1)
    assert "channel_not_found" in out.error
    await h.stop()
