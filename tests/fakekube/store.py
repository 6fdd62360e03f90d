"""In-memory object storage with the real server's write rules, history and watchers.

What a client can observe is modelled: a single global ``resourceVersion`` counter,
``uid``/``creationTimestamp``/``generation``, ``generateName`` with Kubernetes' alphabet,
optimistic concurrency (409 Conflict on a stale ``resourceVersion``), the status
subresource split, finalizers (DELETE only marks ``deletionTimestamp`` until the last
finalizer is removed), owner-reference cascading deletion (immediate, no GC delay),
namespace deletion removing its contents, no-op updates not bumping the version, and a
bounded change log that watches resume from (older versions get ``410 Expired``).

Everything runs on the server's event loop, so each method is atomic; watchers get
changes through an ``asyncio.Queue`` filled synchronously by the writer.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakekube import errors
from tests.fakekube.errors import ApiError
from tests.fakekube.resources import ResourceRegistry, ResourceType
from tests.fakekube.schema import apply_schema
from tests.fakekube.selectors import Matcher
from tests.fakekube.validation import meta_causes

JSON = dict[str, Any]
ResKey = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str]  # (namespace or "", name)

NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_SUFFIX = 5
MAX_GENERATED_PREFIX = 63 - GENERATED_SUFFIX
SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
NAMESPACES: ResKey = ("", "namespaces")
CRDS: ResKey = ("apiextensions.k8s.io", "customresourcedefinitions")
SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    """``generateName`` + 5 characters from the alphabet the real server uses."""
    suffix = "".join(secrets.choice(NAME_ALPHABET) for _ in range(GENERATED_SUFFIX))
    return prefix[:MAX_GENERATED_PREFIX] + suffix


def present(rt: ResourceType, obj: JSON) -> JSON:
    """A copy of a stored object as served at ``rt``'s version."""
    out: JSON = {"apiVersion": rt.api_version, "kind": rt.kind}
    out.update((k, copy.deepcopy(v)) for k, v in obj.items() if k not in out)
    return out


@dataclass
class WriteOptions:
    """Per-request write settings, and the warnings the write produced."""

    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore, as the query parameter
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """One entry of the change log: what a watch streams."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: ResKey
    namespace: str
    obj: JSON
    old: JSON | None = None


@dataclass(frozen=True)
class Signal:
    """A watch-level message that is not an object change: ``"bookmark"`` (send a
    BOOKMARK with the current resourceVersion, if the watch allows them) or ``"expire"``
    (end the watch with an ERROR 410 Expired event). ``rv`` is the store's version when
    it was sent: a bookmark must not claim changes still queued behind it."""

    kind: str
    rv: int = 0


@dataclass(eq=False)
class Watcher:
    """A live watch's inbox; ``None`` in the queue means "stream over" (reset, shutdown)."""

    key: ResKey
    namespace: str | None
    queue: asyncio.Queue[Change | Signal | None] = field(default_factory=asyncio.Queue)

    def wants(self, change: Change) -> bool:
        return change.key == self.key and self.namespace in (None, change.namespace)


