"""Secret lookup for sources and triggers (``authSecret``, cloud credentials).

Standalone runs read Secrets from the manifests they were given (``data`` base64 or
``stringData``) and fall back to the cluster when one is configured. Values never
reach a log line: errors name the secret and key, not the value.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from app.kernel.errors import ConfigError
from app.kernel.logs import register_secret


class ManifestSecrets:
    """Secrets from loaded ``kind: Secret`` manifests, then from the cluster if any."""

    def __init__(self, objects: Iterable[dict[str, Any]], kube: Any = None) -> None:
        self._values: dict[tuple[str, str, str], str] = {}
        self._kube = kube
        for obj in objects:
            if obj.get("kind") != "Secret" or obj.get("apiVersion") != "v1":
                continue
            meta = obj.get("metadata") or {}
            ns, name = meta.get("namespace", "default"), meta.get("name", "")
            for k, v in (obj.get("data") or {}).items():
                self._values[(ns, name, k)] = base64.b64decode(str(v)).decode()
            for k, v in (obj.get("stringData") or {}).items():
                self._values[(ns, name, k)] = str(v)

    async def get(self, namespace: str, name: str, key: str) -> str:
        """The value; it is registered for redaction from every log line."""
        val = self._values.get((namespace, name, key))
        if val is None and self._kube is not None and hasattr(self._kube, "get"):
            obj = await self._kube.get("v1", "Secret", name, namespace)
            if obj is not None:
                if key in (obj.get("data") or {}):
                    val = base64.b64decode(obj["data"][key]).decode()
                elif key in (obj.get("stringData") or {}):
                    val = str(obj["stringData"][key])
        if val is not None:
            register_secret(val)
            return val
        raise ConfigError(f"secret {namespace}/{name} has no key {key!r} (or does not exist)")
