"""Run the fake Kubernetes API server: ``python -m tests.fakekube --host 127.0.0.1 --port 0``.

The socket is bound here, before uvicorn starts, so ``--port 0`` works: the chosen port
is printed in the ready line (``fakekube ready http://127.0.0.1:PORT``) once the app has
started, and connections made earlier wait in the listen backlog instead of failing.

``--tls-cert``/``--tls-key`` serve HTTPS (the URL is then ``https://``); ``--client-ca``
also requires a client certificate signed by that CA (the TLS handshake fails without
one); ``--tokens-file`` makes every API request carry ``Authorization: Bearer <t>`` with
``t`` one of the file's lines (re-read per request, so a test can rotate it), else 401.
"""

from __future__ import annotations

import argparse
import socket
import ssl
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
    parser.add_argument("--tls-cert", default="", help="PEM server certificate: serve HTTPS")
    parser.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    parser.add_argument("--client-ca", default="", help="require client certs of this CA")
    parser.add_argument("--tokens-file", default="", help="accepted bearer tokens, one a line")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    url = f"{'https' if args.tls_cert else 'http'}://{host}:{port}"

    app = ConnectionAccess(
        create_app(history_limit=args.history, tokens_file=args.tokens_file or None)
    )

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
        ssl_certfile=args.tls_cert or None,
        ssl_keyfile=args.tls_key or None,
        ssl_ca_certs=args.client_ca or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE,
    )
    Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
