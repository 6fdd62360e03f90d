"""The embedded nats-server: starts fast on free ports, restarts on the same ports,
and replaces a server that a killed run left behind on the same state directory."""

from __future__ import annotations

import os
from pathlib import Path

from app.adapters.natsserver import EmbeddedNats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_restart_keeps_ports(tmp_path: Path) -> None:
    n = EmbeddedNats(store_dir=tmp_path / "nats")
    n.start()
    try:
        url = n.url
        assert n.port not in (0, 4222)
        n.kill()
        n.start()
        assert n.url == url
    finally:
        n.stop()


def test_leftover_server_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedNats(store_dir=tmp_path / "nats")
    first.start()
    assert first.process is not None
    left_behind = first.process.pid
    try:
        # a new run on the same state dir, while the old server still runs
        second = EmbeddedNats(store_dir=tmp_path / "nats")
        second.start()
        try:
            first.process.wait(timeout=10)  # reaped: the old server was stopped
            assert not _alive(left_behind)
            assert second.process is not None and second.process.pid != left_behind
            assert (tmp_path / "nats" / "nats-server.pid").read_text() == str(second.process.pid)
        finally:
            second.stop()
    finally:
        first.process = None
