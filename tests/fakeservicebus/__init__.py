"""A FAKE Azure Service Bus broker for tests (see ``broker.py`` for what it answers).

Run as a subprocess (``python -m tests.fakeservicebus``) by the fixtures in
``tests/servicebus_fixtures.py``; the real ``azure-servicebus`` SDK talks to it over
plain AMQP 1.0 on a loopback port.
"""
