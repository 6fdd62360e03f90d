"""The controller's settings, read once from ``TRIGGERFISH_CONTROLLER_*`` variables.

Kept apart from :class:`app.kernel.settings.Settings` because only the controller uses them
(the images it puts into the workloads it creates, how long one watch lasts, the Lease
its replicas elect a leader with).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    """What the controller needs beyond the objects it watches."""

    model_config = SettingsConfigDict(env_prefix="TRIGGERFISH_CONTROLLER_", extra="ignore")

    namespace: str = Field("", description="watch only this namespace; empty = all")
    image: str = Field(
        "ghcr.io/triggerfish/triggerfish:latest",
        description="image of the EventSource and Sensor pods (runs `triggerfish ...`)",
    )
    image_pull_policy: str = Field("IfNotPresent", description="pull policy of that image")
    nats_image: str = Field("nats:2.10-alpine", description="image of the EventBus servers")
    pod_api_port: int = Field(8080, description="health/metrics port inside the pods")
    ui: bool = Field(
        True, description="serve the event-flow page and its API on the controller's API port"
    )
    watch_timeout_seconds: int = Field(
        300, description="server-side length of one watch before it is resumed"
    )
    retry_delay_seconds: float = Field(
        2.0, description="wait before reconciling an object again after a transient error"
    )
    leader_election: bool = Field(
        True, description="elect a leader through a Lease, so only one replica reconciles"
    )
    lease_name: str = Field("triggerfish-controller", description="name of that Lease")
    lease_namespace: str = Field(
        "", description="namespace of the Lease; empty = POD_NAMESPACE or the current one"
    )
    identity: str = Field(
        "", description="this replica's name in the Lease; empty = hostname + random suffix"
    )
    lease_duration_seconds: float = Field(
        15.0, description="a standby takes over after seeing the Lease unrenewed this long"
    )
    renew_deadline_seconds: float = Field(
        10.0, description="the leader stops reconciling when it could not renew for this long"
    )
    retry_period_seconds: float = Field(
        2.0, description="how often the leader renews and a standby tries to acquire"
    )
