"""The registry of trigger types: one line per type (STYLE §2).

``TRIGGER_CONFIGS`` maps the key under a trigger's ``template`` to the config model of
that type; the Sensor model validates the key's value with it. A template key Argo knows
but not listed here fails with ``trigger type '<key>' is not supported``
(``ARGO_TRIGGER_TYPES`` is derived from the Sensor model, which declares every Argo key).
"""

from __future__ import annotations

from app.kernel.spec import SpecModel
from sensors.spec import ARGO_TRIGGER_TYPES
from sensors.triggers.argo_workflow_config import ArgoWorkflowTriggerConfig
from sensors.triggers.http_config import HttpTriggerConfig
from sensors.triggers.k8s_config import K8sTriggerConfig
from sensors.triggers.log_config import LogTriggerConfig

TRIGGER_CONFIGS: dict[str, type[SpecModel]] = {
    "k8s": K8sTriggerConfig,
    "log": LogTriggerConfig,
    "http": HttpTriggerConfig,
    "argoWorkflow": ArgoWorkflowTriggerConfig,
}

__all__ = ["ARGO_TRIGGER_TYPES", "TRIGGER_CONFIGS"]
