"""Run the FAKE Service Bus broker: ``python -m tests.fakeservicebus --port N``.

Prints ``fakeservicebus ready on HOST:PORT`` once it listens; stop it with SIGTERM.
The SDK reaches it with
``Endpoint=sb://HOST:PORT;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from types import FrameType

from proton.reactor import Container

from tests.fakeservicebus.broker import FakeServiceBus
from tests.fakeservicebus.store import Namespace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fakeservicebus", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue", action="append", default=[], help="declare a queue (repeatable)")
    p.add_argument(
        "--subscription",
        action="append",
        default=[],
        metavar="TOPIC/SUB",
        help="declare a topic subscription (repeatable; declares the topic too)",
    )
    p.add_argument(
        "--no-auto-create",
        action="store_true",
        help="unknown queues are not found (by default they are created on first use)",
    )
    p.add_argument("--lock-duration-seconds", type=float, default=60.0)
    p.add_argument("--max-delivery-count", type=int, default=10)
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("fakeservicebus").setLevel(args.log_level)
    # proton logs every peer that hangs up without closing as an error; clients do that.
    logging.getLogger("proton").setLevel(logging.CRITICAL)
    namespace = Namespace(
        lock_duration_seconds=args.lock_duration_seconds,
        max_delivery_count=args.max_delivery_count,
        auto_create_queues=not args.no_auto_create,
        clock=time.time,
    )
    for q in args.queue:
        namespace.add_queue(q)
    for spec in args.subscription:
        topic, sep, sub = spec.partition("/")
        if not sep or not topic or not sub:
            print(f"--subscription wants TOPIC/SUB, got {spec!r}", file=sys.stderr)
            return 2
        namespace.add_subscription(topic, sub)

    container = Container(FakeServiceBus(namespace, args.host, args.port))

    def stop(signum: int, frame: FrameType | None) -> None:
        container.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    container.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
