"""The ``awsLambda`` trigger: invoke one AWS Lambda function per firing (Argo
``AWSLambdaTrigger``).

Fields (:class:`AwsLambdaTriggerConfig`): ``functionName`` (a name, an ARN or a partial
ARN, optionally with ``:qualifier``); ``region``; ``payload`` (parameters set into an
empty JSON document, which becomes the invocation's event, as Argo's
``ConstructPayload``; required, as in Argo); ``parameters`` (applied to this config
first, e.g. ``dest: functionName``); ``invocationType`` (``RequestResponse``, the
default; ``Event``; ``DryRun``); ``accessKey`` and ``secretKey`` (Secret keys, given
together; without them the SDK's default chain: environment, IRSA/web identity,
instance role); ``roleARN`` (assume that role through STS, with the keys when given,
the default chain otherwise; refreshed before it expires). ``policy.status.allow`` on
the trigger lists the invocation statuses that count as success (Lambda answers 200,
202 for ``Event``, 204 for ``DryRun``).

Why the AWS SDK (aiobotocore, async): request signing, the credential chain and STS are
the SDK's job. Where it sends requests is the SDK's standard configuration
(``AWS_ENDPOINT_URL_LAMBDA``/``AWS_ENDPOINT_URL``, also for STS), which is how a
Lambda-compatible server is used instead of AWS. One client per (namespace, region,
role, credentials) lives in the context's
:class:`~sensors.triggers.base.SharedCache` (closed with it). The SDK's own retries are
off: the runner retries, with the trigger's ``retryStrategy``.

Semantics:
* Success: Lambda accepted the invocation and, for ``RequestResponse``, the function
  returned without error. A function error (the ``X-Amz-Function-Error`` header:
  ``Handled``/``Unhandled``) fails the firing with
  :class:`~app.kernel.errors.PermanentError` naming the error type (a deliberate
  difference: Argo counts the invocation as done): the function ran and failed, and
  running it again with the same event is the function's own retry policy's business.
* Idempotence: Lambda's Invoke has no idempotency token, so a retry after an answer
  that was lost, or a redelivered firing, may invoke the function twice. For
  ``RequestResponse`` the firing key is passed in the client context
  (``context.client_context.custom["triggerfish-key"]``, the same on every retry), so
  a function can recognise a repeat; Lambda drops the client context of ``Event``
  invocations.
* Failure: throttling (429 ``TooManyRequestsException``), Lambda's 5xx, a function
  that is being updated or not ready (``ResourceConflictException``,
  ``ResourceNotReadyException``), connection errors and timeouts →
  :class:`~app.kernel.errors.TransientError`; an unknown function, refused or missing
  credentials, an invalid request or payload, a status outside ``policy.status.allow``,
  a missing Secret key or parameter value → :class:`~app.kernel.errors.PermanentError`.
* Secret values never appear in logs, traces or messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerResult
from sensors.triggers.http import read_secret
from sensors.triggers.parameterized import ParameterizedTrigger

CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 905
"""A synchronous invocation may run for Lambda's maximum of 900 seconds."""

KEY_CONTEXT_FIELD = "triggerfish-key"

TRANSIENT_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "ServiceException",
     "ResourceConflictException", "ResourceNotReadyException", "EC2ThrottledException",
     "RequestTimeout", "RequestTimeoutException"}
)  # fmt: skip
"""Lambda error codes a later attempt may not get (besides any 429 or 5xx)."""

_SESSION_NAME = re.compile(r"[^\w+=,.@-]")

InvocationType = Literal["RequestResponse", "Event", "DryRun"]


class AwsLambdaTriggerConfig(SpecModel):
    """``template.awsLambda``: invoke ``functionName`` in ``region`` with the payload."""

    function_name: str
    region: str
    payload: list[TriggerParameter]
    parameters: list[TriggerParameter] = Field(default_factory=list)
    access_key: SecretKeySelector | None = None
    secret_key: SecretKeySelector | None = None
    invocation_type: InvocationType | None = None
    role_arn: str = Field("", alias="roleARN")

    @field_validator("function_name")
    @classmethod
    def _function_given(cls, v: str) -> str:
        if not v:
            raise ValueError("function name is not specified")
        return v

    @field_validator("region")
    @classmethod
    def _region_given(cls, v: str) -> str:
        if not v:
            raise ValueError("region is not specified")
        return v

    @model_validator(mode="after")
    def _keys_together(self) -> AwsLambdaTriggerConfig:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("accessKey and secretKey must be given together")
        return self


