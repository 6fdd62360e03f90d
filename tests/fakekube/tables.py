"""Alternative response forms: ``Table`` for ``kubectl get``, ``PartialObjectMetadata``.

kubectl asks for ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` and prints
whatever columns come back; metadata-only clients (client-go's ``metadata`` package)
ask for ``as=PartialObjectMetadata[List]``. The fake prints ``Name`` and ``Age`` (plus a CRD's
``additionalPrinterColumns`` with simple ``.a.b`` JSON paths), which is what kubectl
shows for custom resources on a real cluster without printer columns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.fakekube.resources import ResourceType

JSON = dict[str, Any]


def wants_table(accept: str) -> bool:
    return any("as=Table" in r and "g=meta.k8s.io" in r for r in accept.replace(" ", "").split(","))


def wants_partial(accept: str) -> str | None:
    """``PartialObjectMetadata[List]`` when a metadata-only client asks for it."""
    for r in accept.replace(" ", "").split(","):
        if "g=meta.k8s.io" in r and "as=PartialObjectMetadata" in r:
            return "PartialObjectMetadataList" if "List" in r else "PartialObjectMetadata"
    return None


def partial_metadata(obj: JSON) -> JSON:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def human_age(timestamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes' short human duration (``45s``, ``12m``, ``5h``, ``3d``)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def _json_path(obj: JSON, path: str) -> Any:
    cur: Any = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _row_object(rt: ResourceType, obj: JSON, include: str) -> JSON | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return partial_metadata(obj)


def to_table(rt: ResourceType, objects: list[JSON], include: str, list_meta: JSON) -> JSON:
    """A ``Table`` of ``objects`` (already presented at ``rt``'s version)."""
    extra = [c for c in rt.printer_columns if c.get("jsonPath") and c.get("name") != "Age"]
    columns = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    ]
    columns += [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": int(c.get("priority", 0)),
        }
        for c in extra
    ]
    columns.append(
        {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
    )
    rows = []
    for obj in objects:
        meta = obj.get("metadata", {})
        cells: list[Any] = [meta.get("name", "")]
        cells += [_json_path(obj, c["jsonPath"]) for c in extra]
        cells.append(human_age(meta.get("creationTimestamp")))
        row: JSON = {"cells": cells}
        row_obj = _row_object(rt, obj, include)
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
