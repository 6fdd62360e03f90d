"""The embedded nats-server: starts fast on free ports, restarts on the same ports (new
ones when taken), replaces a server that a dead owner left behind on the same store, and
never touches a server that a live owner or another store uses."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from app.adapters.dirlock import DirLock
from app.adapters.natsserver import EmbeddedNats, find_binary, kill_pid
from app.kernel.errors import InstanceLockedError


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


def test_restart_moves_to_new_ports_when_taken(tmp_path: Path) -> None:
    n = EmbeddedNats(store_dir=tmp_path / "nats")
    n.start()
    try:
        old_port = n.port
        n.kill()
        with socket.socket() as squatter:  # someone else took the port meanwhile
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", old_port))
            squatter.listen(1)
            assert n.restart() is True
            assert n.port not in (0, old_port) and n.running
        assert n.restart() is False  # running: nothing to do
    finally:
        n.stop()


def test_second_owner_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    first = EmbeddedNats(store_dir=tmp_path / "nats")
    first.start()
    try:
        assert first.process is not None
        with pytest.raises(InstanceLockedError, match=rf"pid {os.getpid()}\b"):
            EmbeddedNats(store_dir=tmp_path / "nats").start()
        assert first.running
        assert (tmp_path / "nats" / "nats-server.pid").read_text() == str(first.process.pid)
    finally:
        first.stop()


def test_server_of_another_store_is_not_reaped(tmp_path: Path) -> None:
    other_store = tmp_path / "other" / "jetstream"
    other = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-js", "-sd", str(other_store)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        store = tmp_path / "nats"
        store.mkdir()
        (store / "nats-server.pid").write_text(str(other.pid))  # a stale or reused PID
        n = EmbeddedNats(store_dir=store)
        n.start()
        try:
            assert other.poll() is None, "a nats-server of another store was killed"
        finally:
            n.stop()
    finally:
        kill_pid(other.pid)


def test_dir_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    a, b = DirLock(tmp_path / "s"), DirLock(tmp_path / "s")
    a.acquire("state directory")
    try:
        with pytest.raises(InstanceLockedError) as info:
            b.acquire("state directory")
        assert f"pid {os.getpid()}" in str(info.value) and "\n" not in str(info.value)
        assert str(tmp_path / "s") in str(info.value)
    finally:
        a.release()
    with b:  # released: free for the next owner
        assert (tmp_path / "s" / "triggerfish.lock").read_text().strip() == str(os.getpid())


def test_leftover_server_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedNats(store_dir=tmp_path / "nats")
    first.start()
    assert first.process is not None and first.lock is not None
    left_behind = first.process.pid
    first.lock.release()  # its owner died: the OS dropped the lock, the server lives on
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
