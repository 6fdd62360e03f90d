"""``policy.k8s``: wait until the object a trigger created carries the given labels.

Argo's ``K8SResourcePolicy`` {labels, backoff, errorOnBackoffTimeout}: after a k8s (or
argoWorkflow) trigger applied its object, the object is read back with the policy's
backoff (Argo's defaults: 5 steps of 1s) until every label in ``labels`` has the given
value. When the labels never appear, the trigger fails (PermanentError: the object
exists, so redoing the action would not help) if ``errorOnBackoffTimeout`` is set, and
succeeds with a note in the result otherwise.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from app.kernel.errors import PermanentError
from sensors.triggers.base import KubeApi


async def wait_for_labels(
    kube: KubeApi, ref: dict[str, Any], api_version: str, policy: Any
) -> dict[str, Any]:
    """Apply ``policy`` (a K8SResourcePolicy) to the object ``ref`` names; returns a
    detail dict for the trace (``{"policy": "labels matched" | "timed out"}``)."""
    want: dict[str, str] = dict(policy.labels or {})
    backoff = policy.backoff
    steps = backoff.steps_value if backoff is not None else 5
    delay = backoff.duration_seconds if backoff is not None else 1.0
    factor = backoff.factor_value if backoff is not None else 1.0
    jitter = backoff.jitter_value if backoff is not None else 1.0
    for attempt in range(steps):
        live = await kube.get(api_version, ref["kind"], ref["name"], ref["namespace"])
        labels = ((live or {}).get("metadata") or {}).get("labels") or {}
        if all(labels.get(k) == v for k, v in want.items()):
            return {"policy": "labels matched", "policyAttempts": attempt + 1}
        if attempt + 1 < steps:
            await asyncio.sleep(delay + delay * jitter * random.random())
            delay *= factor
    if policy.error_on_backoff_timeout:
        raise PermanentError(
            f"policy.k8s: {ref['kind']} {ref['namespace']}/{ref['name']} did not get labels "
            f"{want} after {steps} checks"
        )
    return {"policy": "timed out", "policyAttempts": steps}
