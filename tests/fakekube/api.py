"""The resource endpoints: URL routing, verbs, PATCH formats, LIST/WATCH query parameters.

URLs are the real ones: ``/api/v1/...`` and ``/apis/<group>/<version>/...``, then
``namespaces/<ns>/<plural>[/<name>[/status]]`` for namespaced kinds or
``<plural>[/<name>[/status]]`` for cluster-scoped ones and for LIST/WATCH across all
namespaces. The verbs map onto :class:`~tests.fakekube.store.Store`; this module only
parses requests and shapes responses (JSON, ``Table`` for kubectl, watch streams).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.fakekube import errors
from tests.fakekube.patches import (
    MalformedPatch,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.fakekube.protobuf import CONTENT_TYPE as PROTOBUF
from tests.fakekube.protobuf import ProtobufError, decode_object
from tests.fakekube.resources import ResourceRegistry, ResourceType
from tests.fakekube.selectors import (
    Matcher,
    matcher,
    parse_field_selector,
    parse_label_selector,
)
from tests.fakekube.store import Change, Signal, Store, WriteOptions, present
from tests.fakekube.tables import partial_metadata, to_table, wants_partial, wants_table

JSON = dict[str, Any]

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
DEFAULT_WATCH_TIMEOUT_SECONDS = 1800.0


def json_response(body: Any, code: int = 200) -> Response:
    return Response(json.dumps(body), status_code=code, media_type="application/json")


@dataclass(frozen=True)
class Target:
    """What a resource URL addresses; ``namespace`` is ``None`` for all namespaces."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_target(registry: ResourceRegistry, group: str, version: str, parts: list[str]) -> Target:
    if len(parts) >= 3 and parts[0] == "namespaces":
        rt = registry.get(group, version, parts[2])
        if rt is not None and rt.namespaced:
            rest = parts[3:]
            if len(rest) > 2:
                raise errors.path_not_found()
            return _checked(
                Target(rt, parts[1], rest[0] if rest else None, rest[1] if len(rest) > 1 else None)
            )
    if not parts or len(parts) > 3:
        raise errors.path_not_found()
    rt = registry.get(group, version, parts[0])
    if rt is None or (rt.namespaced and len(parts) > 1):
        raise errors.path_not_found()
    name = parts[1] if len(parts) > 1 else None
    sub = parts[2] if len(parts) > 2 else None
    return _checked(Target(rt, None if rt.namespaced else "", name, sub))


def _checked(t: Target) -> Target:
    if t.subresource is not None and not (t.subresource == "status" and t.rt.status):
        raise errors.path_not_found()
    return t


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request) -> Any:
    raw = await request.body()
    ctype = _media_type(request)
    if ctype in ("", "application/json", "*/*"):
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as e:
            raise errors.bad_request(f"error decoding JSON body: {e}") from e
    if ctype in ("application/yaml", "application/x-yaml", APPLY):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML body: {e}") from e
    if ctype == PROTOBUF:
        try:
            return decode_object(raw)
        except ProtobufError as e:
            raise errors.ApiError(415, "UnsupportedMediaType", str(e), {}) from e
    raise errors.unsupported_media_type(ctype, ["application/json", "application/yaml", PROTOBUF])


