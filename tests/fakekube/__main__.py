"""Run the fake Kubernetes API server: ``python -m tests.fakekube --host 127.0.0.1 --port 0``.

The socket is bound here, before uvicorn starts, so ``--port 0`` works: the chosen port
is printed in the ready line (``fakekube ready http://127.0.0.1:PORT``) once the app has
started, and connections made earlier wait in the listen backlog instead of failing.
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn

from tests.fakekube.faults import ConnectionAccess
from tests.fakekube.process import READY_PREFIX
from tests.fakekube.server import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakekube", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--history", type=int, default=1000, help="changes kept for watches")
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"

    app = ConnectionAccess(create_app(history_limit=args.history))

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(READY_PREFIX + url, flush=True)

    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=1,
        log_level="info",
    )
    Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
