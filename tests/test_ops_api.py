"""The operations API of a real ``triggerfish run``: where it listens, its bearer token,
and schemathesis-generated requests against its own OpenAPI schema.

One process for the module (ml-pipeline example, embedded bus, no cluster), started with
``TRIGGERFISH_API_TOKEN`` set; one event is posted so traces and objects are not empty.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from app.kernel.settings import Settings
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[1]
TOKEN = "ops-t0ken-4c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triggerfish]:
    tmp = tmp_path_factory.mktemp("ops")
    webhook_port = free_port()
    tf = Triggerfish(
        files=[str(REPO / "examples" / "ml-pipeline")],
        state_dir=tmp / "state",
        port_map={12000: webhook_port},
        extra_env={"TRIGGERFISH_API_TOKEN": TOKEN, "TRIGGERFISH_HTTP__HEADER_TIMEOUT_SECONDS": "1"},
    ).start()
    try:
        r = httpx.post(f"http://127.0.0.1:{webhook_port}/trigger", json={"model": "resnet"})
        assert r.status_code == 200
        base = f"http://127.0.0.1:{tf.api_port}"
        wait_for(lambda: httpx.get(f"{base}/api/v1/traces", headers=AUTH).json() != [])
        yield tf
    finally:
        tf.stop()


def _listening_addresses(pid: int, port: int) -> set[str]:
    """Local IPv4/IPv6 addresses process ``pid``'s network namespace listens on ``port``."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_operations_server_binds_loopback_by_default(ops: Triggerfish) -> None:
    assert Settings().api_host == "127.0.0.1"
    assert ops.proc is not None
    assert _listening_addresses(ops.proc.pid, ops.api_port) == {"0100007F"}  # 127.0.0.1


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/openapi.json", "/api/docs", "/", "/static/flow.js"]
)
def test_probes_and_the_description_stay_open(ops: Triggerfish, path: str) -> None:
    assert httpx.get(f"http://127.0.0.1:{ops.api_port}{path}").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/api/v1/eventsources",
        "/api/v1/sensors",
        "/api/v1/traces",
        "/api/v1/objects",
        "/api/v1/flow",
        "/api/v1/deadletters",
    ],
)
def test_everything_else_requires_the_bearer_token(ops: Triggerfish, path: str) -> None:
    url = f"http://127.0.0.1:{ops.api_port}{path}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text
    assert httpx.get(url, headers=AUTH).status_code == 200


def test_a_stalled_request_head_is_cut_off(ops: Triggerfish) -> None:
    with socket.create_connection(("127.0.0.1", ops.api_port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert httpx.get(f"http://127.0.0.1:{ops.api_port}/healthz").status_code == 200


def test_openapi_declares_the_bearer_scheme(ops: Triggerfish) -> None:
    doc = httpx.get(f"http://127.0.0.1:{ops.api_port}/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    assert "security" in doc["paths"]["/api/v1/sensors"]["get"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_operations_api_conforms_to_its_schema(ops: Triggerfish, mode: GenerationMode) -> None:
    """Valid and invalid requests to every operation: no 5xx, answers match the schema
    (status codes, content types, bodies), invalid input refused, auth enforced."""
    # The token through schemathesis' own auth, so its negative cases can drop it.
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{ops.api_port}/openapi.json", config=config
    )

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate()
        if mode == GenerationMode.POSITIVE:  # valid requests, with the token: answered
            # (a generated dead letter id names none: 404, as the schema says)
            gone = "{seq}" in case.path and response.status_code == 404
            assert response.status_code == 200 or gone, (case.path, response.text)

    check()
