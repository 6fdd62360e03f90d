"""A full stream never drops silently: at ``maxMsgs``/``maxBytes`` the bus refuses new
events (discard *new*) unless the EventBus's ``streamConfig`` says ``discard: 0``.

Against a real nats-server: the refusal is a :class:`StreamFullError` and the stored
events are the first ones, all of them. In a real ``triggerfish run`` with a tiny
stream: posts are answered 200 until the stream is full, then 503 + ``Retry-After``,
counted in ``triggerfish_bus_publish_rejected_total{reason="stream_full"}``, and every
event answered 200 produces exactly one Workflow; with room again, posts are accepted.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from app.adapters.bus import Bus, StreamLimits
from app.adapters.natsserver import EmbeddedNats
from app.compose.loading import load_for_run
from app.compose.runtime import Standalone
from app.kernel.errors import StreamFullError
from app.kernel.events import Event
from app.kernel.settings import BusSettings, Settings
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.support.sensors import eventually
from tests.test_seed_e2e import SEED, list_workflows, params_of


def _event(i: int, size: int = 10) -> Event:
    return Event(
        id=f"e{i}", source="webhook", subject="trigger", type="webhook",
        data={"i": i, "pad": "x" * size},
    )  # fmt: skip


async def _stored_ids(url: str, stream: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(stream, seq)
            out.append(Event.from_json(m.data or b"").id)
        return out
    finally:
        await nc.close()


async def test_full_stream_refuses_new_events_and_keeps_the_old(
    nats_server: EmbeddedNats, bus_settings: BusSettings
) -> None:
    bus = Bus(bus_settings, nats_server.url)
    await bus.connect()
    try:
        await bus.ensure_stream("tiny", StreamLimits(max_msgs=3))
        for i in range(3):
            await bus.publish("tiny", _event(i))
        with pytest.raises(StreamFullError, match="maximum messages"):
            await bus.publish("tiny", _event(3))
        assert await _stored_ids(nats_server.url, "tiny") == ["e0", "e1", "e2"]

        await bus.ensure_stream("small", StreamLimits(max_bytes=2000))
        refused = 0
        for i in range(20):
            try:
                await bus.publish("small", _event(i, size=300))
            except StreamFullError:
                refused += 1
        kept = await _stored_ids(nats_server.url, "small")
        assert refused > 0 and kept == [f"e{i}" for i in range(len(kept))]
    finally:
        await bus.close()


async def test_discard_old_when_the_eventbus_asks_and_switching_an_existing_stream(
    nats_server: EmbeddedNats, bus_settings: BusSettings
) -> None:
    bus = Bus(bus_settings, nats_server.url)
    await bus.connect()
    try:
        await bus.ensure_stream("old", StreamLimits(max_msgs=3, discard_new=False))
        for i in range(5):
            await bus.publish("old", _event(i))  # never refused: the oldest go
        assert await _stored_ids(nats_server.url, "old") == ["e2", "e3", "e4"]
        await bus.ensure_stream("old", StreamLimits(max_msgs=3))  # updated in place to new
        with pytest.raises(StreamFullError):
            await bus.publish("old", _event(5))
    finally:
        await bus.close()


async def test_interest_retention_frees_consumed_events(
    nats_server: EmbeddedNats, bus_settings: BusSettings
) -> None:
    """With ``retention: 1`` the limits count only events some consumer has not acked."""
    bus = Bus(bus_settings, nats_server.url)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    try:
        await bus.ensure_stream("busy", StreamLimits(max_msgs=3, retention=1))
        sub = await nc.jetstream().pull_subscribe("busy.>", durable="sensor", stream="busy")
        for i in range(3):
            await bus.publish("busy", _event(i))
        with pytest.raises(StreamFullError):  # three unconsumed: full
            await bus.publish("busy", _event(3))
        for m in await sub.fetch(3, timeout=5):
            await m.ack_sync()

        async def emptied() -> bool:
            info = await nc.jetstream().stream_info("busy")
            return int(info.state.messages) == 0

        await eventually(emptied, "acked events removed")
        for i in range(3, 6):
            await bus.publish("busy", _event(i))  # room again
        assert await _stored_ids(nats_server.url, "busy") == ["e3", "e4", "e5"]
    finally:
        await nc.close()
        await bus.close()


BUS_TEMPLATE = """\
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
  namespace: argo-events
spec:
  jetstream:
    version: latest
    streamConfig: |
{config}
"""


def _manifests(tmp_path: Path, stream_config: str) -> Path:
    d = tmp_path / "manifests"
    d.mkdir(exist_ok=True)
    for f in SEED.glob("*.yaml"):
        if "EventBus" not in f.read_text():
            (d / f.name).write_text(f.read_text())
    config = "\n".join(f"      {line}" for line in stream_config.splitlines())
    (d / "eventbus.yaml").write_text(BUS_TEMPLATE.format(config=config))
    return d


@pytest.mark.parametrize(
    ("config", "discard_new", "retention"),
    [
        ("maxMsgs: 10", True, 0),
        ("maxMsgs: 10\ndiscard: 1", True, 0),
        ("discard: 0", False, 0),
        ("retention: 1", True, 1),
    ],
)
def test_eventbus_discard_and_retention_reach_the_stream(
    tmp_path: Path, config: str, discard_new: bool, retention: int
) -> None:
    rt = Standalone(load_for_run([str(_manifests(tmp_path, config))]), Settings())
    limits = rt._limits("default")
    assert (limits.discard_new, limits.retention) == (discard_new, retention)


@pytest.mark.slow
def test_webhook_answers_503_when_the_stream_is_full_and_loses_nothing(
    tmp_path: Path, kube_api: Any
) -> None:
    room = 20
    port = free_port()
    tf = Triggerfish(
        files=[str(_manifests(tmp_path, f"maxMsgs: {room}"))],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
    ).start()
    url = f"http://127.0.0.1:{port}/trigger"
    accepted: list[str] = []
    try:
        refused: httpx.Response | None = None
        for i in range(room * 3):
            r = httpx.post(url, json={"model": f"m{i}", "dataset": "d"}, timeout=15)
            if r.status_code == 200:
                accepted.append(f"m{i}")
                continue
            refused = r
            break
        assert refused is not None, f"{len(accepted)} posts accepted, none refused"
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("Retry-After"), refused.headers
        assert len(accepted) == room
        metrics = httpx.get(f"http://127.0.0.1:{tf.api_port}/metrics", timeout=5).text
        m = re.search(
            r'triggerfish_bus_publish_rejected_total\{eventbus_name="default",'
            r'reason="stream_full"\} (\d+)',
            metrics,
        )
        assert m and int(m.group(1)) >= 1, metrics

        want = set(accepted)
        wait_for(
            lambda: want <= {params_of(w)["model"] for w in list_workflows(kube_api)},
            timeout=30,
            interval=0.25,
        )
        counts = collections.Counter(params_of(w)["model"] for w in list_workflows(kube_api))
        assert set(counts) == want and set(counts.values()) == {1}, counts
    finally:
        assert tf.stop() == 0, tf.log()

    # with room again (a larger limit), the same store accepts posts again
    tf = Triggerfish(
        files=[str(_manifests(tmp_path, f"maxMsgs: {room * 2}"))],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
    ).start()
    try:
        r = httpx.post(url, json={"model": "more", "dataset": "d"}, timeout=15)
        assert r.status_code == 200, r.text
    finally:
        tf.stop()
