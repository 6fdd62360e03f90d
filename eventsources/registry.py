"""The registry of event source types: one line per type (STYLE §2).

``REGISTRY`` maps the key under an EventSource's ``spec`` to its plugin class.
``ARGO_SOURCE_TYPES`` lists every source key Argo Events knows, so a manifest using one
we do not support yet fails with a clear line instead of "unknown field".
"""

from __future__ import annotations

from eventsources.azure_service_bus import AzureServiceBusSource
from eventsources.base import EventSourcePlugin
from eventsources.sqs import SQSSource
from eventsources.webhook import WebhookSource

REGISTRY: dict[str, type[EventSourcePlugin]] = {  # type: ignore[type-arg]
    "webhook": WebhookSource,
    "sqs": SQSSource,
    "azureServiceBus": AzureServiceBusSource,
}

ARGO_SOURCE_TYPES: frozenset[str] = frozenset(
    {
        "amqp", "azureEventsHub", "azureQueueStorage", "azureServiceBus", "bitbucket",
        "bitbucketserver", "calendar", "emitter", "file", "generic", "gerrit", "github",
        "gitlab", "hdfs", "kafka", "minio", "mqtt", "nats", "nsq", "pubSub", "pulsar",
        "redis", "redisStream", "resource", "sftp", "slack", "sns", "sqs", "storageGrid",
        "stripe", "webhook",
    }
)  # fmt: skip
