"""The registry of trigger types: one line per type (STYLE §2).

Maps the key under a trigger ``template`` to its class. (Config models alone live in
:mod:`sensors.triggers.registry`, which the spec models import without pulling in the
trigger implementations.)
"""

from __future__ import annotations

from sensors.triggers.argo_workflow import ArgoWorkflowTrigger
from sensors.triggers.base import Trigger
from sensors.triggers.http import HttpTrigger
from sensors.triggers.k8s import K8sTrigger
from sensors.triggers.log import LogTrigger

TRIGGERS: dict[str, type[Trigger]] = {
    "k8s": K8sTrigger,
    "log": LogTrigger,
    "http": HttpTrigger,
    "argoWorkflow": ArgoWorkflowTrigger,
}
