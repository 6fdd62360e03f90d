"""The ``slack`` trigger: post one message to a Slack channel per firing (Argo
``SlackTrigger``).

Fields (:class:`SlackTriggerConfig`): ``slackToken`` (a Secret key, required);
``channel`` (a leading ``#`` is dropped); ``message`` (the text); ``attachments`` and
``blocks`` (JSON arrays, as text, per Slack's message API); ``thread``
(``messageAggregationKey``: firings with the same key go into one thread, started by
the first of them; ``broadcastMessageToChannel``: replies are also shown in the
channel); ``sender`` (``username``; ``icon``, an ``:emoji:`` or an http(s) URL);
``parameters`` (applied to this config first, e.g. ``dest: message``). At least one of
message, attachments and blocks must be given, and a channel.

The request is Slack's Web API ``chat.postMessage`` (form-encoded, the token as a bearer
header), sent with the context's shared HTTP session; the API's base URL is the
``TRIGGERFISH_SENSOR__SLACK_API_URL`` setting (default ``https://slack.com/api/``).

Semantics:
* Threads, as Argo's notification library keeps them: the first post with an
  aggregation key records the message's ``ts`` per (channel, key) in memory, later
  posts with that key reply in the thread. Posts for one key are serialised, so two
  concurrent first firings do not start two threads. The map is per process (lost on
  restart, as in Argo).
* Not idempotent: Slack has no idempotency key for posts, so a retry after an answer
  that was lost (a timeout) may post twice. A firing that Slack answered is not retried.
* Failure: connection errors, timeouts, HTTP 429 and 5xx (retried no sooner than the
  answer's ``Retry-After``), and Slack errors a retry may
  fix (``ratelimited``, ``service_unavailable``, ``internal_error``, ``fatal_error``,
  ``request_timeout``) → :class:`~app.kernel.errors.TransientError`; any other Slack
  error (``invalid_auth``, ``channel_not_found``, ``not_in_channel``,
  ``invalid_blocks``, ...), other HTTP statuses, attachments or blocks that are not
  JSON arrays, a missing Secret key or parameter value →
  :class:`~app.kernel.errors.PermanentError`.
* The token never appears in logs, traces or messages.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerContext, TriggerResult
from sensors.triggers.http import read_secret
from sensors.triggers.parameterized import ParameterizedTrigger
from sensors.triggers.sources import http_session

DEFAULT_API_URL = "https://slack.com/api/"
REQUEST_TIMEOUT_SECONDS = 30.0
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "service_unavailable", "internal_error", "fatal_error",
     "request_timeout"}
)  # fmt: skip
"""``ok: false`` error codes a later attempt may not get."""


def _json_array(v: str, name: str) -> str:
    if v:
        try:
            parsed = json.loads(v)
        except ValueError as e:
            raise ValueError(f"{name} must be a JSON array: {e}") from e
        if not isinstance(parsed, list):
            raise ValueError(f"{name} must be a JSON array")
    return v


class SlackThread(SpecModel):
    """``thread``: group firings into one thread per ``messageAggregationKey``."""

    message_aggregation_key: str = ""
    broadcast_message_to_channel: bool = False


class SlackSender(SpecModel):
    """``sender``: the name and icon the message is posted under."""

    username: str = ""
    icon: str = ""


class SlackTriggerConfig(SpecModel):
    """``template.slack``: post ``message``/``attachments``/``blocks`` to ``channel``."""

    parameters: list[TriggerParameter] = Field(default_factory=list)
    slack_token: SecretKeySelector
    channel: str = ""
    message: str = ""
    attachments: str = ""
    blocks: str = ""
    thread: SlackThread = Field(default_factory=SlackThread)
    sender: SlackSender = Field(default_factory=SlackSender)

    @field_validator("attachments")
    @classmethod
    def _attachments_array(cls, v: str) -> str:
        return _json_array(v, "attachments")

    @field_validator("blocks")
    @classmethod
    def _blocks_array(cls, v: str) -> str:
        return _json_array(v, "blocks")

    def problem(self) -> str | None:
        """Why this config cannot be posted (checked per firing: ``parameters`` may fill
        the channel or the text, as in Argo's example)."""
        if not self.channel.lstrip("#"):
            return "no slack channel provided"
        if not (self.message or self.attachments or self.blocks):
            return "no text to post: at least one of message, attachments, blocks is needed"
        return None


def _icon_field(icon: str) -> tuple[str, str] | None:
    if len(icon) > 2 and icon.startswith(":") and icon.endswith(":"):
        return "icon_emoji", icon
    parts = urlsplit(icon)
    if parts.scheme in ("http", "https") and parts.netloc:
        return "icon_url", icon
    return None


@dataclass
class _Threads:
    """Thread timestamps per (channel, aggregation key), and a lock per key."""

    ts: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    async def close(self) -> None:  # kept by the SharedCache until it closes
        self.ts.clear()


def api_url() -> str:
    """The Slack Web API base URL (the ``sensor.slack_api_url`` setting)."""
    from app.kernel.settings import Settings

    url = Settings().sensor.slack_api_url
    return url if url.endswith("/") else url + "/"


class SlackTrigger(ParameterizedTrigger[SlackTriggerConfig]):
    """Posts one Slack message per firing (see the module docstring)."""

    type_name: ClassVar[str] = "slack"
    config_model: ClassVar[type[SpecModel]] = SlackTriggerConfig

    def __init__(self, config: SlackTriggerConfig, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self.api_url = api_url()

    async def execute(self, inv: Invocation) -> TriggerResult:
        cfg, records = self._config_for(inv.events)
        problem = cfg.problem()
        if problem is not None:
            raise PermanentError(f"slack: {problem}")
        channel = cfg.channel.removeprefix("#")
        sel = cfg.slack_token
        token = await read_secret(self.ctx, inv.namespace, sel.name, sel.key)
        form: dict[str, str] = {"channel": channel, "text": cfg.message}
        if cfg.attachments:
            form["attachments"] = cfg.attachments
        if cfg.blocks:
            form["blocks"] = cfg.blocks
        if cfg.sender.username:
            form["username"] = cfg.sender.username
        icon = _icon_field(cfg.sender.icon) if cfg.sender.icon else None
        if icon is not None:
            form[icon[0]] = icon[1]
        elif cfg.sender.icon:
            self.ctx.log.warning("slack: sender.icon %r is not an :emoji: or a URL; not sent",
                                 cfg.sender.icon)  # fmt: skip
        if cfg.thread.broadcast_message_to_channel:
            form["reply_broadcast"] = "true"

        key = cfg.thread.message_aggregation_key
        if not key:
            answer = await self._post(form, token, channel)
            return self._result(answer, channel, records, thread=None)
        threads = await self.ctx.shared.get(("slack.threads", self.api_url), _new_threads)
        tkey = (channel, key)
        lock = threads.locks.setdefault(tkey, asyncio.Lock())
        async with lock:
            known = threads.ts.get(tkey)
            if known is not None:
                form["channel"], form["thread_ts"] = known
            answer = await self._post(form, token, channel)
            if known is None:
                threads.ts[tkey] = (str(answer.get("channel") or channel), str(answer.get("ts")))
        return self._result(answer, channel, records, thread=known[1] if known else None)

    def _result(
        self,
        answer: dict[str, Any],
        channel: str,
        records: list[dict[str, Any]],
        thread: str | None,
    ) -> TriggerResult:
        detail: dict[str, Any] = {"name": f"slack #{channel}", "channel": channel,
                                  "ts": answer.get("ts")}  # fmt: skip
        if thread is not None:
            detail["thread_ts"] = thread
        return TriggerResult("posted", detail, records)

    async def _post(self, form: dict[str, str], token: str, channel: str) -> dict[str, Any]:
        import aiohttp

        session = await http_session(self.ctx)
        where = f"slack chat.postMessage #{channel}"
        try:
            async with session.post(
                self.api_url + "chat.postMessage",
                data=form,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                text = await resp.text()
        except TimeoutError as e:
            raise TransientError(f"{where}: timed out after {REQUEST_TIMEOUT_SECONDS:g}s") from e
        except aiohttp.ClientError as e:
            raise TransientError(f"{where}: {type(e).__name__}: {e}") from e
        if status == 429 or status >= 500:
            after = f" (Retry-After {retry_after}s)" if retry_after else ""
            err = TransientError(f"{where}: HTTP {status}{after}")
            if retry_after.isdigit():  # Slack sends whole seconds; retries wait that long
                err.retry_after_seconds = float(retry_after)
            raise err
        if status != 200:
            raise PermanentError(f"{where}: HTTP {status}")
        try:
            answer = json.loads(text)
        except ValueError as e:
            raise TransientError(f"{where}: the answer is not JSON") from e
        if not isinstance(answer, dict):
            raise TransientError(f"{where}: the answer is not a JSON object")
        if answer.get("ok") is True:
            return answer
        error = str(answer.get("error") or "unknown error")
        message = f"{where}: Slack answered {error!r}"
        if error in TRANSIENT_SLACK_ERRORS:
            raise TransientError(message)
        raise PermanentError(message)


async def _new_threads() -> _Threads:
    return _Threads()


__all__ = ["SlackTrigger", "SlackTriggerConfig"]
