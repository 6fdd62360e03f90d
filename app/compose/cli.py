"""The ``triggerfish`` command line.

* ``run -f FILES_OR_DIRS``: standalone mode (every EventSource and Sensor in one
  process, embedded JetStream unless ``--nats-url``).
* ``validate -f FILES_OR_DIRS``: one line per manifest, non-zero exit on any error.
* ``test SENSOR --event FILE``: run a Sensor offline against events, print the trace.
* ``crds``: the EventBus/EventSource/Sensor CRDs with schemas, for ``kubectl apply -f -``.
* ``controller [--namespace NS] [--nats-url URL]``: reconcile EventBus/EventSource/Sensor
  objects; its API port also serves the event-flow page of the cluster.
* ``eventsource NAME`` / ``sensor NAME``: the pod roles (one object, read from the API).
* ``dlq list|show|replay|discard``: dead letters, through a running process's API.
* ``version``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from app import __version__
from app.adapters import tracing
from app.kernel.errors import ConfigError, TriggerfishError
from app.kernel.logs import setup_logging
from app.kernel.settings import Settings, load_settings

log = logging.getLogger("triggerfish")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="triggerfish",
        description="Run Argo Events manifests (EventBus, EventSource, Sensor) on NATS "
        "JetStream. Settings come from TRIGGERFISH_* environment variables.",
    )
    p.add_argument("--version", action="version", version=f"triggerfish {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")

    run = sub.add_parser("run", help="run EventSources and Sensors in one process")
    run.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        help="manifest file or directory (repeatable)",
    )
    run.add_argument(
        "--nats-url",
        default=None,
        help="use this NATS server instead of an embedded one; several comma-separated "
        "URLs (nats://a:4222,nats://b:4222) reach a cluster through whichever answers",
    )
    run.add_argument("--state-dir", default=None, help="embedded bus store and recorded objects")
    run.add_argument("--api-port", type=int, default=None, help="operations API port (0 = off)")
    run.add_argument("--bind-host", default=None, help="address webhook servers listen on")
    run.add_argument(
        "--port-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="serve a manifest's webhook port FROM on port TO (repeatable)",
    )
    run.add_argument(
        "--no-cluster",
        action="store_true",
        help="never use a cluster: record objects under the state dir",
    )

    val = sub.add_parser(
        "validate", help="check manifests without running them (one line per manifest)"
    )
    val.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        help="manifest file or directory (repeatable)",
    )
    val.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (a dependency no given EventSource serves, a shared port) as errors",
    )

    tst = sub.add_parser("test", help="run a Sensor offline against events, print the trace")
    tst.add_argument("sensor", help="Sensor manifest file")
    tst.add_argument(
        "--event",
        action="append",
        default=[],
        required=True,
        metavar="[DEPENDENCY=]FILE",
        help="event JSON: webhook-shaped data, a body, or a CloudEvent (repeatable)",
    )
    tst.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or one JSON document for scripts",
    )

    crds = sub.add_parser(
        "crds", help="print the EventBus/EventSource/Sensor CRDs (YAML for kubectl apply -f -)"
    )
    crds.add_argument(
        "--output-dir", default=None, help="write one file per CRD into this directory instead"
    )

    ctl = sub.add_parser(
        "controller", help="reconcile EventBus, EventSource and Sensor objects in a cluster"
    )
    ctl.add_argument("--namespace", default=None, help="watch only this namespace (default: all)")
    ctl.add_argument(
        "--nats-url",
        default=None,
        help="the event-flow page reads every namespace's bus here "
        "(default: each namespace's EventBus)",
    )

    dlq = sub.add_parser(
        "dlq", help="list, show, replay or discard dead letters (through a running process)"
    )
    dlq.add_argument(
        "--api",
        default="http://127.0.0.1:8080",
        help="the process's operations server (token from TRIGGERFISH_API_TOKEN)",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    dl_list = dlq_sub.add_parser("list", help="dead letters, newest first")
    dl_list.add_argument("--sensor", default=None, help="only this sensor's")
    dl_list.add_argument("--trigger", default=None, help="only this trigger's")
    dl_list.add_argument("--limit", type=int, default=100, help="at most this many")
    for action, text in (
        ("show", "one dead letter: its events, error, attempts, time"),
        ("replay", "run the trigger again for that firing (same idempotency key)"),
        ("discard", "delete the dead letter"),
    ):
        dl = dlq_sub.add_parser(action, help=text)
        dl.add_argument("id", help="BUS:SEQ, as `dlq list` prints it")
        dl.add_argument(
            "--namespace",
            default=None,
            help="its namespace (a controller reading one EventBus per namespace needs it)",
        )

    for role, what in (("eventsource", "EventSource"), ("sensor", "Sensor")):
        rp = sub.add_parser(role, help=f"serve one {what} read from the cluster (pod role)")
        rp.add_argument("name", help=f"the {what}'s name")
        rp.add_argument(
            "--namespace",
            default=None,
            help="default: POD_NAMESPACE, in-cluster namespace, kubeconfig context",
        )
        rp.add_argument(
            "--nats-url",
            default=None,
            help="use this NATS server instead of the EventBus's (local runs)",
        )
        rp.add_argument(
            "--api-port", type=int, default=None, help="health/metrics port (default 8080, 0 = off)"
        )
        if role == "eventsource":
            rp.add_argument("--bind-host", default=None, help="address webhook servers listen on")
            rp.add_argument(
                "--port-map",
                action="append",
                default=[],
                metavar="FROM=TO",
                help="serve a webhook port FROM on port TO (repeatable)",
            )

    sub.add_parser("version", help="print the version")
    return p  # fmt: skip


def _settings_for_run(args: argparse.Namespace) -> Settings:
    s = load_settings()
    if args.nats_url is not None:
        s.bus.nats_url = args.nats_url
    if args.state_dir is not None:
        s.state_dir = Path(args.state_dir)
    if args.api_port is not None:
        s.api_port = args.api_port
    if args.bind_host is not None:
        s.bind_host = args.bind_host
    if args.no_cluster:
        s.kube.disabled = True
    for item in args.port_map:
        src, sep, dst = item.partition("=")
        if not sep or not src.isdigit() or not dst.isdigit():
            raise ConfigError(f"--port-map wants FROM=TO port numbers, got {item!r}")
        s.port_map[int(src)] = int(dst)
    return s


async def _serve(args: argparse.Namespace) -> int:
    from app.adapters.dirlock import DirLock

    settings = _settings_for_run(args)
    # One instance per state directory, held until this process ends (the OS drops it
    # on any death); a second instance stops here, before it touches anything.
    lock = DirLock(settings.state_dir)
    lock.acquire("state directory")
    try:
        return await _run_standalone(args, settings)
    finally:
        lock.release()


async def _run_standalone(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.adapters.httpserver import QuietServer, guarded_protocol
    from app.compose.loading import load_for_run
    from app.compose.runtime import Standalone
    from app.compose.server import build_app

    manifests = load_for_run(args.files)
    rt = Standalone(manifests, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api_task: asyncio.Task[None] | None = None
    if settings.api_port:
        cfg = uvicorn.Config(
            build_app(rt), host=settings.api_host, port=settings.api_port,
            log_level="warning", access_log=False, lifespan="off",
            http=guarded_protocol(settings.http),
            timeout_keep_alive=settings.http.keep_alive_timeout_seconds,
        )  # fmt: skip
        server = QuietServer(cfg)
        api_task = asyncio.create_task(server.serve())
        log.info("operations API on http://%s:%d", settings.api_host, settings.api_port)
    try:
        await rt.run(stop)
    finally:
        if api_task is not None:
            api_task.cancel()
            with contextlib.suppress(BaseException):
                await api_task
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _controller(args: argparse.Namespace) -> int:
    from app.adapters.kube import ApiKube, current_namespace
    from app.compose.clusterflow import ClusterFlow
    from app.compose.controller import ControllerSettings
    from app.compose.controller.loop import lease_identity, run_controller

    cfg = ControllerSettings()
    if args.namespace is not None:
        cfg.namespace = args.namespace
    settings = load_settings()
    kube = ApiKube.from_settings(settings.kube)
    if kube is None:
        raise ConfigError("the controller needs a Kubernetes API (kubeconfig or in-cluster)")
    if not cfg.lease_namespace:
        cfg.lease_namespace = cfg.namespace or current_namespace(settings.kube)
    identity = lease_identity(cfg)
    # the replica's name in every request: the API server's audit log tells them apart
    kube.set_user_agent(f"triggerfish/{__version__} controller/{identity}")
    if getattr(args, "nats_url", None):
        settings.bus.nats_url = args.nats_url
    flow = ClusterFlow(kube, settings, cfg.namespace) if settings.api_port and cfg.ui else None
    token = settings.api_token.get_secret_value().encode()
    try:
        await run_controller(kube, cfg, _stop_on_signals(), settings.api_host, settings.api_port,
                             identity, flow, token)  # fmt: skip
    finally:
        if flow is not None:
            await flow.close()
        await kube.close()
    return 0


async def _pod_role(args: argparse.Namespace) -> int:
    from app.compose.podrole import run_role

    s = load_settings()
    if args.api_port is not None:
        s.api_port = args.api_port
    if getattr(args, "bind_host", None) is not None:
        s.bind_host = args.bind_host
    for item in getattr(args, "port_map", []):
        src, sep, dst = item.partition("=")
        if not sep or not src.isdigit() or not dst.isdigit():
            raise ConfigError(f"--port-map wants FROM=TO port numbers, got {item!r}")
        s.port_map[int(src)] = int(dst)
    await run_role(args.cmd, args.name, s, args.namespace or "", args.nats_url or "",
                   _stop_on_signals())  # fmt: skip
    return 0


def _loop_factory() -> Any:
    """uvloop when installed (about 10% more webhook throughput), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _fail(message: str) -> None:
    """One line on stderr, as ``validate`` reports a problem: no timestamp, no traceback."""
    sys.stderr.write(f"triggerfish: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    try:
        settings = load_settings()
    except ConfigError as e:
        _fail(f"bad setting: {e}")
        return 2
    quiet = args.cmd in ("test", "validate") and "TRIGGERFISH_LOG_LEVEL" not in os.environ
    setup_logging("WARNING" if quiet else settings.log_level, settings.log_format)
    if args.cmd in ("run", "eventsource", "sensor", "controller") and tracing.configure(
        f"triggerfish-{args.cmd}"
    ):
        log.info("OpenTelemetry: exporting spans over OTLP")
    try:
        return _dispatch(args)
    except ConfigError as e:
        _fail(str(e))
        return 2
    except OSError as e:  # a path the user gave: unwritable, missing, a file not a dir
        where = f": {e.filename}" if e.filename else ""
        _fail(f"{e.strerror or e}{where}")
        return 2
    except TriggerfishError as e:
        _fail(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        tracing.shutdown()


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args.cmd``; user mistakes raise ConfigError or OSError."""
    if args.cmd == "version":
        print(__version__)
        return 0
    if args.cmd == "validate":
        from app.compose.validate import validate_paths

        return validate_paths(args.files, sys.stdout, strict=args.strict)
    if args.cmd == "crds":
        from app.compose.crds import render_all, write_crd_files

        if args.output_dir is not None:
            for path in write_crd_files(Path(args.output_dir)):
                print(path)
        else:
            sys.stdout.write(render_all())
        return 0
    if args.cmd == "dlq":
        from app.compose.dlqcli import run_dlq

        return run_dlq(
            args.dlq_action,
            args.api,
            os.environ.get("TRIGGERFISH_API_TOKEN", ""),
            sys.stdout,
            dl_id=getattr(args, "id", None),
            sensor=getattr(args, "sensor", None),
            trigger=getattr(args, "trigger", None),
            limit=getattr(args, "limit", 100),
            namespace=getattr(args, "namespace", None),
        )
    if args.cmd == "test":
        from app.compose.offline import run_offline_sync

        return run_offline_sync(args.sensor, args.event, sys.stdout, args.output)
    if args.cmd == "controller":
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_controller(args))
    if args.cmd in ("eventsource", "sensor"):
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_pod_role(args))
    if args.cmd == "run":
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
