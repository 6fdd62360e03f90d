"""Adapters: the outside world behind our own interfaces.

The bus (the only importer of ``nats``), Kubernetes (the only importer of
``kubernetes``), the embedded nats-server, secrets, metrics and the quiet HTTP server.
Library errors are wrapped here into the kernel's error hierarchy. Imports only the
kernel.
"""
