"""Shared pieces of the benchmarks: child processes, HTTP load generation, statistics.

Benchmarks measure; tests never assert timings (DESIGN §6). Everything here binds to
127.0.0.1 only, and every child process started is stopped by its PID.

HTTP load comes from a separate process so it does not share the server's event loop:
``wrk`` when it is installed (``apt-get install -y wrk``; the fastest client, so the
figures show the server), otherwise this module's own asyncio client
(``python -m bench._common loadgen ...``, aiohttp when importable, else httpx), which
is slower than the servers it measures on this class of machine; the output says which
client ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson


def one_kb_json() -> bytes:
    """The ~1 KB JSON document every HTTP benchmark posts (DESIGN §7 measures 1 KB)."""
    doc: dict[str, Any] = {
        "model": "resnet",
        "dataset": "imagenet",
        "params": {"epochs": 90, "batch": 256, "lr": 0.1, "momentum": 0.9},
        "labels": {"team": "vision", "owner": "ml-platform", "priority": "high"},
        "notes": "",
    }
    doc["notes"] = "x" * (1024 - len(orjson.dumps(doc)))
    return orjson.dumps(doc)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass
class LoadResult:
    """One timed run: completed operations, their rate and latency, and failures."""

    label: str
    tool: str
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    """Operations that did not succeed (non-2xx answers, socket errors, exceptions)."""
    cpu_us_per_op: float = 0.0
    """CPU time (user + system) the measured process spent per completed operation:
    steadier than the rate when other work shares the machine."""
    nats_cpu_us_per_op: float = 0.0
    """The same for the nats-server process."""

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1)}


# -- child processes --------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (0.0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A child process whose stdout lines we can wait for; stopped by PID."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_line(self, prefix: str, timeout_seconds: float = 30.0) -> str:
        """Block until the child prints a line starting with ``prefix``; return it."""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout_seconds
        buf = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:4]} exited early:\n{self.log_tail()}")
            chunk = self.proc.stdout.read()
            if chunk:
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith(prefix):
                        return line
            time.sleep(0.02)
        raise TimeoutError(f"{self.args[:4]} did not print {prefix!r}:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the child has used so far (Linux ``/proc``)."""
        return cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_seconds``; always reaps the PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# -- HTTP load ---------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE"), "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"status_errors\\": %d, \\"socket_errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    label: str,
    url: str,
    body: bytes,
    seconds: float,
    concurrency: int,
    threads: int = 1,
    rate: float = 0.0,
) -> LoadResult:
    """Drive ``url`` with ``wrk`` (POST ``body``) for ``seconds`` at ``concurrency``.

    With ``rate``, each connection waits ``concurrency / rate`` seconds before each
    request (wrk's ``delay()`` hook): about ``rate`` requests per second while answers
    are fast, which is what a run well below the maximum needs (the result's rate says
    what was achieved)."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        pace = f"\nfunction delay() return {1000 * concurrency / rate:.3f} end\n" if rate else ""
        script.write_text(_WRK_SCRIPT + pace)
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
            check=False,
        )
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[len("WRKJSON ") :])
            return LoadResult(
                label=label,
                tool=f"wrk -t{threads} -c{concurrency}" + (f" paced {rate:.0f}/s" if rate else ""),
                ops=int(r["requests"]) - int(r["status_errors"]),
                seconds=r["duration_us"] / 1e6,
                p50_ms=r["p50_us"] / 1000,
                p99_ms=r["p99_us"] / 1000,
                errors=int(r["status_errors"]) + int(r["socket_errors"]),
            )
    raise RuntimeError(f"wrk gave no result (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")


def run_python_load(
    label: str, url: str, body: bytes, seconds: float, concurrency: int, rate: float = 0.0
) -> LoadResult:
    """Drive ``url`` with this module's asyncio client, in a child process; with ``rate``,
    open-loop at that many requests per second."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench._common",
                "loadgen",
                "--url",
                url,
                "--body-file",
                str(body_file),
                "--seconds",
                str(seconds),
                "--concurrency",
                str(concurrency),
                "--rate",
                str(rate),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    for line in out.stdout.splitlines():
        if line.startswith("LOADJSON "):
            r = json.loads(line[len("LOADJSON ") :])
            return LoadResult(label=label, **r)
    raise RuntimeError(f"load generator failed (rc={out.returncode}):\n{out.stderr[-3000:]}")


def run_http_load(
    label: str, url: str, body: bytes, seconds: float, concurrency: int, client: str
) -> LoadResult:
    """``client``: ``wrk``, ``python``, or ``auto`` (wrk when installed)."""
    if client == "wrk" or (client == "auto" and have_wrk()):
        return run_wrk(label, url, body, seconds, concurrency)
    return run_python_load(label, url, body, seconds, concurrency)


async def _paced_load(
    url: str, body: bytes, seconds: float, concurrency: int, rate: float
) -> dict[str, Any]:
    """Open-loop load: a request is due every ``1/rate`` s whatever the answers do, and
    its latency counts from when it was due (a server falling behind shows as queueing,
    not as a lower offered rate)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    queue: asyncio.Queue[float] = asyncio.Queue()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            while (due := await queue.get()) >= 0:
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - due)
                else:
                    errors += 1

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        t_start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - t_start < seconds:
            while sent < int((now - t_start) * rate):
                queue.put_nowait(t_start + sent / rate)
                sent += 1
            await asyncio.sleep(0.0005)
        for _ in workers:
            queue.put_nowait(-1.0)
        await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {
        "tool": f"python aiohttp c={concurrency} paced {rate:.0f}/s",
        "ops": len(latencies),
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def _loadgen(url: str, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = 0.0
    headers = {"Content-Type": "application/json"}
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is optional
        aiohttp = None  # type: ignore[assignment]

    if aiohttp is not None:
        tool = f"python aiohttp c={concurrency}"
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def worker() -> None:
                nonlocal errors
                while (t0 := time.perf_counter()) < deadline:
                    try:
                        async with session.post(url, data=body, headers=headers) as r:
                            await r.read()
                            ok = r.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            t_start = time.perf_counter()
            deadline = t_start + seconds
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        import httpx

        tool = f"python httpx c={concurrency}"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:

            async def worker() -> None:
                nonlocal errors
                while (t0 := time.perf_counter()) < deadline:
                    try:
                        r = await client.post(url, content=body, headers=headers)
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            t_start = time.perf_counter()
            deadline = t_start + seconds
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {
        "tool": tool,
        "ops": len(latencies),
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop when available (what the servers use too)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._common")
    sub = p.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("loadgen", help="POST a body to a URL with C concurrent clients")
    lg.add_argument("--url", required=True)
    lg.add_argument("--body-file", required=True)
    lg.add_argument("--seconds", type=float, default=10.0)
    lg.add_argument("--concurrency", type=int, default=64)
    lg.add_argument("--rate", type=float, default=0.0, help="open loop at this rate")
    args = p.parse_args(argv)
    body = Path(args.body_file).read_bytes()
    if args.rate > 0:
        coro = _paced_load(args.url, body, args.seconds, args.concurrency, args.rate)
    else:
        coro = _loadgen(args.url, body, args.seconds, args.concurrency)
    result = run_loop(coro)
    print("LOADJSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
