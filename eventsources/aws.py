"""AWS sessions for the sources that call AWS (``sqs``, ``sns``): credentials and roles.

Argo's AWS sources take the same credential fields (``accessKey``/``secretKey`` Secret
keys, else the default chain; ``roleARN`` assumed through STS; ``endpoint`` for a
compatible server); building a session from them is written once, here. The AWS SDK
(aiobotocore) is imported only by this module and the two sources (a forbidden contract
in ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider

from app.kernel.errors import ConfigError


class _SourceCredentials(CredentialProvider):  # type: ignore[misc]
    """Puts credentials we built (assumed role) first in a session's provider chain."""

    METHOD = "triggerfish-assume-role"
    CANONICAL_NAME = "TriggerfishAssumeRole"

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


def role_session_name(source_name: str, event_name: str) -> str:
    """An STS session name (≤ 64 chars of ``[\\w+=,.@-]``) that says who assumed the role."""
    raw = f"triggerfish-{source_name}-{event_name}"
    return "".join(c if c.isalnum() or c in "+=,.@-_" else "-" for c in raw)[:64]


async def new_session() -> AioSession:
    """A fresh session (built in a thread: it costs tens of ms of CPU and file reads)."""
    return await asyncio.to_thread(AioSession)


async def session_for(
    keys: dict[str, str],
    *,
    role_arn: str,
    region: str,
    endpoint: str,
    session_name: str,
    role_path: str,
) -> tuple[AioSession, dict[str, str]]:
    """A session and the key arguments for its ``create_client``.

    ``keys`` (``aws_access_key_id``, ``aws_secret_access_key``, maybe
    ``aws_session_token``) are the static credentials from the Secrets, empty for the
    default chain. With ``role_arn`` the role is assumed with them (or with the default
    chain) and refreshed before it expires, like Argo's stscreds provider; the key
    arguments are then empty. :class:`ConfigError` at ``role_path`` when there are no
    credentials to assume the role with.
    """
    session = await new_session()
    if not role_arn:
        return session, keys
    # Argo assumes the role with the ambient credentials; we use the configured keys as
    # the source when they are given, the default chain otherwise.
    source = await new_session()
    if keys:
        source.set_credentials(
            keys["aws_access_key_id"],
            keys["aws_secret_access_key"],
            keys.get("aws_session_token"),
        )
    source_credentials = await source.get_credentials()
    if source_credentials is None:
        raise ConfigError(
            "no AWS credentials to assume the role with (set accessKey/secretKey "
            "or provide them to the process)",
            path=role_path,
        )
    fetcher = AioAssumeRoleCredentialFetcher(
        client_creator=functools.partial(
            source.create_client,
            region_name=region,
            endpoint_url=endpoint or None,
            config=AioConfig(warm_up_loader_caches=True),
        ),
        source_credentials=source_credentials,
        role_arn=role_arn,
        extra_args={"RoleSessionName": session_name},
    )
    assumed = AioDeferredRefreshableCredentials(
        refresh_using=fetcher.fetch_credentials, method="assume-role"
    )
    session.get_component("credential_provider").insert_before("env", _SourceCredentials(assumed))
    return session, {}
