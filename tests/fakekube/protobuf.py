"""Decode the protobuf request bodies kubectl's typed clients send, for a few kinds.

``kubectl create namespace|configmap|secret|serviceaccount|service|role|rolebinding|...``
POST ``application/vnd.kubernetes.protobuf`` (they accept JSON back, which is what the
fake answers). The body is Kubernetes' envelope: ``k8s\\x00`` then a ``runtime.Unknown``
whose ``raw`` is the object encoded with the kind's generated ``.proto`` schema. The
field numbers below are the ones in ``k8s.io/api`` and ``k8s.io/apimachinery``; kinds
not listed (Deployment's pod template, ...) get a 415 that says to use JSON/apply.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Union

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# A schema maps a field number to (json name, type); a type is a scalar name, a
# nested schema, or a one-element list of either (repeated).
FieldType = Union[str, "Schema", list[Any]]
Schema = dict[int, tuple[str, FieldType]]

OWNER_REFERENCE: Schema = {
    5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"),
    4: ("uid", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool"),
}  # fmt: skip
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
    7: ("generation", "int"), 8: ("creationTimestamp", "time"),
    9: ("deletionTimestamp", "time"), 10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", "map<string,string>"), 12: ("annotations", "map<string,string>"),
    13: ("ownerReferences", [OWNER_REFERENCE]), 14: ("finalizers", ["string"]),
}  # fmt: skip
OBJECT_REFERENCE: Schema = {
    1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"),
    4: ("uid", "string"), 5: ("apiVersion", "string"), 6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}  # fmt: skip
POLICY_RULE: Schema = {
    1: ("verbs", ["string"]), 2: ("apiGroups", ["string"]), 3: ("resources", ["string"]),
    4: ("resourceNames", ["string"]), 5: ("nonResourceURLs", ["string"]),
}  # fmt: skip
SUBJECT: Schema = {
    1: ("kind", "string"), 2: ("apiGroup", "string"), 3: ("name", "string"),
    4: ("namespace", "string"),
}  # fmt: skip
ROLE_REF: Schema = {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")}
SERVICE_PORT: Schema = {
    1: ("name", "string"), 2: ("protocol", "string"), 6: ("appProtocol", "string"),
    3: ("port", "int"), 4: ("targetPort", "intorstr"), 5: ("nodePort", "int"),
}  # fmt: skip
SERVICE_SPEC: Schema = {
    1: ("ports", [SERVICE_PORT]), 2: ("selector", "map<string,string>"),
    3: ("clusterIP", "string"), 18: ("clusterIPs", ["string"]), 4: ("type", "string"),
    5: ("externalIPs", ["string"]), 7: ("sessionAffinity", "string"),
    10: ("externalName", "string"), 17: ("ipFamilyPolicy", "string"),
    19: ("ipFamilies", ["string"]),
}  # fmt: skip
META = {1: ("metadata", OBJECT_META)}

KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {
        **META, 2: ("spec", {1: ("finalizers", ["string"])}),
        3: ("status", {1: ("phase", "string")}),
    },
    ("v1", "ConfigMap"): {
        **META, 2: ("data", "map<string,string>"), 3: ("binaryData", "map<string,bytes>"),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        **META, 2: ("data", "map<string,bytes>"), 3: ("type", "string"),
        4: ("stringData", "map<string,string>"), 5: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        **META, 2: ("secrets", [OBJECT_REFERENCE]),
        3: ("imagePullSecrets", [{1: ("name", "string")}]),
        4: ("automountServiceAccountToken", "bool"),
    },
    ("v1", "Service"): {**META, 2: ("spec", SERVICE_SPEC)},
    ("v1", "Event"): {
        **META, 2: ("involvedObject", OBJECT_REFERENCE), 3: ("reason", "string"),
        4: ("message", "string"),
        5: ("source", {1: ("component", "string"), 2: ("host", "string")}),
        6: ("firstTimestamp", "time"), 7: ("lastTimestamp", "time"), 8: ("count", "int"),
        9: ("type", "string"), 12: ("action", "string"), 14: ("reportingComponent", "string"),
        15: ("reportingInstance", "string"),
    },
    ("rbac.authorization.k8s.io/v1", "Role"): {**META, 2: ("rules", [POLICY_RULE])},
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): {**META, 2: ("rules", [POLICY_RULE])},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): {
        **META, 2: ("subjects", [SUBJECT]), 3: ("roleRef", ROLE_REF),
    },
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): {
        **META, 2: ("subjects", [SUBJECT]), 3: ("roleRef", ROLE_REF),
    },
    ("coordination.k8s.io/v1", "Lease"): {
        **META,
        2: ("spec", {
            1: ("holderIdentity", "string"), 2: ("leaseDurationSeconds", "int"),
            3: ("acquireTime", "microtime"), 4: ("renewTime", "microtime"),
            5: ("leaseTransitions", "int"),
        }),
    },
}  # fmt: skip

UNKNOWN: Schema = {
    1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}),
    2: ("raw", "bytes"),
    3: ("contentEncoding", "string"),
    4: ("contentType", "string"),
}


class ProtobufError(ValueError):
    """Not a Kubernetes protobuf body, or a kind this decoder has no schema for."""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise ProtobufError("truncated varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(data, i)
            out.append((number, data[i : i + size]))
            i += size
        elif wire == 1:
            out.append((number, int.from_bytes(data[i : i + 8], "little")))
            i += 8
        elif wire == 5:
            out.append((number, int.from_bytes(data[i : i + 4], "little")))
            i += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _int(value: int | bytes | None) -> int:
    return value if isinstance(value, int) else 0


def _bytes(value: int | bytes | None) -> bytes:
    return value if isinstance(value, bytes) else b""


def _timestamp(raw: bytes, micro: bool) -> str | None:
    parts = dict(_fields(raw))
    seconds, nanos = _int(parts.get(1)), _int(parts.get(2))
    if not seconds and not nanos:
        return None
    t = datetime.fromtimestamp(seconds, UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _scalar(kind: str, value: int | bytes) -> Any:
    if kind == "string":
        return bytes(value).decode() if isinstance(value, bytes) else None
    if kind == "bytes":
        return bytes(value) if isinstance(value, bytes) else None
    if kind == "int":
        v = int(value) if isinstance(value, int) else 0
        return v - (1 << 64) if v >= 1 << 63 else v
    if kind == "bool":
        return bool(value)
    if kind in ("time", "microtime"):
        return _timestamp(value, kind == "microtime") if isinstance(value, bytes) else None
    if kind == "intorstr" and isinstance(value, bytes):
        parts = dict(_fields(value))
        if _int(parts.get(1)) == 1:
            return _bytes(parts.get(3)).decode()
        return _scalar("int", _int(parts.get(2)))
    if kind.startswith("map<") and isinstance(value, bytes):
        entry = dict(_fields(value))
        val_kind = kind[4:-1].split(",")[1]
        return (
            _bytes(entry.get(1)).decode(),
            _scalar(val_kind, entry.get(2, b"" if val_kind != "int" else 0)),
        )
    raise ProtobufError(f"cannot decode {kind} from {type(value).__name__}")


def decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        name, ftype = schema[number]
        repeated = isinstance(ftype, list)
        inner = ftype[0] if isinstance(ftype, list) else ftype
        if isinstance(inner, dict):
            decoded: Any = decode_message(bytes(value), inner) if isinstance(value, bytes) else {}
        else:
            decoded = _scalar(inner, value)
        if isinstance(inner, str) and inner.startswith("map<"):
            key, val = decoded
            if isinstance(val, bytes):
                val = base64.b64encode(val).decode()
            out.setdefault(name, {})[key] = val
        elif repeated:
            out.setdefault(name, []).append(decoded)
        else:
            out[name] = decoded
    return out


def _prune(value: Any) -> Any:
    """Drop what JSON's ``omitempty`` would: empty strings/maps/lists, zeros, false."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", 0, False, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def decode_object(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded Kubernetes object as the JSON dict the API would have received."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = decode_message(body[len(MAGIC) :], UNKNOWN)
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise ProtobufError(
            f"the fake API server cannot decode protobuf {api_version} {kind}; send JSON "
            "(kubectl apply -f) instead"
        )
    obj = _prune(decode_message(envelope.get("raw") or b"", schema))
    return {"apiVersion": api_version, "kind": kind, **obj}
