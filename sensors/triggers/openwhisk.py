"""The ``openWhisk`` trigger: invoke one Apache OpenWhisk action per firing (Argo
``OpenWhiskTrigger``).

Fields (:class:`OpenWhiskTriggerConfig`): ``host`` (the API host, ``https://`` added
when it has no ``http``/``https`` scheme, as OpenWhisk's Go client does); ``version``
(default ``v1``); ``namespace`` (default ``_``, the token's own namespace);
``actionName`` (``action`` or ``package/action``); ``authToken`` (a Secret key holding
OpenWhisk's ``uuid:key`` token, sent as HTTP basic auth); ``payload`` (parameters set
into an empty JSON document: the action's parameters; required, as in Argo);
``parameters`` (applied to this config first, e.g. ``dest: actionName``).
``policy.status.allow`` on the trigger lists the statuses that count as success.

The request is OpenWhisk's REST API ``POST
{host}/api/{version}/namespaces/{namespace}/actions/{actionName}?blocking=true&result=true``
(the call Argo's client makes), sent with the context's shared HTTP session (the one the
``http`` and ``slack`` triggers use; see :mod:`sensors.triggers.http` for why aiohttp).

Semantics:
* Success: any 2xx, as in Argo: 200 (the action ran; its result goes into the trace),
  202 (OpenWhisk stopped waiting for a blocking invocation after its limit; the action
  carries on, the activation id goes into the trace); or a status in
  ``policy.status.allow`` when given.
* The body is the payload as a JSON object (a deliberate difference: Argo hands the
  payload's bytes to a client that encodes them as a base64 JSON string).
* Not idempotent: OpenWhisk has no idempotency key, so a retry after a lost answer or a
  redelivered firing may run the action twice. The firing key is sent as
  ``Idempotency-Key`` for a gateway or web action in front that honours it.
* Failure: 502 with an ``error`` result (the action ran and failed: an application or
  developer error) → :class:`~app.kernel.errors.PermanentError`; any other 5xx, 408, 425,
  429 (throttled), connection errors, timeouts → :class:`~app.kernel.errors.TransientError`;
  401/403 (refused token), 404 (no such action), other statuses, a missing Secret key or
  parameter value → PermanentError.
* The token never appears in logs, traces or messages.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerResult
from sensors.triggers.http import (
    IDEMPOTENCY_HEADER,
    TRANSIENT_STATUSES,
    read_secret,
    safe_url,
)
from sensors.triggers.parameterized import ParameterizedTrigger
from sensors.triggers.sources import http_session

REQUEST_TIMEOUT_SECONDS = 75.0
"""A blocking invocation is answered within OpenWhisk's 60 s wait (with 202 after it)."""

_SNIPPET = 300


class OpenWhiskTriggerConfig(SpecModel):
    """``template.openWhisk``: invoke ``actionName`` at ``host`` with the payload."""

    host: str
    version: str = ""
    namespace: str = ""
    auth_token: SecretKeySelector | None = None
    action_name: str
    payload: list[TriggerParameter]
    parameters: list[TriggerParameter] = Field(default_factory=list)

    @field_validator("host")
    @classmethod
    def _host_given(cls, v: str) -> str:
        if not v:
            raise ValueError("host URL is not specified")
        return v

    @field_validator("action_name")
    @classmethod
    def _action_given(cls, v: str) -> str:
        if not v:
            raise ValueError("action name is not specified")
        return v

    def url(self) -> str:
        """The invocation URL (blocking, result only)."""
        host = self.host if self.host.startswith("http") else f"https://{self.host}"
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            host = f"https://{self.host}"
        version = quote(self.version or "v1", safe="")
        namespace = quote(self.namespace or "_", safe="")
        action = quote(self.action_name, safe="/")
        return (f"{host.rstrip('/')}/api/{version}/namespaces/{namespace}/actions/{action}"
                "?blocking=true&result=true")  # fmt: skip


class OpenWhiskTrigger(ParameterizedTrigger[OpenWhiskTriggerConfig]):
    """Invokes one OpenWhisk action per firing (see the module docstring)."""

    has_payload: ClassVar[bool] = True

    type_name: ClassVar[str] = "openWhisk"
    config_model: ClassVar[type[SpecModel]] = OpenWhiskTriggerConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg, records = self._config_for(inv.events)
        body, payload_records = self._payload_for(cfg, inv.events)
        records += payload_records
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: inv.key}
        if cfg.auth_token is not None:
            sel = cfg.auth_token
            token = (await read_secret(self.ctx, inv.namespace, sel.name, sel.key)).strip()
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        url = cfg.url()
        where = f"openWhisk {cfg.action_name} at {safe_url(url.split('?', 1)[0])}"
        status, text = await self._post(url, body or b"{}", headers, where)
        detail: dict[str, Any] = {"name": f"openWhisk {cfg.action_name}",
                                  "action": cfg.action_name, "status": status}  # fmt: skip
        answer = _json(text)
        allowed = self._status_allowed(status)
        if allowed:
            if status == 202 and isinstance(answer, dict) and "activationId" in answer:
                detail["activationId"] = answer["activationId"]
            elif text:
                detail["result"] = _snippet(text)
            return TriggerResult(f"openWhisk {status}", detail, records)
        if status == 502 and isinstance(answer, dict) and "error" in answer:
            raise PermanentError(f"{where}: the action failed: {_snippet(text)}")
        expected = self._expected_statuses()
        message = f"{where}: answered {status}, expected {expected}"
        if text:
            message += f": {_snippet(text)}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientError(message)
        raise PermanentError(message)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], where: str
    ) -> tuple[int, str]:
        import aiohttp

        session = await http_session(self.ctx)
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                return resp.status, (await resp.text(errors="replace")).strip()
        except TimeoutError as e:
            raise TransientError(f"{where}: timed out after {REQUEST_TIMEOUT_SECONDS:g}s") from e
        except aiohttp.ClientConnectorCertificateError as e:
            raise PermanentError(f"{where}: certificate verification failed") from e
        except aiohttp.InvalidURL as e:
            raise PermanentError(f"{where}: invalid URL") from e
        except aiohttp.ClientError as e:
            raise TransientError(f"{where}: {type(e).__name__}: {e}") from e


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


__all__ = ["OpenWhiskTrigger", "OpenWhiskTriggerConfig"]
