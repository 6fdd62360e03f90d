"""Trigger plugins: one module per trigger type, registered in :mod:`sensors.triggers.registry`."""