class Store:
    """All objects of all kinds, the global resourceVersion, the change log and watchers."""

    def __init__(self, registry: ResourceRegistry, history_limit: int = 1000) -> None:
        self.registry = registry
        self.history_limit = history_limit
        self._rv = 0
        self._objects: dict[ResKey, dict[ObjKey, JSON]] = {}
        self._log: deque[Change] = deque()
        self._compacted = 0
        self._watchers: set[Watcher] = set()
        self.reset()

    # ------------------------------------------------------------ admin

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def compacted_rv(self) -> int:
        """Watches from a resourceVersion older than this get 410 Expired."""
        return self._compacted

    def reset(self) -> None:
        """Drop every object, CRD-registered kind, history entry and live watch."""
        self.close_watchers()
        self._objects = {}
        self._log.clear()
        self.registry.reset()
        ns_rt = self._rt(NAMESPACES)
        for ns in SEED_NAMESPACES:
            self.create(ns_rt, "", {"metadata": {"name": ns}})
        self._compacted = self._rv

    def compact(self, keep: int = 0) -> int:
        """Forget all but the newest ``keep`` changes; returns the new compaction point."""
        while len(self._log) > keep:
            self._compacted = self._log.popleft().rv
        if not self._log:
            self._compacted = self._rv
        return self._compacted

    def close_watchers(self) -> None:
        for w in self._watchers:
            w.queue.put_nowait(None)
        self._watchers.clear()

    def expire_watchers(self) -> int:
        """What the real server does to watchers that fell behind its compacted history:
        forget the change log, then end every live watch with an ERROR 410 Expired event
        (a client must list again). Returns the number of watches ended."""
        self.compact(0)
        n = len(self._watchers)
        for w in self._watchers:
            w.queue.put_nowait(Signal("expire"))
        self._watchers.clear()
        return n

    def bookmark_watchers(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to every live watch that allows
        bookmarks (the real server sends them about once a minute); the number signalled."""
        for w in self._watchers:
            w.queue.put_nowait(Signal("bookmark", self._rv))
        return len(self._watchers)

    def stats(self) -> JSON:
        return {
            "resourceVersion": self._rv,
            "compactedResourceVersion": self._compacted,
            "history": len(self._log),
            "watchers": len(self._watchers),
            "objects": {"/".join(filter(None, k)): len(v) for k, v in self._objects.items() if v},
        }

    # ------------------------------------------------------------ reads

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        return present(rt, self._stored(rt, namespace, name))

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        match: Matcher,
        *,
        limit: int = 0,
        continue_token: str = "",
    ) -> JSON:
        """A ``<Kind>List``; ``limit``/``continue`` page through it in name order."""
        bucket = self._objects.get(rt.key, {})
        keys = sorted(k for k in bucket if namespace in (None, k[0]))
        if continue_token:
            start = self._decode_continue(continue_token)
            keys = [k for k in keys if k > start]
        items = [bucket[k] for k in keys if match(bucket[k])]
        meta: JSON = {"resourceVersion": str(self._rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = self._encode_continue((last.get("namespace", ""), last["name"]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        out_items = []
        for o in items:
            item = present(rt, o)
            if not rt.custom:  # built-in lists carry no per-item apiVersion/kind
                item.pop("apiVersion", None)
                item.pop("kind", None)
            out_items.append(item)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": out_items,
        }

    def _encode_continue(self, key: ObjKey) -> str:
        raw = json.dumps({"rv": self._rv, "start": list(key)}).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> ObjKey:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            return (str(data["start"][0]), str(data["start"][1]))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise errors.bad_request(f"continue key is not valid: {e}") from e

    # ------------------------------------------------------------ writes

    def create(
        self, rt: ResourceType, namespace: str, body: Any, *, opts: WriteOptions | None = None
    ) -> JSON:
        opts = opts or WriteOptions()
        namespace = namespace if rt.namespaced else ""
        obj = self._normalise_body(rt, namespace, body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if rt.namespaced:
            self._require_namespace(namespace)
        bucket = self._objects.setdefault(rt.key, {})
        generate = not meta.get("name") and bool(meta.get("generateName"))
        for _ in range(8):  # the real server also retries generated names on collision
            if generate:
                meta["name"] = generate_name(meta["generateName"])
            if causes := meta_causes(rt, obj):
                raise errors.invalid(rt, meta.get("name", ""), causes)
            if (namespace, meta["name"]) not in bucket:
                break
            if not generate:
                raise errors.already_exists(rt, meta["name"])
        else:
            raise errors.already_exists(rt, meta["name"])
        for f in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(f, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.status:
            obj.pop("status", None)
        obj = self._apply_schema(rt, obj, opts)
        meta = obj["metadata"]
        self._prepare_create(rt, obj)
        if opts.dry_run:
            return present(rt, obj)
        meta["resourceVersion"] = str(self._next_rv())
        bucket[(namespace, meta["name"])] = obj
        self._emit("ADDED", rt.key, obj)
        if rt.key == CRDS:
            self.registry.register_crd(obj)
        return present(rt, obj)

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        opts: WriteOptions | None = None,
    ) -> JSON:
        opts = opts or WriteOptions()
        namespace = namespace if rt.namespaced else ""
        current = self._stored(rt, namespace, name)
        new = self._normalise_body(rt, namespace, body)
        meta = new["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        meta["name"] = name
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        return self._replace(rt, current, new, subresource=subresource, opts=opts)

    def replace_patched(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patched: Any,
        *,
        subresource: str | None = None,
        opts: WriteOptions | None = None,
    ) -> JSON:
        """Store the result of a PATCH (computed from ``get``) with update's rules."""
        opts = opts or WriteOptions()
        namespace = namespace if rt.namespaced else ""
        current = self._stored(rt, namespace, name)
        if not isinstance(patched, dict):
            raise errors.unprocessable("the patched object is not a JSON object")
        meta = patched.get("metadata")
        if not isinstance(meta, dict):
            raise errors.unprocessable("the patch removed metadata")
        if meta.get("name") != name:
            raise errors.invalid(rt, name, [("metadata.name", "Invalid value: field is immutable")])
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        new = self._normalise_body(rt, namespace, patched)
        return self._replace(rt, current, new, subresource=subresource, opts=opts)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: JSON | None = None,
        *,
        opts: WriteOptions | None = None,
    ) -> JSON:
        """Delete (or, with finalizers, mark for deletion); returns the response body."""
        opts = opts or WriteOptions()
        options = options or {}
        current = self._stored(rt, namespace, name)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {meta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if rt.key == NAMESPACES and name in PROTECTED_NAMESPACES:
            raise errors.forbidden(rt, name, "this namespace may not be deleted")
        if opts.dry_run:
            return present(rt, current)
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") is True else "Background"
        )
        if meta.get("finalizers"):
            return present(rt, self._mark_deleted(rt, current))
        gone = self._delete_now(rt, current, policy)
        if rt.returns_object:
            return present(rt, gone)
        details: JSON = {"name": name, "kind": rt.plural, "uid": meta["uid"]}
        if rt.group:
            details["group"] = rt.group
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        match: Matcher,
        options: JSON | None = None,
        *,
        opts: WriteOptions | None = None,
    ) -> JSON:
        """Delete every matching object; returns the list of what was deleted (or marked)."""
        opts = opts or WriteOptions()
        listed = self.list_objects(rt, namespace, match)
        if opts.dry_run:
            return listed
        for item in listed["items"]:
            m = item["metadata"]
            if (m.get("namespace", ""), m["name"]) in self._objects.get(rt.key, {}):
                self.delete(rt, m.get("namespace", ""), m["name"], options, opts=opts)
        return listed

    # ------------------------------------------------------------ watch support

    def subscribe(self, rt: ResourceType, namespace: str | None) -> Watcher:
        w = Watcher(rt.key, namespace)
        self._watchers.add(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def changes_since(self, rt: ResourceType, namespace: str | None, since: int) -> list[Change]:
        """Logged changes after ``since``; 410 Expired when history before it is gone."""
        if since < self._compacted:
            raise errors.expired(since, self._compacted + 1)
        probe = Watcher(rt.key, namespace)
        return [c for c in self._log if c.rv > since and probe.wants(c)]

    def snapshot(self, rt: ResourceType, namespace: str | None) -> list[Change]:
        """The current objects as synthetic ADDED changes (watch without a resourceVersion)."""
        bucket = self._objects.get(rt.key, {})
        return [
            Change(int(o["metadata"]["resourceVersion"]), "ADDED", rt.key, k[0], o)
            for k, o in sorted(bucket.items())
            if namespace in (None, k[0])
        ]

    # ------------------------------------------------------------ internals

    def _rt(self, key: ResKey) -> ResourceType:
        return self.registry.by_key(key)[0]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, type_: str, key: ResKey, obj: JSON, old: JSON | None = None) -> None:
        meta = obj["metadata"]
        change = Change(
            int(meta["resourceVersion"]), type_, key, meta.get("namespace", ""), obj, old
        )
        self._log.append(change)
        while len(self._log) > self.history_limit:
            self._compacted = self._log.popleft().rv
        for w in self._watchers:
            if w.wants(change):
                w.queue.put_nowait(change)

    def _stored(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self._objects.get(rt.key, {}).get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def _require_namespace(self, namespace: str) -> None:
        if namespace and ("", namespace) in self._objects.get(NAMESPACES, {}):
            return
        raise errors.namespace_not_found(namespace)

    def _normalise_body(self, rt: ResourceType, namespace: str, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be a JSON object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return obj

    def _prepare_create(self, rt: ResourceType, obj: JSON) -> None:
        """Fields the real server fills in on creation for some kinds."""
        meta = obj["metadata"]
        if rt.key == NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        elif rt.key == CRDS:
            spec = obj.get("spec") or {}
            stamp = now()
            obj["status"] = {
                "acceptedNames": spec.get("names") or {},
                "storedVersions": [
                    v["name"] for v in spec.get("versions") or [] if v.get("storage")
                ],
                "conditions": [
                    {
                        "type": t,
                        "status": "True",
                        "reason": r,
                        "message": m,
                        "lastTransitionTime": stamp,
                    }
                    for t, r, m in (
                        ("NamesAccepted", "NoConflicts", "no conflicts found"),
                        (
                            "Established",
                            "InitialNamesAccepted",
                            "the initial names have been accepted",
                        ),
                    )
                ],
            }

    @staticmethod
    def _apply_schema(rt: ResourceType, obj: JSON, opts: WriteOptions) -> JSON:
        """Prune/default/check a custom resource against its CRD schema, if it has one."""
        if rt.schema is None:
            return obj
        result = apply_schema(rt.schema, obj)
        if result.unknown and opts.field_validation == "Strict":
            fields = ", ".join(f'unknown field "{u}"' for u in result.unknown)
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"strict decoding error: {fields}"
            )
        if opts.field_validation != "Ignore":
            opts.warnings += [f'unknown field "{u}"' for u in result.unknown]
        if result.causes:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), result.causes)
        return result.obj

    @staticmethod
    def _spec_part(obj: JSON) -> JSON:
        return {
            k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")
        }

    def _replace(
        self,
        rt: ResourceType,
        current: JSON,
        new: JSON,
        *,
        subresource: str | None,
        opts: WriteOptions,
    ) -> JSON:
        cur_meta = current["metadata"]
        if subresource == "status":
            candidate = copy.deepcopy(current)
            if "status" in new:
                candidate["status"] = new["status"]
            else:
                candidate.pop("status", None)
        else:
            candidate = new
            meta = candidate["metadata"]
            if meta.get("uid") and meta["uid"] != cur_meta["uid"]:
                raise errors.conflict(
                    rt,
                    cur_meta["name"],
                    f"Precondition failed: UID in precondition: {meta['uid']}, "
                    f"UID in object meta: {cur_meta['uid']}",
                )
            for f in (*SYSTEM_META, "generation"):
                if f in cur_meta:
                    meta[f] = cur_meta[f]
                else:
                    meta.pop(f, None)
            meta.pop("managedFields", None)
            meta.pop("selfLink", None)
            if rt.status:
                if "status" in current:
                    candidate["status"] = copy.deepcopy(current["status"])
                else:
                    candidate.pop("status", None)
            if causes := meta_causes(rt, candidate):
                raise errors.invalid(rt, cur_meta["name"], causes)
            if cur_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or ()) - set(cur_meta.get("finalizers") or ())
                if added:
                    raise errors.forbidden(
                        rt,
                        cur_meta["name"],
                        "no new finalizers can be added if the object is being deleted",
                    )
            if rt.generation and self._spec_part(candidate) != self._spec_part(current):
                meta["generation"] = int(cur_meta.get("generation", 1)) + 1
        candidate = self._apply_schema(rt, candidate, opts)
        candidate["metadata"]["resourceVersion"] = cur_meta["resourceVersion"]
        candidate["apiVersion"], candidate["kind"] = current.get("apiVersion"), current.get("kind")
        if candidate == current:  # no-op writes do not bump resourceVersion or notify
            return present(rt, current)
        if opts.dry_run:
            return present(rt, candidate)
        if cur_meta.get("deletionTimestamp") and not candidate["metadata"].get("finalizers"):
            return present(rt, self._delete_now(rt, candidate, "Background"))
        return present(rt, self._put(rt, candidate, old=current))

    def _put(self, rt: ResourceType, obj: JSON, old: JSON) -> JSON:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._next_rv())
        self._objects.setdefault(rt.key, {})[(meta.get("namespace", ""), meta["name"])] = obj
        self._emit("MODIFIED", rt.key, obj, old)
        if rt.key == CRDS:
            self.registry.register_crd(obj)
        return obj

    def _mark_deleted(self, rt: ResourceType, current: JSON) -> JSON:
        if current["metadata"].get("deletionTimestamp"):
            return current
        obj = copy.deepcopy(current)
        obj["metadata"]["deletionTimestamp"] = now()
        obj["metadata"]["deletionGracePeriodSeconds"] = 0
        if rt.generation:
            obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
        return self._put(rt, obj, old=current)

    def _delete_now(self, rt: ResourceType, obj: JSON, policy: str) -> JSON:
        """Remove ``obj``, emit DELETED, then cascade to its namespace/CRD/owned objects."""
        meta = obj["metadata"]
        bucket = self._objects.get(rt.key, {})
        bucket.pop((meta.get("namespace", ""), meta["name"]), None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit("DELETED", rt.key, gone)
        if rt.key == NAMESPACES:
            self._delete_all(
                (k, o)
                for k, b in list(self._objects.items())
                for o in list(b.values())
                if o["metadata"].get("namespace") == meta["name"]
            )
        if rt.key == CRDS and self.registry.unregister_crd(obj):
            spec = obj.get("spec") or {}
            key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
            for o in list(self._objects.pop(key, {}).values()):
                dead = copy.deepcopy(o)
                dead["metadata"]["resourceVersion"] = str(self._next_rv())
                self._emit("DELETED", key, dead)
        dependents = [
            (k, o)
            for k, b in list(self._objects.items())
            for o in list(b.values())
            if any(r.get("uid") == meta["uid"] for r in o["metadata"].get("ownerReferences") or ())
        ]
        if policy == "Orphan":
            for k, o in dependents:
                orphan = copy.deepcopy(o)
                refs = [
                    r for r in orphan["metadata"]["ownerReferences"] if r.get("uid") != meta["uid"]
                ]
                orphan["metadata"]["ownerReferences"] = refs
                if not refs:
                    del orphan["metadata"]["ownerReferences"]
                self._put(self._rt(k), orphan, old=o)
        else:
            self._delete_all(dependents)
        return gone

    def _delete_all(self, items: Iterable[tuple[ResKey, JSON]]) -> None:
        for key, o in list(items):
            m = o["metadata"]
            still = self._objects.get(key, {}).get((m.get("namespace", ""), m["name"]))
            if still is None or not self.registry.by_key(key):
                continue
            rt = self._rt(key)
            if still["metadata"].get("finalizers"):
                self._mark_deleted(rt, still)
            else:
                self._delete_now(rt, still, "Background")


__all__ = ["ApiError", "Change", "Store", "Watcher", "WriteOptions", "generate_name", "present"]
