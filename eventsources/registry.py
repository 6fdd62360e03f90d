"""The registry of event source types: one line per type (STYLE §2).

``REGISTRY`` maps the key under an EventSource's ``spec`` to its plugin class
(``module:Class``, imported on first use: :class:`~app.kernel.plugins.PluginRegistry`),
so validating a webhook-only manifest never imports a cloud SDK. ``ARGO_SOURCE_TYPES``
lists every source key Argo Events knows, so a manifest using one we do not support yet
fails with a clear line instead of "unknown field".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.kernel.plugins import PluginRegistry

if TYPE_CHECKING:
    from eventsources.base import EventSourcePlugin

REGISTRY: PluginRegistry[type[EventSourcePlugin[Any]]] = PluginRegistry(
    "event source",
    {
        "webhook": "eventsources.webhook:WebhookSource",
        "sqs": "eventsources.sqs:SQSSource",
        "azureServiceBus": "eventsources.azure_service_bus:AzureServiceBusSource",
        "nats": "eventsources.nats:NATSSource",
        "redis": "eventsources.redis:RedisSource",
        "mqtt": "eventsources.mqtt:MQTTSource",
        "amqp": "eventsources.amqp:AMQPSource",
        "azureQueueStorage": "eventsources.azure_queue_storage:AzureQueueStorageSource",
        "redisStream": "eventsources.redis_stream:RedisStreamSource",
        "resource": "eventsources.resource:ResourceSource",
        "calendar": "eventsources.calendar:CalendarSource",
        "file": "eventsources.file:FileSource",
        "slack": "eventsources.slack:SlackSource",
        "stripe": "eventsources.stripe:StripeSource",
        "sns": "eventsources.sns:SNSSource",
        "github": "eventsources.github:GithubSource",
        "gitlab": "eventsources.gitlab:GitlabSource",
        "bitbucket": "eventsources.bitbucket:BitbucketSource",
        "bitbucketserver": "eventsources.bitbucketserver:BitbucketServerSource",
    },
)

ARGO_SOURCE_TYPES: frozenset[str] = frozenset(
    {
        "amqp", "azureEventsHub", "azureQueueStorage", "azureServiceBus", "bitbucket",
        "bitbucketserver", "calendar", "emitter", "file", "generic", "gerrit", "github",
        "gitlab", "hdfs", "kafka", "minio", "mqtt", "nats", "nsq", "pubSub", "pulsar",
        "redis", "redisStream", "resource", "sftp", "slack", "sns", "sqs", "storageGrid",
        "stripe", "webhook",
    }
)  # fmt: skip
