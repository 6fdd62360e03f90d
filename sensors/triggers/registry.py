"""The registry of trigger types: one line per type (STYLE §2).

Maps the key under a trigger's ``template`` to its class (``module:Class``, imported on
first use: :class:`~app.kernel.plugins.PluginRegistry`). The class carries its config
model (``config_model``), which the Sensor model validates the key's value with; the
runner builds the trigger from the same entry. A template key Argo knows but not listed
here fails with ``trigger type '<key>' is not supported``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.kernel.plugins import PluginRegistry

if TYPE_CHECKING:
    from sensors.triggers.base import Trigger

TRIGGERS: PluginRegistry[type[Trigger]] = PluginRegistry(
    "trigger",
    {
        "k8s": "sensors.triggers.k8s:K8sTrigger",
        "log": "sensors.triggers.log:LogTrigger",
        "http": "sensors.triggers.http:HttpTrigger",
        "argoWorkflow": "sensors.triggers.argo_workflow:ArgoWorkflowTrigger",
        "nats": "sensors.triggers.nats:NatsTrigger",
        "azureServiceBus": "sensors.triggers.azure_service_bus:AzureServiceBusTrigger",
        "slack": "sensors.triggers.slack:SlackTrigger",
        "email": "sensors.triggers.email:EmailTrigger",
        "awsLambda": "sensors.triggers.aws_lambda:AwsLambdaTrigger",
        "openWhisk": "sensors.triggers.openwhisk:OpenWhiskTrigger",
        "custom": "sensors.triggers.custom:CustomTrigger",
    },
)
