"""Kubeconfig files pointing at a fake API server (plain HTTP, a dummy bearer token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONTEXT = "fakekube"
DUMMY_TOKEN = "fakekube-token"


def kubeconfig(
    server_url: str, namespace: str = "default", token: str = DUMMY_TOKEN
) -> dict[str, Any]:
    """A one-cluster, one-user, one-context kubeconfig as a dict."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": server_url}}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(
    path: Path, server_url: str, namespace: str = "default", token: str = DUMMY_TOKEN
) -> Path:
    """Write :func:`kubeconfig` as YAML to ``path`` (mode 0600, as kubectl expects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(server_url, namespace, token), sort_keys=False))
    path.chmod(0o600)
    return path
