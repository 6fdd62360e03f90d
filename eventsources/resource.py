"""Kubernetes resource event source (``spec.resource``): an event per change of any object.

Argo's ``ResourceEventSource``: watch the objects of one ``group``/``version``/``resource``
(in ``namespace``, or in every namespace when it is empty) and emit ``ADD``, ``UPDATE``
and ``DELETE`` events, narrowed by ``filter`` (``labels`` as the server-side label
selector; ``fields``, ``prefix``, ``createdBy`` and ``afterStart`` on the objects). The
ML use: chain the next stage when a training ``Workflow``'s ``status.phase`` becomes
``Succeeded``.

Why not an informer copy: the point of this module is that no change is lost or sent
twice across a watch that ends. It lists, then watches from the list's
``resourceVersion`` with bookmarks on, and keeps what it last saw of every object (uid →
object). The resume point (the "bookmark") advances only after the event of a change
was published, so a watch ended for any reason resumes exactly after the last published
change. When the resume point has expired (410 Gone, history compacted) it lists again
and compares with what it last saw: an object it did not know is an ``ADD``, one with
another ``resourceVersion`` an ``UPDATE`` (with the last seen state as ``oldBody``), one
that is gone a ``DELETE``; unchanged objects emit nothing. The event id is derived from
the EventSource, the event name, the object's uid, its ``resourceVersion`` and the event
type, so a publish retried after an unclear bus answer is dropped by the bus's dedup
window (``Nats-Msg-Id``).

The Kubernetes API comes from :attr:`SourceContext.kube` (the runtime's ``ApiKube``:
kubeconfig, or the in-cluster service account); the ``kubernetes`` package is never
imported here. Registered as ``resource`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from app.adapters.kube import KubeError, KubePermanentError
from app.kernel.errors import ConfigError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from app.languages.expr import compile_go_regex
from app.languages.paths import GetPath, compile_get
from eventsources.base import KubeWatchApi
from eventsources.brokers import BusBackoff, Deliverer, Outcome, PerEventSource, Retry

EventType = Literal["ADD", "UPDATE", "DELETE"]

#: How long one watch request lasts before the server ends it and it is made again.
WATCH_TIMEOUT_SECONDS = 300

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
#: Argo's label operations (Kubernetes' ``selection.Operator``) and how each is written
#: in a label selector.
_LABEL_OPERATIONS = ("=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt")
_FIELD_OPERATIONS = ("=", "==", "!=")


class Selector(SpecModel):
    """Argo ``Selector``: ``key``, ``operation`` (default ``==``) and ``value``."""

    key: str = Field(description="label key, or a gjson path into the object for fields")
    operation: str = Field("", description="==, =, != (labels also in, notin, exists, !, gt, lt)")
    value: str = Field("", description="labels: comma-separated for in/notin; fields: a regex")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v:
            raise ValueError("key can't be empty for selector")
        return v


def _check_label_key(key: str) -> None:
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            f"label key {key!r}: name must be 63 characters or less, alphanumeric, '-', '_' "
            "or '.', beginning and ending with an alphanumeric character"
        )


def label_requirement(sel: Selector) -> tuple[str, str]:
    """``(key, requirement)`` of one label selector entry, as Kubernetes' ``labels``
    package writes it; ``ValueError`` for what ``labels.NewRequirement`` rejects."""
    op = sel.operation or "=="
    if op not in _LABEL_OPERATIONS:
        raise ValueError(f"unknown label operation {op!r} (one of {', '.join(_LABEL_OPERATIONS)})")
    _check_label_key(sel.key)
    if op in ("exists", "!") and sel.value == "":
        values: list[str] = []
    elif op in ("in", "notin"):
        values = sel.value.split(",")
    else:
        values = [sel.value]
    for v in values:
        if len(v) > 63 or not _LABEL_VALUE.match(v):
            raise ValueError(
                f"label value {v!r}: must be 63 characters or less, empty or alphanumeric "
                "with '-', '_' or '.' inside"
            )
    if op in ("exists", "!"):
        if values:
            raise ValueError(f"operation {op!r} takes no value")
        return sel.key, ("!" + sel.key) if op == "!" else sel.key
    if op in ("in", "notin"):
        return sel.key, f"{sel.key} {op} ({','.join(sorted(set(values)))})"
    if op in ("gt", "lt"):
        try:
            int(sel.value)
        except ValueError:
            raise ValueError(f"operation {op!r} needs an integer value") from None
        return sel.key, f"{sel.key}{'>' if op == 'gt' else '<'}{sel.value}"
    return sel.key, f"{sel.key}{op}{sel.value}"


def label_selector(selectors: Sequence[Selector]) -> str:
    """The ``labelSelector`` of ``filter.labels`` (requirements sorted by key, ANDed)."""
    reqs = sorted((label_requirement(s) for s in selectors), key=lambda r: r[0])
    return ",".join(r for _, r in reqs)


class FieldMatch:
    """One compiled ``filter.fields`` entry: gjson path, regex, negated or not."""

    def __init__(self, sel: Selector) -> None:
        op = sel.operation or "=="
        if op not in _FIELD_OPERATIONS:
            raise ValueError(f"unknown field operation {op!r} (one of =, ==, !=)")
        self.path: GetPath = compile_get(sel.key)
        self.regex = compile_go_regex(sel.value)
        self.negate = op == "!="
        self.text = f"{sel.key} {op} {sel.value!r}"

    def matches(self, obj: Mapping[str, Any]) -> bool:
        found, value = self.path.get(obj)
        if not found:
            return False
        # gjson's Result.Str, which Argo matches: the text of a string, "" for the rest.
        hit = self.regex.search(value if isinstance(value, str) else "") is not None
        return hit != self.negate


class LabelSelector(Selector):
    """A ``filter.labels`` entry, checked as Kubernetes checks a label requirement."""

    @model_validator(mode="after")
    def _valid(self) -> LabelSelector:
        label_requirement(self)
        return self


class FieldSelector(Selector):
    """A ``filter.fields`` entry: its path and regular expression compile."""

    @model_validator(mode="after")
    def _valid(self) -> FieldSelector:
        FieldMatch(self)
        return self


class ResourceFilter(SpecModel):
    """Argo ``ResourceFilter``: which objects' changes become events."""

    prefix: str = Field("", description="the object's name starts with it")
    labels: list[LabelSelector] = Field(
        default_factory=list, description="sent to the API server as the label selector"
    )
    fields: list[FieldSelector] = Field(
        default_factory=list, description="gjson path into the object ~ regex"
    )
    created_by: datetime | None = Field(None, description="created at or before this time")
    after_start: bool = Field(False, description="only changes after the source started")

    @field_validator("created_by")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v


