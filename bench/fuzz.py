"""bench/fuzz: seeded hostile HTTP requests against a real webhook port.

Every request a client can send must get 200 or a documented 4xx (DESIGN §3 and
``eventsources/webhook_http.py``), never a 5xx other than the documented 503 +
``Retry-After``, and the server's memory must stay bounded. :class:`Fuzzer` builds raw
requests from a seed (so a failure can be replayed): random, deep and mutated JSON,
invalid UTF-8, surrogates, huge numbers, NaN, duplicate keys, NUL bytes, empty bodies,
odd and missing content types, gzip/deflate bodies (valid, corrupt, truncated, bombs),
unknown encodings, chunked and broken framing, bodies cut short, absurd request lines
and headers, and bearer tokens. :func:`fire` sends them over raw sockets, one request
per connection, and tallies the status codes.

``python -m bench.fuzz`` writes an EventSource (two webhook events on one port, one
with ``authSecret``) into a temp dir, starts ``triggerfish run`` on it (embedded
JetStream, 127.0.0.1 only), sends ``--requests`` requests (default 100,000) or stops
after ``--max-seconds``, and prints the status histogram, the count of unexpected 5xx
(must be 0), the server's RSS as the run progresses and its peak (``VmHWM``), and
whether it still answers a plain request. Exit status 1 on any unexpected answer.

    python -m bench.fuzz [--requests 100000] [--seed 1] [--concurrency 32]
                         [--max-seconds 900]

``tests/test_fuzz_webhook.py`` runs a few hundred of the same requests in the test
suite. Traffic goes only to 127.0.0.1; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import random
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

TOKEN = "fuzz-token-7d1e"
DOCUMENTED = frozenset({200, 400, 401, 404, 405, 408, 413, 415, 431})
"""Statuses of the webhook contract (503 counts only with ``Retry-After``)."""

MAX_PAYLOAD = 64 * 1024
"""``maxPayloadSize`` of the fuzzed events (small, so over-limit cases stay cheap)."""


@dataclass(frozen=True, slots=True)
class Case:
    """One raw request; ``cut``: the client closes after sending it (no answer due)."""

    kind: str
    data: bytes
    cut: bool = False


@dataclass
class Tally:
    """What came back: status histogram and everything outside the contract."""

    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    unexpected: list[tuple[str, str, bytes]] = field(default_factory=list)
    successes: int = 0
    sent: int = 0

    @property
    def unexpected_5xx(self) -> int:
        return sum(1 for _, status, _ in self.unexpected if status.startswith("5"))

    def record(self, case: Case, status: str, head: bytes) -> None:
        self.sent += 1
        self.statuses[status] += 1
        self.kinds[case.kind] += 1
        if status == "200" and head.endswith(b"success"):
            self.successes += 1
        ok = (
            (status.isdigit() and int(status) in DOCUMENTED)
            or (status == "503" and b"\r\nretry-after:" in head.lower())
            or (case.cut and status in ("closed", "reset"))
            # Refused early (413 / 431) with most of it unread: the server closes, and the
            # client's kernel may drop the answer when the reset arrives first.
            or (status == "reset" and len(case.data) > MAX_PAYLOAD)
        )
        if not ok and len(self.unexpected) < 10_000:
            self.unexpected.append((case.kind, status, case.data[:300]))


class Fuzzer:
    """Builds hostile requests from a seed; ``case()`` returns the next one."""

    def __init__(self, seed: int, endpoint: str = "/trigger", secure: str = "/secure") -> None:
        self.rng = random.Random(seed)
        self.endpoint = endpoint
        self.secure = secure
        self.n = 0
        # Built once: compressing megabytes per request would measure the client.
        zeros = b"\0" * (MAX_PAYLOAD + 1)
        self.bombs = [
            gzip.compress(zeros),
            zlib.compress(zeros),
            gzip.compress(gzip.compress(zeros)),
        ]
        self.kinds: list[tuple[Callable[[], Case], int]] = [
            (self.valid_json, 12),
            (self.deep_json, 6),
            (self.mutated_json, 14),
            (self.hostile_values, 10),
            (self.random_bytes, 5),
            (self.content_types, 6),
            (self.encodings, 10),
            (self.framing, 10),
            (self.headers, 8),
            (self.request_lines, 7),
            (self.auth, 6),
            (self.cut_short, 6),
        ]
        self._choices = [k for k, _ in self.kinds]
        self._weights = [w for _, w in self.kinds]

    def case(self) -> Case:
        self.n += 1
        return self.rng.choices(self._choices, self._weights)[0]()

    # -- building blocks --------------------------------------------------------------
    def text(self, n: int = 12) -> str:
        alphabet = 'abcxyz019 _-"\\/\n\t\u00e9\u4e2d\U0001f600\u2028\x00\x7f'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randrange(n)))

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 4 or r < 0.35:
            return self.rng.choice(
                [
                    None,
                    True,
                    False,
                    self.rng.randrange(-(2**63), 2**63),
                    self.rng.uniform(-1e300, 1e300),
                    self.rng.random(),
                    self.text(),
                ]
            )
        if r < 0.65:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(5))]
        return {self.text(8): self.value(depth + 1) for _ in range(self.rng.randrange(5))}

    def json_body(self) -> bytes:
        return orjson.dumps(self.value())

    def request(
        self,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        method: bytes = b"POST",
        path: bytes | None = None,
        length: bool = True,
    ) -> bytes:
        lines = [method + b" " + (path or self.endpoint.encode()) + b" HTTP/1.1", b"Host: fuzz"]
        lines += [n + b": " + v for n, v in (headers or [(b"Content-Type", b"application/json")])]
        if length:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        lines.append(b"Idempotency-Key: fuzz-" + str(self.n).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    # -- kinds ------------------------------------------------------------------------
    def valid_json(self) -> Case:
        return Case("valid-json", self.request(self.json_body()))

    def deep_json(self) -> Case:
        levels = self.rng.choice([self.rng.randrange(1, 300), self.rng.randrange(250, 1100), 5000])
        opens = b"".join(self.rng.choice([b"[", b'{"k":']) for _ in range(levels))
        closes = b"".join(b"]" if o == ord("[") else b"}" for o in reversed(opens) if o in b"[{")
        return Case("deep-json", self.request(opens + b"0" + closes))

    def mutated_json(self) -> Case:
        data = bytearray(self.json_body())
        for _ in range(self.rng.randrange(1, 4)):
            op = self.rng.randrange(4)
            at = self.rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = self.rng.randrange(256)
            elif op == 1:
                data[at:at] = self.rng.choice(
                    [b"\0", b"\xff", b"\xed\xa0\x80", b"\xc3", b"\\", b'"', b",", b"}", b"]"]
                )
            elif op == 2:
                del data[at:]
            else:
                data[at:at] = self.rng.randbytes(self.rng.randrange(1, 8))
        return Case("mutated-json", self.request(bytes(data)))

    def hostile_values(self) -> Case:
        body = self.rng.choice(
            [
                b'{"s": "\\ud800"}',
                b'{"s": "\\udc00\\ud800"}',
                b'{"s": "\xed\xa0\x80"}',
                b'{"s": "\xff\xfe"}',
                b'{"s": "a\\u0000b"}',
                b'{"s": "a\x00b"}',
                b'{"n": NaN}',
                b'{"n": Infinity}',
                b'{"n": -Infinity}',
                b'{"n": 1e400}',
                b'{"n": 1e-400}',
                b'{"n": ' + b"9" * self.rng.randrange(20, 5000) + b"}",
                b'{"n": -0}',
                b'{"a": 1, "a": 2, "a": {"a": 3}}',
                b"",
                b"   \r\n\t ",
                b"null",
                b"\xef\xbb\xbf{}",
                b'"' + b"x" * self.rng.randrange(1000, 200_000) + b'"',
                b"[" + b"1," * self.rng.randrange(1, 100_000) + b"1]",
            ]
        )
        return Case("hostile-values", self.request(body))

    def random_bytes(self) -> Case:
        return Case("random-bytes", self.request(self.rng.randbytes(self.rng.randrange(1, 2000))))

    def content_types(self) -> Case:
        ctype = self.rng.choice(
            [
                None,
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"application/x-www-form-urlencoded; charset=\xff",
                b"multipart/form-data; boundary=zz",
                b"application/json; charset=latin-1",
                b"\xff\xfe/\x80",
                b"a" * 5000,
                b"",
            ]
        )
        body = self.rng.choice([self.json_body(), b"a=1&b=%ff%fe&c", b"%zz=%", b"\xff=\xfe"])
        headers = [] if ctype is None else [(b"Content-Type", ctype)]
        return Case("content-type", self.request(body, headers))

    def encodings(self) -> Case:
        body = self.json_body()
        coding, data = self.rng.choice(
            [
                (b"gzip", gzip.compress(body)),
                (b"x-gzip", gzip.compress(body)),
                (b"deflate", zlib.compress(body)),
                (b"gzip, gzip", gzip.compress(gzip.compress(body))),
                (b"identity", body),
                (b"gzip", gzip.compress(body)[: self.rng.randrange(1, 20)]),
                (b"gzip", gzip.compress(body) + self.rng.randbytes(4)),
                (b"gzip", self.rng.randbytes(50)),
                (b"deflate", self.rng.randbytes(50)),
                (b"gzip", self.bombs[0]),
                (b"deflate", self.bombs[1]),
                (b"gzip, gzip", self.bombs[2]),
                (b"br", body),
                (b"zstd", body),
                (b"\xff", body),
                (b",,,", body),
                (b"gzip;q=1", gzip.compress(body)),
            ]
        )
        headers = [(b"Content-Type", b"application/json"), (b"Content-Encoding", coding)]
        return Case("content-encoding", self.request(data, headers))

    def framing(self) -> Case:
        body = self.json_body()
        ctype = (b"Content-Type", b"application/json")
        choice = self.rng.randrange(7)
        if choice == 0:  # valid chunked, random chunk sizes
            out, rest = b"", body
            while rest:
                size = self.rng.randrange(1, 64)
                out += f"{size if size <= len(rest) else len(rest):x}\r\n".encode()
                out += rest[:size] + b"\r\n"
                rest = rest[size:]
            out += b"0\r\n\r\n"
            return Case(
                "chunked",
                self.request(out, [ctype, (b"Transfer-Encoding", b"chunked")], length=False),
            )
        if choice == 1:  # broken chunk sizes
            junk = self.rng.choice([b"zz\r\n", b"-1\r\n", b"fffffffffffffffff\r\n", b"5\r\nab\r\n"])
            return Case(
                "chunked-broken",
                self.request(
                    junk + b"0\r\n\r\n", [ctype, (b"Transfer-Encoding", b"chunked")], length=False
                ),
            )
        if choice == 2:  # a Content-Length the body does not meet: then the client leaves
            return Case(
                "length-short",
                self.request(
                    body, [ctype, (b"Content-Length", str(len(body) + 10).encode())], length=False
                ),
                cut=True,
            )
        if choice == 3:  # invalid Content-Length values
            value = self.rng.choice([b"abc", b"-1", b"1e3", b"99999999999999999999", b" ", b"0x10"])
            return Case(
                "length-invalid",
                self.request(body, [ctype, (b"Content-Length", value)], length=False),
            )
        if choice == 4:  # two Content-Lengths, or Content-Length with chunked
            return Case(
                "length-conflict",
                self.request(
                    body,
                    [
                        ctype,
                        (b"Content-Length", b"1"),
                        (b"Content-Length", str(len(body)).encode()),
                    ],
                    length=False,
                ),
            )
        if choice == 5:
            chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            return Case(
                "length-and-chunked",
                self.request(
                    chunked,
                    [ctype, (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
                    length=False,
                ),
            )
        over = b'{"x": "' + b"y" * (MAX_PAYLOAD + 10) + b'"}'
        return Case("too-large", self.request(over))

    def headers(self) -> Case:
        choice = self.rng.randrange(7)
        headers = [(b"Content-Type", b"application/json")]
        if choice == 0:
            headers.append((b"X-Long", b"a" * self.rng.randrange(1000, 200_000)))
        elif choice == 1:
            headers += [(b"X-H%d" % i, b"v") for i in range(self.rng.randrange(100, 3000))]
        elif choice == 2:
            headers.append((self.rng.choice([b"Bad Name", b"X(y)", b"\xff", b"X\x00"]), b"v"))
        elif choice == 3:
            headers.append(
                (
                    b"X-Bytes",
                    self.rng.randbytes(self.rng.randrange(1, 50))
                    .replace(b"\r", b"")
                    .replace(b"\n", b""),
                )
            )
        elif choice == 4:
            headers.append((b"X-Folded", b"a\r\n b"))
        elif choice == 5:
            headers.append(
                (b"Idempotency-Key", self.rng.randbytes(20).replace(b"\r", b"").replace(b"\n", b""))
            )
        else:
            headers.append((b"X-Nul", b"a\x00b"))
        return Case("headers", self.request(self.json_body(), headers))

    def request_lines(self) -> Case:
        body = self.json_body()
        choice = self.rng.randrange(6)
        if choice == 0:
            method = self.rng.choice(
                [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"BREW", b"G\xffT"]
            )
            return Case("method", self.request(body, method=method))
        if choice == 1:
            path = self.rng.choice(
                [b"/", b"/health", b"/nope", b"/trigger/", b"/trigger?a=%ff&b", b"/%00", b"/%ff%fe",
                 b"*", b"http://x/trigger", b"/" + b"a" * self.rng.randrange(100, 100_000)]
            )  # fmt: skip
            return Case("path", self.request(body, path=path))
        if choice == 2:
            return Case(
                "http-version",
                self.request(body).replace(
                    b"HTTP/1.1", self.rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"HTTX"]), 1
                ),
            )
        if choice == 3:
            return Case("bare-lf", self.request(body).replace(b"\r\n", b"\n"))
        if choice == 4:
            return Case(
                "garbage-line", self.rng.randbytes(self.rng.randrange(1, 200)) + b"\r\n\r\n"
            )
        return Case(
            "get-query",
            self.request(
                b"", method=b"GET", path=b"/trigger?" + self.rng.randbytes(20).hex().encode()
            ),
        )

    def auth(self) -> Case:
        token = TOKEN.encode()
        value = self.rng.choice(
            [None, b"Bearer " + token, b"bearer " + token, b"Bearer wrong", b"Basic abc",
             b"Bearer", b"Bearer " + token + b"\xff", b"\xff" * 10]
        )  # fmt: skip
        headers = [(b"Content-Type", b"application/json")]
        if value is not None:
            headers.append((b"Authorization", value))
        return Case("auth", self.request(self.json_body(), headers, path=self.secure.encode()))

    def cut_short(self) -> Case:
        data = self.request(self.json_body())
        return Case("cut-short", data[: self.rng.randrange(1, len(data))], cut=True)


async def send_one(port: int, case: Case, timeout: float = 30.0) -> tuple[str, bytes]:
    """Send one case on a fresh connection; the status (or what happened) and the head."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return "connect-failed", b""
    head = b""
    try:
        writer.write(case.data)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.drain(), timeout)
        if case.cut:
            return "closed", b""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as e:
            head = e.partial
        except asyncio.LimitOverrunError:
            head = await reader.read(65536)
        if not head:
            return "no-answer", b""
        with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            head += await asyncio.wait_for(reader.read(64), 1.0)  # the short body, if any
        parts = head.split(b" ", 2)
        status = parts[1].decode("ascii", "replace") if len(parts) > 1 else "garbled"
        return status, head
    except TimeoutError:
        return "timeout", head
    except ConnectionError:
        return ("reset" if not head else "partial"), head
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fire(
    port: int,
    fuzzer: Fuzzer,
    count: int,
    concurrency: int,
    max_seconds: float = float("inf"),
    on_progress: Callable[[int], None] | None = None,
) -> Tally:
    """Send ``count`` cases (or stop after ``max_seconds``) with ``concurrency`` clients."""
    tally = Tally()
    deadline = time.monotonic() + max_seconds
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.monotonic() < deadline:
            issued += 1
            case = fuzzer.case()
            status, head = await send_one(port, case)
            tally.record(case, status, head)
            if on_progress is not None:
                on_progress(tally.sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


# -- python -m bench.fuzz ----------------------------------------------------------------

_MANIFESTS = """\
apiVersion: v1
kind: Secret
metadata: {{name: fuzz-token, namespace: argo-events}}
stringData: {{token: {token}}}
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: fuzz, namespace: argo-events}}
spec:
  webhook:
    trigger: {{port: "12000", endpoint: /trigger, method: POST, maxPayloadSize: {limit}}}
    secure:
      port: "12000"
      endpoint: /secure
      method: POST
      maxPayloadSize: {limit}
      authSecret: {{name: fuzz-token, key: token}}
"""


def _proc_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    args = ap.parse_args(argv)

    from tests.support.net import free_port
    from tests.support.proc import Triggerfish

    work = Path(tempfile.mkdtemp(prefix="tf-bench-fuzz-"))
    (work / "manifests").mkdir()
    (work / "manifests" / "fuzz.yaml").write_text(_MANIFESTS.format(token=TOKEN, limit=MAX_PAYLOAD))
    port = free_port()
    tf = Triggerfish(
        files=[str(work / "manifests")], state_dir=work / "state", port_map={12000: port}
    )
    rss: list[tuple[int, int]] = []
    try:
        tf.start()
        assert tf.proc is not None
        pid = tf.proc.pid
        rss.append((0, _proc_kib(pid, "VmRSS")))
        step = max(1, args.requests // 10)

        def progress(sent: int) -> None:
            if sent % step == 0:
                rss.append((sent, _proc_kib(pid, "VmRSS")))

        t0 = time.monotonic()
        tally = asyncio.run(
            fire(
                port, Fuzzer(args.seed), args.requests, args.concurrency, args.max_seconds, progress
            )
        )
        seconds = time.monotonic() - t0
        alive = tf.proc.poll() is None
        after = asyncio.run(send_one(port, Case("plain", Fuzzer(0).request(b'{"after": true}'))))
        peak = _proc_kib(pid, "VmHWM")
        nats_peak = max((_proc_kib(c, "VmHWM") for c in _children(pid)), default=0)
        log = tf.log_path.read_text(errors="replace") if tf.log_path else ""
    finally:
        tf.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate = tally.sent / seconds
    print(
        f"bench/fuzz: seed {args.seed}, {tally.sent} requests in {seconds:.1f}s ({rate:.0f}/s), "
        f"{args.concurrency} clients, one request per connection"
    )
    print("  status histogram:")
    for status, n in sorted(tally.statuses.items()):
        print(f"    {status:>14}  {n:7d}")
    print("  requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(tally.kinds.items())))
    print(f"  stored events (200 success): {tally.successes}")
    print(
        f"  unexpected answers: {len(tally.unexpected)}  (unexpected 5xx: {tally.unexpected_5xx})"
    )
    for kind, status, data in tally.unexpected[:10]:
        print(f"    {kind} -> {status}: {data[:120]!r}")
    print(
        "  server RSS (MiB) by requests sent: "
        + ", ".join(f"{n}: {kib / 1024:.0f}" for n, kib in rss)
    )
    print(
        f"  server peak RSS (VmHWM): {peak / 1024:.1f} MiB; "
        f"its nats-server's: {nats_peak / 1024:.1f} MiB"
    )
    print(f"  server alive afterwards: {alive}; a plain request afterwards: {after[0]}")
    print(f"  tracebacks in the server log: {log.count('Traceback')}")
    bad = tally.unexpected or not alive or after[0] != "200" or "Traceback" in log
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
