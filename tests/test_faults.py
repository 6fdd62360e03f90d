"""Fault tests in real processes: kill Triggerfish mid-burst, stop the bus mid-post.

"Nothing lost": every event answered 200 must produce exactly one object, even when
the process is SIGKILLed and restarted on the same state directory; and while the bus
is down the webhook answers 503 quickly instead of 200 or hanging.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import SEED, list_workflows, params_of


@pytest.mark.slow
def test_sigkill_mid_burst_loses_and_duplicates_nothing(tmp_path: Path, kube_api: Any) -> None:
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
    ).start()
    n = 400
    accepted: list[str] = []

    async def burst() -> None:
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=32), timeout=httpx.Timeout(10, pool=None)
        ) as c:

            async def one(i: int) -> None:
                try:
                    r = await c.post(
                        f"http://127.0.0.1:{port}/trigger", json={"model": f"m{i}", "dataset": "d"}
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    accepted.append(f"m{i}")

            async def killer() -> None:
                while len(accepted) < n // 4:
                    await asyncio.sleep(0.005)
                await asyncio.to_thread(tf.kill)

            await asyncio.gather(killer(), *(one(i) for i in range(n)))

    try:
        asyncio.run(burst())
        assert 0 < len(accepted) < n, "the kill should land mid-burst"
        tf.start()  # same state dir: the embedded bus and the consumers resume
        want = set(accepted)

        def settled() -> bool:
            got = {params_of(w)["model"] for w in list_workflows(kube_api)}
            return want <= got

        wait_for(settled, timeout=60, interval=0.5)
        time.sleep(1.0)  # let any redelivery land, so duplicates would show
        counts = collections.Counter(params_of(w)["model"] for w in list_workflows(kube_api))
        missing = want - set(counts)
        dupes = {m: c for m, c in counts.items() if c > 1}
        assert not missing, f"accepted events lost: {sorted(missing)[:10]}"
        assert not dupes, f"duplicated: {dupes}"
    finally:
        tf.stop()


@pytest.mark.slow
def test_bus_outage_answers_503_then_recovers(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_server.url,
        port_map={12000: port},
    ).start()
    url = f"http://127.0.0.1:{port}/trigger"
    try:
        assert (
            httpx.post(url, json={"model": "before", "dataset": "d"}, timeout=10).status_code == 200
        )
        nats_server.kill()
        t0 = time.monotonic()
        r = httpx.post(url, json={"model": "during", "dataset": "d"}, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After"), r.headers
        assert elapsed < 10, f"503 took {elapsed:.1f}s"
        nats_server.start()  # same ports and store; Triggerfish is not restarted

        def accepted() -> bool:
            return (
                httpx.post(url, json={"model": "after", "dataset": "d"}, timeout=10).status_code
                == 200
            )

        wait_for(accepted, timeout=30, interval=0.25)
        wait_for(
            lambda: (
                {"before", "after"} <= {params_of(w)["model"] for w in list_workflows(kube_api)}
            ),
            timeout=30,
            interval=0.25,
        )
        models = [params_of(w)["model"] for w in list_workflows(kube_api)]
        assert "during" not in models  # 503 means not accepted
        assert models.count("before") == 1
    finally:
        tf.stop()