class ResourceConfig(SpecModel):
    """One watched resource (Argo ``ResourceEventSource``)."""

    namespace: str = Field("", description="namespace to watch; empty = every namespace")
    filter: ResourceFilter | None = None
    group: str = Field("", description="API group; empty for the core group")
    version: str = Field(description="API version, e.g. v1alpha1")
    resource: str = Field(description="resource (plural), e.g. workflows")
    event_types: list[EventType] = Field(description="ADD, UPDATE and/or DELETE")
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("version", "resource")
    @classmethod
    def _required(cls, v: str) -> str:
        if not v:
            raise ValueError("must be specified")
        return v

    @field_validator("event_types")
    @classmethod
    def _some_types(cls, v: list[EventType]) -> list[EventType]:
        if not v:
            raise ValueError("must list at least one of ADD, UPDATE, DELETE")
        return v

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _rv_order(obj: Mapping[str, Any]) -> int:
    rv = str(_meta(obj).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


class ResourceExpired(Exception):
    """The watch ended with an ERROR event (410 Expired: the resume point is gone):
    list again and compare."""


class _Watch:
    """One event name: list, watch from the resume point, list again when it expired."""

    def __init__(self, plugin: ResourceSource, event_name: str, cfg: ResourceConfig) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.event_name = event_name
        self.cfg = cfg
        self.path = f"spec.resource.{event_name}"
        self.deliver = Deliverer(plugin, event_name, None)
        self.where = self.deliver.where
        flt = cfg.filter or ResourceFilter()
        self.filter = flt
        self.labels = label_selector(flt.labels)
        self.fields = [FieldMatch(s) for s in flt.fields]
        self.types = set(cfg.event_types)
        self.started = datetime.now(UTC)
        """When the source started (``afterStart``), to the second: timestamps have seconds."""
        self.kind = ""
        self.known: dict[str, dict[str, Any]] = {}
        """uid → the object as last seen (and published, or filtered)."""
        self.resume = ""
        """resourceVersion the next watch starts from; empty = list first."""
        self.synced = False
        """True once the first list was processed (objects found then existed at start)."""
        self.live = False

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        kube = self.ctx.kube
        if kube is None:
            raise ConfigError(
                "the resource source needs a Kubernetes API (a kubeconfig, KUBECONFIG or "
                "the in-cluster service account); none is configured",
                self.path,
            )
        self.started = datetime.now(UTC).replace(microsecond=0)
        retry = Retry(None)
        while True:
            try:
                if not self.kind:
                    self.kind = await kube.kind_of(self.cfg.api_version, self.cfg.resource)
                if not self.resume:
                    await self._relist(kube)
                    retry.reset()
                self.live = True  # listed, or resuming: watching from the resume point
                await self._watch(kube)
                retry.reset()
            except ResourceExpired as e:
                self.log.info("%s: %s; listing again", self.where, e)
                self.resume = ""
            except KubeError as e:
                if e.status == 410:
                    self.log.info("%s: resume point expired (%s); listing again", self.where, e)
                    self.resume = ""
                    continue
                if isinstance(e, KubePermanentError) and not self.synced:
                    raise ConfigError(
                        f"cannot watch {self.cfg.resource} of {self.cfg.api_version}: {e}",
                        self.path,
                    ) from e
                self.live = False
                self.log.warning("%s: watching %s: %s; retrying", self.where, self.kind, e)
                await retry.wait()

    async def _relist(self, kube: KubeWatchApi) -> None:
        """List and emit what differs from what was last seen."""
        listed = await kube.list(
            self.cfg.api_version, self.kind, self.cfg.namespace, label_selector=self.labels
        )
        items = [i for i in listed.get("items") or [] if isinstance(i, dict)]
        rv = str(_meta(listed).get("resourceVersion") or "")
        current: dict[str, dict[str, Any]] = {}
        for obj in items:
            # list items of built-in kinds come without apiVersion/kind; watch objects have them
            obj.setdefault("apiVersion", self.cfg.api_version)
            obj.setdefault("kind", self.kind)
            current[self._uid(obj)] = obj
        changes: list[tuple[EventType, dict[str, Any], dict[str, Any] | None]] = []
        for uid, obj in sorted(current.items(), key=lambda kv: _rv_order(kv[1])):
            old = self.known.get(uid)
            if old is None:
                changes.append(("ADD", obj, None))
            elif _meta(old).get("resourceVersion") != _meta(obj).get("resourceVersion"):
                changes.append(("UPDATE", obj, old))
        for uid, old in self.known.items():
            if uid not in current:
                changes.append(("DELETE", old, None))
        initial = not self.synced
        for event_type, obj, old in changes:
            await self._emit(event_type, obj, old, initial=initial)
        self.synced = True
        self.resume = rv
        self.log.info(
            "%s: listed %d %s (%d changes); watching from resourceVersion %s",
            self.where, len(current), self.cfg.resource, len(changes), rv,
        )  # fmt: skip

    async def _watch(self, kube: KubeWatchApi) -> None:
        """One watch request from the resume point, until the server ends it."""
        async for ev in kube.watch(
            self.cfg.api_version,
            self.kind,
            self.cfg.namespace,
            self.resume,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            label_selector=self.labels,
            allow_watch_bookmarks=True,
        ):
            kind = ev.get("type")
            obj = ev.get("object")
            if not isinstance(obj, dict):
                continue
            if kind == "ERROR":
                code = obj.get("code")
                raise ResourceExpired(
                    f"the watch ended with {code} {obj.get('reason', '')}: {obj.get('message', '')}"
                )
            rv = str(_meta(obj).get("resourceVersion") or "")
            if kind == "BOOKMARK":
                if rv:
                    self.resume = rv
                continue
            uid = self._uid(obj)
            if kind == "ADDED":
                old = self.known.get(uid)
                await self._emit("ADD" if old is None else "UPDATE", obj, old)
            elif kind == "MODIFIED":
                old = self.known.get(uid)
                # Argo drops an update whose resourceVersion it has seen already.
                if old is None or _meta(old).get("resourceVersion") != rv:
                    await self._emit("UPDATE" if old is not None else "ADD", obj, old)
            elif kind == "DELETED":
                await self._emit("DELETE", obj, None)
            if rv:
                self.resume = rv

    # -- one change ---------------------------------------------------------------------
    @staticmethod
    def _uid(obj: Mapping[str, Any]) -> str:
        meta = _meta(obj)
        return str(meta.get("uid") or f"{meta.get('namespace', '')}/{meta.get('name', '')}")

    def _passes(self, event_type: EventType, obj: Mapping[str, Any], initial: bool) -> str:
        """Why ``filter`` drops this change; "" when it passes (Argo's ``passFilters``)."""
        flt = self.filter
        meta = _meta(obj)
        name = str(meta.get("name") or "")
        if flt.prefix and not name.startswith(flt.prefix):
            return f"name {name!r} does not start with {flt.prefix!r}"
        created = _timestamp(meta.get("creationTimestamp"))
        if flt.after_start and event_type == "ADD":
            if initial:
                return "the object existed when the source started (afterStart)"
            if created is not None and created < self.started:
                return f"created {created.isoformat()} before the source started (afterStart)"
        if flt.created_by is not None and created is not None and created > flt.created_by:
            return f"created {created.isoformat()} after createdBy"
        for f in self.fields:
            if not f.matches(obj):
                return f"field filter {f.text} does not match"
        return ""

    async def _emit(
        self,
        event_type: EventType,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        *,
        initial: bool = False,
    ) -> None:
        """Publish one change (unless its type or the filter drops it), then remember it.

        A publish the bus refuses is tried again with the same id until it is stored:
        what was last seen only moves on after the event is on the bus.
        """
        uid = self._uid(obj)
        meta = _meta(obj)
        what = f"{event_type} {meta.get('namespace', '')}/{meta.get('name', '')}"
        reason = "" if event_type in self.types else "event type not watched"
        reason = reason or self._passes(event_type, obj, initial)
        if reason:
            if event_type in self.types:
                self.ctx.metrics.event_filtered(self.plugin.source_name, self.event_name)
            self.log.debug("%s: %s not sent: %s", self.where, what, reason)
        else:
            data: dict[str, Any] = {
                "type": event_type,
                "body": obj,
                "oldBody": old,
                "group": self.cfg.group,
                "version": self.cfg.version,
                "resource": self.cfg.resource,
                "metadata": dict(self.cfg.metadata),
            }
            event_id = event_id_from(
                self.plugin.namespace,
                self.plugin.source_name,
                self.event_name,
                uid,
                str(meta.get("resourceVersion") or ""),
                event_type,
            )
            backoff = BusBackoff()
            while await self.deliver.deliver(data, event_id, what) is Outcome.FAILED:
                self.log.error(
                    "%s: %s not stored on the bus (%s); trying again",
                    self.where, what, self.deliver.last_error,
                )  # fmt: skip
                await backoff.wait()
        if event_type == "DELETE":
            self.known.pop(uid, None)
        else:
            self.known[uid] = obj


class ResourceSource(PerEventSource[ResourceConfig]):
    """Kubernetes objects' changes as events: ``spec.resource.<eventName>``.

    Fields (Argo's ``ResourceEventSource``): ``namespace`` (empty: all namespaces),
    ``group``, ``version``, ``resource`` (the plural, as in ``kubectl get``),
    ``eventTypes`` (``ADD``, ``UPDATE``, ``DELETE``), ``metadata``, ``filter`` with
    ``labels`` (``key``, ``operation`` ``==``/``=``/``!=``/``in``/``notin``/``exists``/
    ``!``/``gt``/``lt``, ``value``; sent to the API server as the label selector),
    ``fields`` (``key`` a gjson path into the object, ``operation`` ``==``/``=``/``!=``,
    ``value`` a regular expression), ``prefix`` (of the name), ``createdBy`` (created at
    or before) and ``afterStart`` (only changes after the source started).

    Event data (Argo's ``ResourceEventData``): ``{"type": "ADD"|"UPDATE"|"DELETE",
    "body": <the object>, "oldBody": <its previous state on UPDATE, else null>,
    "group", "version", "resource", "metadata"}`` (``metadata`` is ``{}`` when none is
    configured, as on every Triggerfish source; Argo omits the key then).

    Delivery: list, then watch from the list's ``resourceVersion`` (bookmarks on); the
    resume point advances only after a change was published (a refused publish is
    retried with the same id, the watch waits meanwhile). A watch the server ends is
    made again from the resume point; an expired one (410) is replaced by a new list
    compared with the last seen state, so changes made while disconnected arrive once
    each and nothing already sent is sent again. Needs the Kubernetes API
    (:attr:`SourceContext.kube`); without one it fails to start with a clear error.
    """

    type_name: ClassVar[str] = "resource"
    config_model: ClassVar[type[SpecModel]] = ResourceConfig

    def worker(self, event_name: str, cfg: ResourceConfig) -> _Watch:
        return _Watch(self, event_name, cfg)

    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, ResourceConfig]) -> list[str]:
        # Argo's ResourceFilter has no ``expression`` (the broker sources' check); every
        # field is checked by the model when it loads.
        return []