class ResourceHandler:
    """Dispatches one request on a resource URL to the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(
        self, request: Request, group: str, version: str, parts: list[str]
    ) -> Response:
        t = parse_target(self.store.registry, group, version, parts)
        q = request.query_params
        opts = WriteOptions(
            dry_run="All" in q.getlist("dryRun"),
            field_validation=q.get("fieldValidation") or "Warn",
        )
        return _with_warnings(await self._dispatch(request, t, opts), opts)

    async def _dispatch(self, request: Request, t: Target, opts: WriteOptions) -> Response:
        method = request.method
        if t.name is None:
            if t.subresource is not None:
                raise errors.path_not_found()
            if method == "GET":
                return self._list_or_watch(request, t)
            if method == "POST" and t.namespace is not None:
                body = await _read_body(request)
                return json_response(self.store.create(t.rt, t.namespace, body, opts=opts), 201)
            if method == "DELETE":
                options = await _delete_options(request)
                out = self.store.delete_collection(
                    t.rt, t.namespace, self._matcher(request, t.rt), options, opts=opts
                )
                return json_response(out)
            raise errors.method_not_allowed()
        ns = t.namespace or ""
        if method == "GET":
            obj = self.store.get(t.rt, ns, t.name)
            return self._maybe_table(
                request, t.rt, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}, obj
            )
        if method == "PUT":
            body = await _read_body(request)
            return json_response(
                self.store.update(t.rt, ns, t.name, body, subresource=t.subresource, opts=opts)
            )
        if method == "PATCH":
            return await self._patch(request, t, ns, t.name, opts)
        if method == "DELETE" and t.subresource is None:
            options = await _delete_options(request)
            return json_response(self.store.delete(t.rt, ns, t.name, options, opts=opts))
        raise errors.method_not_allowed()

    # ------------------------------------------------------------ PATCH

    async def _patch(
        self, request: Request, t: Target, ns: str, name: str, opts: WriteOptions
    ) -> Response:
        ctype = _media_type(request)
        raw = await request.body()
        if ctype == APPLY:
            return self._apply(request, t, ns, name, raw, opts)
        if ctype not in (MERGE, JSON_PATCH, STRATEGIC):
            raise errors.unsupported_media_type(ctype, [JSON_PATCH, MERGE, APPLY, STRATEGIC])
        if ctype == STRATEGIC and t.rt.custom:
            raise errors.unsupported_media_type(ctype, [JSON_PATCH, MERGE, APPLY])
        try:
            patch = json.loads(raw)
        except ValueError as e:
            raise errors.bad_request(f"error decoding patch: {e}") from e
        current = self.store.get(t.rt, ns, name)
        try:
            if ctype == MERGE:
                if not isinstance(patch, dict):
                    raise errors.bad_request("a merge patch must be a JSON object")
                patched = merge_patch(current, patch)
            elif ctype == JSON_PATCH:
                patched = json_patch(current, patch)
            else:
                if not isinstance(patch, dict):
                    raise errors.bad_request("a strategic merge patch must be a JSON object")
                patched = strategic_merge_patch(current, patch)
        except MalformedPatch as e:
            raise errors.bad_request(str(e)) from e
        except PatchError as e:
            raise errors.unprocessable(str(e)) from e
        out = self.store.replace_patched(
            t.rt, ns, name, patched, subresource=t.subresource, opts=opts
        )
        return json_response(out)

    def _apply(
        self, request: Request, t: Target, ns: str, name: str, raw: bytes, opts: WriteOptions
    ) -> Response:
        """Server-side apply, simplified: create, or merge the applied fields in.

        Field ownership is not tracked, so fields dropped from the applied configuration
        are not removed, and conflicts between managers are never reported.
        """
        if not request.query_params.get("fieldManager"):
            raise errors.bad_request("PATCH with apply requires a fieldManager")
        try:
            body = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from e
        if not isinstance(body, dict):
            raise errors.bad_request("an apply patch must be an object")
        meta = body.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        meta["name"] = name
        try:
            current = self.store.get(t.rt, ns, name)
        except errors.ApiError as e:
            if e.code != 404 or t.subresource:
                raise
            return json_response(self.store.create(t.rt, ns, body, opts=opts), 201)
        patched = merge_patch(current, body)
        out = self.store.replace_patched(
            t.rt, ns, name, patched, subresource=t.subresource, opts=opts
        )
        return json_response(out)

    # ------------------------------------------------------------ LIST / WATCH

    def _matcher(self, request: Request, rt: ResourceType) -> Matcher:
        q = request.query_params
        return matcher(
            parse_label_selector(q.get("labelSelector")),
            parse_field_selector(q.get("fieldSelector"), rt.field_selectors),
        )

    def _maybe_table(
        self, request: Request, rt: ResourceType, objs: list[JSON], meta: JSON, plain: JSON
    ) -> Response:
        """The plain body, or the ``Table``/``PartialObjectMetadata`` form the client asked for."""
        accept = request.headers.get("accept", "")
        if wants_table(accept):
            include = request.query_params.get("includeObject", "Metadata")
            return json_response(to_table(rt, objs, include, meta))
        if (form := wants_partial(accept)) is not None:
            items = [partial_metadata(o) for o in objs]
            if form == "PartialObjectMetadata" and plain.get("kind") == rt.kind:
                return json_response(items[0])
            return json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                    "items": items,
                }
            )
        return json_response(plain)

    def _list_or_watch(self, request: Request, t: Target) -> Response:
        q = request.query_params
        match = self._matcher(request, t.rt)
        if _flag(q.get("watch")):
            return self._watch(request, t, match)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as e:
            raise errors.bad_request(f"invalid limit: {e}") from e
        listed = self.store.list_objects(
            t.rt, t.namespace, match, limit=limit, continue_token=q.get("continue", "")
        )
        objs = [present(t.rt, o) for o in listed["items"]]
        return self._maybe_table(request, t.rt, objs, listed["metadata"], listed)

    def _watch(self, request: Request, t: Target, match: Matcher) -> Response:
        q = request.query_params
        since = q.get("resourceVersion") or ""
        if since and not since.isdigit():
            raise errors.bad_request(f"invalid resourceVersion {since!r}")
        try:
            timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_SECONDS)
        except ValueError as e:
            raise errors.bad_request(f"invalid timeoutSeconds: {e}") from e
        table = wants_table(request.headers.get("accept", ""))
        include = q.get("includeObject", "Metadata")
        send_initial = _flag(q.get("sendInitialEvents"))
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        store, rt = self.store, t.rt

        def encode(type_: str, obj: JSON) -> bytes:
            out = present(rt, obj)
            if table:
                out = to_table(
                    rt, [out], include, {"resourceVersion": out["metadata"]["resourceVersion"]}
                )
            return (json.dumps({"type": type_, "object": out}) + "\n").encode()

        def translate(c: Change) -> bytes | None:
            """Selector transitions become ADDED/DELETED, like the real watch cache."""
            now_in = match(c.obj)
            if c.type != "MODIFIED" or c.old is None:
                return encode(c.type, c.obj) if now_in else None
            was_in = match(c.old)
            if now_in and was_in:
                return encode("MODIFIED", c.obj)
            if now_in:
                return encode("ADDED", c.obj)
            if was_in:
                gone = dict(c.old, metadata=dict(c.old["metadata"], resourceVersion=str(c.rv)))
                return encode("DELETED", gone)
            return None

        def bookmark(rv: int, initial_end: bool) -> bytes:
            meta: JSON = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            mark = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
            return (json.dumps({"type": "BOOKMARK", "object": mark}) + "\n").encode()

        async def stream() -> AsyncIterator[bytes]:
            deadline = time.monotonic() + timeout
            watcher = store.subscribe(rt, t.namespace)
            try:
                if not since or since == "0" or send_initial:
                    backlog = store.snapshot(rt, t.namespace)
                else:
                    try:
                        backlog = store.changes_since(rt, t.namespace, int(since))
                    except errors.ApiError as e:
                        yield (json.dumps({"type": "ERROR", "object": e.status()}) + "\n").encode()
                        return
                initial_rv = store.resource_version
                for c in backlog:
                    if (line := translate(c)) is not None:
                        yield line
                if send_initial and bookmarks:
                    yield bookmark(initial_rv, initial_end=True)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    try:
                        change = await asyncio.wait_for(watcher.queue.get(), remaining)
                    except TimeoutError:
                        return
                    if change is None:
                        return
                    if isinstance(change, Signal):
                        if change.kind == "expire":
                            gone = errors.expired(int(since or 0), store.compacted_rv + 1)
                            status = {"type": "ERROR", "object": gone.status()}
                            yield (json.dumps(status) + "\n").encode()
                            return
                        if bookmarks:
                            yield bookmark(change.rv, initial_end=False)
                        continue
                    if (line := translate(change)) is not None:
                        yield line
            finally:
                store.unsubscribe(watcher)

        return StreamingResponse(stream(), media_type="application/json")


def _with_warnings(response: Response, opts: WriteOptions) -> Response:
    """Kubernetes sends warnings as ``Warning: 299 - "<text>"`` headers (kubectl prints them)."""
    for text in opts.warnings:
        response.headers.append("Warning", "299 - " + json.dumps(text))
    return response


async def _delete_options(request: Request) -> JSON:
    """DeleteOptions from the body (JSON; a protobuf one is ignored) and the query."""
    body = None if _media_type(request) == PROTOBUF else await _read_body(request)
    options: JSON = dict(body) if isinstance(body, dict) else {}
    q = request.query_params
    if q.get("propagationPolicy"):
        options["propagationPolicy"] = q["propagationPolicy"]
    if q.get("orphanDependents"):
        options["orphanDependents"] = _flag(q["orphanDependents"])
    return options