class _Client:
    """One Lambda client for one (region, role, credentials), opened on first use.

    Kept in the SharedCache, which calls :meth:`close` at shutdown.
    """

    def __init__(self, cfg: AwsLambdaTriggerConfig, keys: dict[str, str]) -> None:
        self._cfg = cfg
        self._keys = keys
        self._lock = asyncio.Lock()
        self._cm: Any = None
        self._client: Any = None

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await self._open()
            return self._client

    async def _open(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.credentials import (
            AioAssumeRoleCredentialFetcher,
            AioDeferredRefreshableCredentials,
        )
        from aiobotocore.session import AioSession

        cfg = self._cfg
        keys = dict(self._keys)
        # Building a session reads files: keep it off the event loop.
        session = await asyncio.to_thread(AioSession)
        if cfg.role_arn:
            source = await asyncio.to_thread(AioSession)
            if keys:
                source.set_credentials(keys["aws_access_key_id"], keys["aws_secret_access_key"])
            source_credentials = await source.get_credentials()
            if source_credentials is None:
                raise PermanentError(
                    "awsLambda: no AWS credentials to assume roleARN with (set accessKey/"
                    "secretKey or provide them to the process)"
                )
            fetcher = AioAssumeRoleCredentialFetcher(
                client_creator=functools.partial(
                    source.create_client,
                    region_name=cfg.region,
                    config=AioConfig(warm_up_loader_caches=True),
                ),
                source_credentials=source_credentials,
                role_arn=cfg.role_arn,
                extra_args={"RoleSessionName": "triggerfish-lambda-trigger"},
            )
            assumed = AioDeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method="assume-role"
            )
            session.get_component("credential_provider").insert_before(
                "env", _assumed_role_provider(assumed)
            )
            keys = {}
        cm = session.create_client(
            "lambda",
            region_name=cfg.region,
            config=AioConfig(
                warm_up_loader_caches=True,
                retries={"mode": "standard", "total_max_attempts": 1},  # the runner retries
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
            ),
            **keys,
        )
        client = await cm.__aenter__()
        self._cm = cm
        return client

    async def close(self) -> None:
        async with self._lock:
            cm, self._cm, self._client = self._cm, None, None
            if cm is not None:
                with contextlib.suppress(Exception):
                    await cm.__aexit__(None, None, None)


class AwsLambdaTrigger(ParameterizedTrigger[AwsLambdaTriggerConfig]):
    """Invokes one Lambda function per firing (see the module docstring)."""

    has_payload: ClassVar[bool] = True

    type_name: ClassVar[str] = "awsLambda"
    config_model: ClassVar[type[SpecModel]] = AwsLambdaTriggerConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg, records = self._config_for(inv.events)
        body, payload_records = self._payload_for(cfg, inv.events)
        records += payload_records
        client = await (await self._client(cfg, inv.namespace)).client()
        invocation_type = cfg.invocation_type or "RequestResponse"
        where = f"awsLambda {cfg.function_name} ({cfg.region})"
        request: dict[str, Any] = {
            "FunctionName": cfg.function_name,
            "InvocationType": invocation_type,
            "Payload": body,
        }
        if invocation_type == "RequestResponse":
            context = json.dumps({"custom": {KEY_CONTEXT_FIELD: inv.key}}).encode()
            request["ClientContext"] = base64.b64encode(context).decode()
        answer = await _invoke(client, request, where)
        status = int(answer.get("StatusCode") or 0)
        result_body = b""
        stream = answer.get("Payload")
        if stream is not None:
            async with stream as s:
                result_body = await s.read()
        detail: dict[str, Any] = {
            "name": f"lambda {cfg.function_name}",
            "function": cfg.function_name,
            "region": cfg.region,
            "invocationType": invocation_type,
            "status": status,
        }
        if answer.get("ExecutedVersion"):
            detail["executedVersion"] = answer["ExecutedVersion"]
        function_error = answer.get("FunctionError")
        if function_error:
            raise PermanentError(f"{where}: the function failed ({function_error}): "
                                 f"{_snippet(result_body)}")  # fmt: skip
        allowed = self._status_allowed(status)
        if not allowed:
            expected = self._expected_statuses()
            raise PermanentError(f"{where}: answered {status}, expected {expected}")
        if result_body:
            detail["response"] = _snippet(result_body)
        return TriggerResult(f"lambda {status}", detail, records)

    async def _client(self, cfg: AwsLambdaTriggerConfig, namespace: str) -> _Client:
        keys: dict[str, str] = {}
        if cfg.access_key is not None and cfg.secret_key is not None:
            keys["aws_access_key_id"] = (await read_secret(
                self.ctx, namespace, cfg.access_key.name, cfg.access_key.key)).strip()  # fmt: skip
            keys["aws_secret_access_key"] = (await read_secret(
                self.ctx, namespace, cfg.secret_key.name, cfg.secret_key.key)).strip()  # fmt: skip
        # Rotated keys make a new client; the values are only hashed into the key.
        fingerprint = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
        key = ("awsLambda.client", cfg.region, cfg.role_arn, fingerprint)

        async def make() -> _Client:
            return _Client(cfg, keys)

        return await self.ctx.shared.get(key, make)


def _assumed_role_provider(credentials: Any) -> Any:
    """A provider that puts the assumed role's credentials first in a session's chain."""
    from botocore.credentials import CredentialProvider

    class AssumedRole(CredentialProvider):  # type: ignore[misc]
        METHOD = "triggerfish-assume-role"
        CANONICAL_NAME = "TriggerfishAssumeRole"

        async def load(self) -> Any:
            return credentials

    return AssumedRole()


async def _invoke(client: Any, request: dict[str, Any], where: str) -> dict[str, Any]:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        answer: dict[str, Any] = await client.invoke(**request)
    except ClientError as e:
        err = e.response.get("Error") or {}
        code = str(err.get("Code") or "")
        status = int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        message = f"{where}: {code or 'error'} (HTTP {status}): {err.get('Message') or ''}"
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            raise TransientError(message.rstrip(": ")) from e
        raise PermanentError(message.rstrip(": ")) from e
    except NoCredentialsError as e:
        raise PermanentError(f"{where}: no AWS credentials") from e
    except (ConnectionError, HTTPClientError, ReadTimeoutError) as e:
        raise TransientError(f"{where}: {type(e).__name__}: {e}") from e
    except BotoCoreError as e:
        raise PermanentError(f"{where}: {type(e).__name__}: {e}") from e
    except (OSError, TimeoutError) as e:
        raise TransientError(f"{where}: {type(e).__name__}: {e}") from e
    return answer


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["AwsLambdaTrigger", "AwsLambdaTriggerConfig"]
