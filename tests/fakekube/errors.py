"""Kubernetes ``Status`` errors, shaped like the real server's so clients parse them the same.

Storage and routing raise :class:`ApiError`; the HTTP layer turns it into a ``Status``
body with the same code, reason, message and details a kube-apiserver would send
(``kubernetes.client.ApiException.status``/``.reason``, kubectl's ``Error from server
(NotFound): ...``).
"""

from __future__ import annotations

from typing import Any

from tests.fakekube.resources import ResourceType

JSON = dict[str, Any]


class ApiError(Exception):
    """A failed request; ``status()`` is the body to send."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str, kind: str | None = None) -> JSON:
    d: JSON = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = kind or rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
    )


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name)
    )


def conflict(rt: ResourceType, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        _details(rt, name),
    )


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are ``(field, message)`` pairs like the real validation errors."""
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    reason_of = {"Required": "FieldValueRequired", "Invalid": "FieldValueInvalid"}
    details = _details(rt, name, kind=rt.kind)
    details["causes"] = [
        {
            "reason": reason_of.get(m.split(" value", 1)[0], "FieldValueInvalid"),
            "message": m,
            "field": f,
        }
        for f, m in causes
    ]
    message = (
        f'{rt.kind}.{rt.group} "{name}" is invalid: {text}'
        if rt.group
        else (f'{rt.kind} "{name}" is invalid: {text}')
    )
    return ApiError(422, "Invalid", message, details)


def unprocessable(message: str) -> ApiError:
    """422 without field causes (a JSON patch that does not apply, ...)."""
    return ApiError(422, "Invalid", message, {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}', _details(rt, name)
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type}) - accepted media "
        f"types include: {', '.join(accepted)}",
        {},
    )


def expired(since: int, oldest: int) -> ApiError:
    """The watch ``410 Gone``: history before ``oldest`` was compacted away."""
    return ApiError(410, "Expired", f"too old resource version: {since} ({oldest})")
