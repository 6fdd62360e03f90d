"""Triggerfish process layer: CLI, settings, bus and Kubernetes adapters, servers, runtime.

Everything that talks to the outside world (NATS, Kubernetes, sockets, signals) lives
here; ``eventsources`` and ``sensors`` hold the domain logic that this layer drives.
"""

__version__ = "0.1.0"
