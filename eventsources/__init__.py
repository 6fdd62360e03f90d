"""Event source plugins: one module per source type, registered in :mod:`eventsources.registry`."""
