"""``triggerfish dlq list|show|replay|discard``: dead letters from a terminal.

A client of a running process's operations API (``--api``, default
``http://127.0.0.1:8080``; ``TRIGGERFISH_API_TOKEN`` as bearer token when set), so it
acts through the process that runs the sensor, exactly as the page's buttons do.
A dead letter is named ``BUS:SEQ`` (the ``id`` column of ``list``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, TextIO

import httpx

from app.kernel.errors import ConfigError, TriggerfishError


def _split(dl_id: str) -> tuple[str, int]:
    bus, sep, seq = dl_id.rpartition(":")
    if not sep or not bus or not seq.isdigit() or int(seq) < 1:
        raise ConfigError(f"dead letter id {dl_id!r}: expected BUS:SEQ, e.g. default:42")
    return bus, int(seq)


def _call(method: str, url: str, token: str, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = {k: v for k, v in params.items() if v is not None}
    try:
        r = httpx.request(method, url, headers=headers, params=query, timeout=120)
    except httpx.HTTPError as e:
        raise TriggerfishError(f"cannot reach the operations API at {url}: {e}") from e
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise TriggerfishError(f"{r.status_code}: {detail}")
    return r.json()


def run_dlq(
    action: str,
    api: str,
    token: str,
    out: TextIO,
    *,
    dl_id: str | None = None,
    sensor: str | None = None,
    trigger: str | None = None,
    limit: int = 100,
    namespace: str | None = None,
) -> int:
    """Run one ``dlq`` action; 0 on success, 1 when a replay failed again. Raises
    ConfigError for a malformed id, TriggerfishError when the API refuses or is away."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no request lines on a terminal
    base = api.rstrip("/") + "/api/v1/deadletters"
    if action == "list":
        items = _call("GET", base, token, sensor=sensor, trigger=trigger, limit=limit)
        for d in items:
            error = " ".join(str(d["error"]).split())
            out.write(
                f"{d['id']}\t{d['time']}\t{d['namespace']}/{d['sensor']}/{d['trigger']}"
                f"\t{d['attempts']} attempt(s)\t{error}\n"
            )
        if not items:
            out.write("no dead letters\n")
        return 0
    assert dl_id is not None
    bus, seq = _split(dl_id)
    url = f"{base}/{bus}/{seq}"
    if action == "show":
        out.write(json.dumps(_call("GET", url, token, namespace=namespace), indent=2) + "\n")
        return 0
    if action == "discard":
        _call("DELETE", url, token, namespace=namespace)
        out.write(f"discarded {dl_id}\n")
        return 0
    result = _call("POST", url + "/replay", token, namespace=namespace)
    [outcome] = result["trace"]["triggers"] or [{}]
    if result["replayed"]:
        d = outcome.get("detail") or {}
        what = " ".join(x for x in (d.get("kind"), d.get("name")) if x)
        out.write(f"replayed {dl_id}: {outcome.get('action', 'ok')} {what}".rstrip() + "\n")
        return 0
    out.write(f"replay of {dl_id} failed again: {outcome.get('error', '')}\n")
    return 1
