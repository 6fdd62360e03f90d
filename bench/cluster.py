"""bench/cluster: the clustered-JetStream drill at full size (10,000 events).

Starts the fake Kubernetes API (tests/fakekube) and a three-node ``nats-server``
cluster on loopback (tests/support/natscluster.py), then runs the drill of
``tests/support/clusterdrill.py``: ``triggerfish run --nats-url a,b,c`` on the seed
manifests (R3 stream); a burst of ``--events`` webhook posts during which the node
holding Triggerfish's connection, made leader of the stream and its consumer first, is
SIGKILLed and later restarted; then a rolling restart of all three nodes
under ``--rolling-rate`` posts per second. Prints events accepted, objects, lost,
duplicated, 503 retries, Triggerfish's PID before/after, the log lines it wrote
during the rolling restart (per-event lines excluded) and how long each phase took.
``tests/test_cluster.py`` runs the same drill with 2,000 events and asserts on it.

    python -m bench.cluster [--events 10000] [--rolling-events 5000] [--rolling-rate 150]

Exit status 1 if anything was lost or duplicated. Traffic goes only to 127.0.0.1;
every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.fakekube.harness import KubeApi
from tests.fakekube.process import FakeKubeServer
from tests.support.clusterdrill import run_drill
from tests.support.natscluster import NatsCluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--rolling-events", type=int, default=5_000, help="at most, while rolling")
    ap.add_argument("--rolling-rate", type=float, default=150.0, help="posts/s while rolling")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--show-log", action="store_true", help="print the rolling-restart log")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-cluster-"))
    server = FakeKubeServer(log_dir=work / "kube")
    server.start()
    kube = KubeApi(server, work / "kubeapi")
    cluster = NatsCluster(work / "nats")
    try:
        cluster.start()
        r = run_drill(
            work, kube, cluster, events=args.events, rolling_events=args.rolling_events,
            rolling_rate_per_second=args.rolling_rate, concurrency=args.concurrency,
        )  # fmt: skip
    finally:
        cluster.stop()
        kube.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench/cluster: 3 nodes, stream replicas {r.replicas}, "
          f"burst {args.events} events ({r.killed} SIGKILLed mid-burst, restarted; it held "
          f"Triggerfish's connection and led stream and consumer: {r.killed_led_everything}), "
          f"then a rolling restart at {args.rolling_rate:.0f} posts/s")  # fmt: skip
    print(f"  accepted (200)        {len(r.accepted)}  (gave up: {len(r.gave_up)})")
    print(f"  objects               {sum(r.counts.values())}")
    print(f"  lost / duplicated     {len(r.lost)} / {len(r.duplicated)}")
    print(f"  503 retries           {r.retries_503}  (connection errors {r.retries_error})")
    print(f"  triggerfish pid       {r.pid_before} -> {r.pid_after}, ready {r.ready_after}")
    print(f"  log lines, kill phase {len(r.kill_log_lines)} (per-event lines excluded)")
    print(f"  log lines, rolling    {len(r.rolling_log_lines)} (per-event lines excluded)")
    for phase, seconds in r.phase_seconds.items():
        print(f"  {phase:<22}{seconds:7.1f}s")
    if args.show_log:
        print("\n".join(["-- kill phase", *r.kill_log_lines, "-- rolling restart",
                         *r.rolling_log_lines]))  # fmt: skip
    ok = not r.lost and not r.duplicated and not r.gave_up and r.pid_before == r.pid_after
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
