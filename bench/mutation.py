"""Mutation testing of the modules that carry Triggerfish's promises (mutmut 3).

A passing suite says the code does what the tests check; a mutation run says whether
the tests would notice if it did not. mutmut changes one thing at a time (``>`` into
``>=``, ``and`` into ``or``, a constant, a dropped call), runs the tests that reach the
changed function, and counts the mutants no test failed on: each is a gap in the tests
or a change that cannot be observed (an *equivalent* mutant).

Each module is mapped to the test files that guard it, so a run costs minutes, not the
whole suite per mutant. For the queue sources only the functions on the ack path are
mutated. Usage::

    python -m bench.mutation --list
    python -m bench.mutation --module sensors/conditions.py [--module ...] [--max-children 2]
    python -m bench.mutation --all

Every module runs in its own scratch copy under ``.mutation/<module>/`` (mutmut works
on a copy of the sources in the current directory and keeps its results there); a
second run reuses them only while the module, the tests and the settings are unchanged.
The table printed at the end counts, per module: mutants, killed, survived,
equivalent (survivors listed with their reason in ``bench/mutation-equivalents.json``;
see ``docs/mutation.md``), and the score killed / (mutants - equivalent). Survivors
not listed as equivalent are printed with their diff; the exit status is 1 when there
is any.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS_FILE = ROOT / "bench" / "mutation-equivalents.json"
COPIED = ("app", "eventsources", "sensors", "tests")


@dataclass(frozen=True)
class Target:
    """One module to mutate, the tests that guard it, and optionally which functions."""

    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    """mutmut mutant-name globs (``x_func`` / ``xǁClassǁmethod``); empty = all."""


def _methods(cls: str, *names: str) -> tuple[str, ...]:
    return tuple(f"x\u01c1{cls}\u01c1{n}" for n in names)


TARGETS: dict[str, Target] = {
    t.module: t
    for t in (
        Target("sensors/conditions.py", ("tests/test_conditions.py",)),
        Target("sensors/parameters.py", ("tests/test_parameters.py",)),
        Target(
            "eventsources/webhook_http.py",
            (
                "tests/test_webhook.py",
                "tests/test_source_filters.py::test_webhook_publishes_what_passes_and_marks_what_is_filtered",
                "tests/test_source_filters.py::test_webhook_filter_sees_the_argo_shaped_data",
            ),
        ),
        Target(
            "sensors/runner.py",
            (
                "tests/test_runner.py",
                "tests/test_runner_delivery.py",
                "tests/test_conditions_reset.py",
            ),
            # the delivery path: filters → triggers with retries → dead letter → ack/nak
            (
                *_methods(
                    "SensorRunner",
                    "handle",
                    "_accumulate",
                    "_fire_pending",
                    "_fire_all",
                    "_fire_one",
                    "_dead_letter",
                    "reset_conditions",
                ),
                *_methods("RetryPolicy", "delays"),
                "x__retry_delay",
                "x_firing_key",
                "x__event_time",
            ),
        ),
        Target("sensors/filters.py", ("tests/test_filters.py", "tests/test_source_filters.py")),
        Target(
            "sensors/triggers/k8s.py",
            (
                "tests/test_trigger_k8s.py",
                "tests/test_trigger_sources.py",
                "tests/test_runner.py::test_k8s_policy_waits_for_labels",
                "tests/test_runner.py::test_k8s_policy_succeeds_when_labels_match",
                "tests/test_runner.py::test_redelivered_event_does_not_create_twice",
            ),
        ),
        Target(
            "sensors/triggers/argo_workflow.py",
            ("tests/test_trigger_argo_workflow.py",),
            # the idempotent submit: one Workflow per firing, a name clash is permanent
            # (1,223 mutants for the whole module: ~25 min on two cores)
            (
                *_methods("ArgoWorkflowTrigger", "execute", "_check", "_prepare", "_create"),
                "x__ref",
            ),
        ),
        Target(
            "app/adapters/bus.py",
            (
                "tests/test_bus.py",
                "tests/test_stream_full.py::test_full_stream_refuses_new_events_and_keeps_the_old",
                "tests/test_stream_full.py::test_discard_old_when_the_eventbus_asks_and_switching_an_existing_stream",
                "tests/test_stream_full.py::test_interest_retention_frees_consumed_events",
            ),
            # the publish/consume promise: a publish returns only once stored (PubAck,
            # dedup id, retried within its budget, a full stream refused at once), the
            # stream and the durable consumer as configured, every delivery reaching the
            # handler with its ack verbs; connection handling, state, traces and
            # request/reply are left out (see docs/mutation.md, footnote 5)
            (
                *_methods("BusMessage", "__init__", "ack", "nak", "in_progress", "term"),
                *_methods(
                    "Bus",
                    "ensure_stream",
                    "publish",
                    "publish_raw",
                    "consume",
                    "_ensure_consumer",
                    "_pull",
                    "_run_one",
                    "_decode",
                ),
                "x__is_stream_full",
            ),
        ),
        Target(
            "app/adapters/pull.py",
            ("tests/test_pull.py", "tests/test_bus.py"),
        ),
        Target(
            "eventsources/sqs.py",
            # the tests that drive messages through the ack path (every test of the file
            # but the credential and late-queue tests, which reach it only to repeat the
            # happy path, and the configuration tests, which never reach it)
            tuple(
                f"tests/test_sqs.py::test_{t}"
                for t in (
                    "message_becomes_event_then_is_deleted",
                    "bus_down_deletes_nothing_then_every_message_is_one_event",
                    "full_stream_leaves_messages_in_the_queue_until_there_is_room",
                    "publish_slower_than_visibility_timeout_is_one_event",
                    "lost_puback_redelivery_is_deduplicated",
                    "invalid_json_with_dlq_is_redriven_and_the_rest_flows",
                    "invalid_json_without_dlq_is_deleted_and_counted",
                    "fifo_queue_keeps_order",
                    "stopping_during_a_long_poll_does_not_hide_messages",
                    "stopping_mid_batch_deletes_what_was_published_and_gives_back_the_rest",
                    "entries_sqs_refuses_on_shutdown_are_logged_by_message_id",
                    "delete_sqs_fails_once_is_tried_again",
                    "delete_failing_every_time_gives_up_after_three_attempts",
                    "stopping_while_sqs_holds_the_poll_past_its_wait_does_not_hang",
                    "stop_hands_back_every_message_of_the_last_poll_by_its_own_entry",
                    "only_messages_still_being_published_have_their_visibility_extended",
                    "fifo_failure_leaves_the_rest_of_the_batch_so_nothing_overtakes",
                    "stop_waits_for_the_deletes_still_running",
                )
            ),
            _methods(
                "_QueueConsumer",
                "_process_batch",
                "_handle",
                "_delete",
                "_change_visibility",
                "_release_in_flight",
                "_settle_on_shutdown",
            ),
        ),
        Target(
            "eventsources/azure_service_bus.py",
            # the tests of the ack path (each drives the fake broker and nats-server for
            # seconds); the topic-subscription and broker-restart tests exercise the
            # connection management, which is not mutated, and the configuration tests
            # reach none of these functions
            (
                *(
                    f"tests/test_azure_service_bus.py::{name}"
                    for name in (
                        "test_message_becomes_one_event_with_argo_data_and_is_completed",
                        "test_bus_outage_abandons_then_every_message_becomes_exactly_one_event",
                        "test_slow_publish_keeps_the_lock_and_publishes_once",
                        "test_lock_lost_during_a_stall_gives_no_duplicate_event",
                        "test_invalid_json_is_dead_lettered_with_a_reason_and_the_queue_keeps_flowing",
                        "test_stopping_mid_publish_hands_the_message_back_at_once",
                        "test_a_bus_outage_within_the_retry_window_is_ridden_out_without_abandoning",
                        "test_idle_receives_filtered_and_abandoned_batches_keep_the_one_connection",
                        "test_a_publish_failing_for_another_reason_abandons_and_the_redelivery_goes_through",
                        "test_stopping_while_the_broker_does_not_answer_still_stops",
                        "test_a_failed_batch_pauses_the_receives_and_each_pause_doubles",
                        "test_a_stop_the_sdk_loses_in_a_settle_call_still_stops",
                        "test_a_stop_between_two_settles_hands_back_exactly_the_unsettled_messages",
                        "test_a_hand_back_refused_on_shutdown_does_not_keep_the_rest_locked",
                        "test_a_failed_dead_letter_call_is_logged_and_the_connection_kept",
                        "test_a_stop_the_sdk_loses_in_a_receive_call_still_stops_and_hands_back_the_batch",
                    )
                ),
                "tests/test_source_filters.py::test_service_bus_completes_filtered_messages_without_publishing",
            ),
            _methods(
                "AzureServiceBusSource",
                "_consume",
                "_process",
                "_to_bus",
                "_settle",
                "_abandon_on_shutdown",
            ),
        ),
    )
}


NOT_MUTATED = r"^\s*(?:[\w.]+\.)?(?:log|trace_log)\.(?:debug|info|warning|error|exception|log)\("
"""Logging statements are not mutated: their wording is read, not promised (a whole
statement is skipped when its first line matches)."""


def slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def _mutmut_config(target: Target) -> str:
    def arr(items: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {arr(['app', 'eventsources', 'sensors'])}\n"
        f"only_mutate = {arr([target.module])}\n"
        f"pytest_add_cli_args_test_selection = {arr(target.tests)}\n"
        # -n 0: the project's addopts start xdist workers, and mutmut must see which
        # tests run each function from its own process
        f"pytest_add_cli_args = {arr(['-p', 'no:cacheprovider', '-q', '-n', '0'])}\n"
        f"do_not_mutate_patterns = {arr([NOT_MUTATED])}\n"
    )


def prepare(target: Target, workdir: Path) -> None:
    """Copy the sources and tests into ``workdir`` (mtimes kept, so mutmut's cache
    stays valid for unchanged files) and write its pyproject with the mutmut table."""
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        dest = workdir / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ROOT / name, dest, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in pyproject:
        raise SystemExit("pyproject.toml has its own [tool.mutmut]; bench.mutation writes it")
    config = _mutmut_config(target)
    digest = hashlib.sha256(config.encode())
    for f in [*sorted((ROOT / "tests").rglob("*.py")), ROOT / target.module]:
        digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    stamp = workdir / "inputs.sha256"
    if not stamp.exists() or stamp.read_text() != digest.hexdigest():
        # mutmut keeps its verdicts while a mutated function is unchanged, even when the
        # tests or what may be mutated changed: start over then
        shutil.rmtree(workdir / "mutants", ignore_errors=True)
    stamp.write_text(digest.hexdigest())
    (workdir / "pyproject.toml").write_text(pyproject + config)


def mutmut(workdir: Path, *args: str, log: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KUBECONFIG")}
    cmd = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed (log {log}):\n{tail}")
    return ""


@dataclass
class Result:
    module: str
    statuses: dict[str, str]
    equivalent: dict[str, str]

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.statuses.values())

    @property
    def unexplained(self) -> list[str]:
        return sorted(
            n for n, s in self.statuses.items() if s == "survived" and n not in self.equivalent
        )

    def row(self) -> tuple[str, int, int, int, int, int, str]:
        c = self.counts
        total = len(self.statuses)
        equiv = sum(1 for n in self.equivalent if self.statuses.get(n) == "survived")
        killed = c["killed"] + c["timeout"] + c["caught by type check"]
        survived = c["survived"] - equiv
        other = total - killed - c["survived"]
        denominator = total - equiv
        score = f"{100 * killed / denominator:.1f} %" if denominator else "-"
        return (self.module, total, killed, survived, equiv, other, score)


def run_target(
    target: Target, base: Path, max_children: int, equivalents: dict[str, str], run: bool = True
) -> Result:
    workdir = base / slug(target.module)
    mod = slug(target.module)
    globs = [f"{mod}.{f}__mutmut_*" for f in target.functions]
    if run:
        prepare(target, workdir)
        print(f"== {target.module}: mutating, tests {' '.join(target.tests)}", flush=True)
        mutmut(workdir, "run", "--max-children", str(max_children), *globs,
               log=workdir / "mutmut-run.log")  # fmt: skip
    else:
        print(f"== {target.module}: results of the last run", flush=True)
    statuses: dict[str, str] = {}
    for line in mutmut(workdir, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or not name.startswith(mod + "."):
            continue
        if globs and not any(fnmatch.fnmatchcase(name, g) for g in globs):
            continue
        statuses[name] = status
    result = Result(target.module, statuses, equivalents)
    stale = [n for n in equivalents if n.startswith(mod + ".") and statuses.get(n) != "survived"]
    for name in stale:
        print(f"   note: {name} is listed as equivalent but is {statuses.get(name, 'gone')}")
    # Mutants are numbered per function: a stale name means the function changed, so the
    # names listed for it that still survive may now be other mutants. Their diffs go to
    # recheck.txt, to be read against the listed reasons.
    changed = {n.rpartition("__mutmut_")[0] for n in stale}
    recheck = sorted(
        n
        for n in equivalents
        if n.rpartition("__mutmut_")[0] in changed and statuses.get(n) == "survived"
    )
    if recheck:
        with (workdir / "recheck.txt").open("w") as f:
            for name in recheck:
                f.write(f"# listed: {equivalents[name]}\n{mutmut(workdir, 'show', name)}\n")
        print(f"   {len(recheck)} listed equivalents of changed functions to re-read "
              f"against their reasons: {workdir / 'recheck.txt'}")  # fmt: skip
    if result.unexplained:
        report = workdir / "survivors.txt"
        with report.open("w") as f:
            for name in result.unexplained:
                f.write(mutmut(workdir, "show", name) + "\n")
        print(f"   {len(result.unexplained)} survivors not listed as equivalent ({report}):")
        for name in result.unexplained:
            print(f"     {name}")
    return result


def print_table(results: list[Result]) -> None:
    head = ("module", "mutants", "killed", "survived", "equivalent", "other", "score")
    rows = [head, *(tuple(str(x) for x in r.row()) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print("(killed includes timeouts; other = no test reaches it, or not checked yet; "
          "score = killed / (mutants - equivalent))")  # fmt: skip


def short_name(name: str) -> str:
    """``sensors.x_f__mutmut_1`` → ``f__mutmut_1``; ``xǁCǁm__mutmut_2`` → ``C.m__mutmut_2``."""
    rest = name.partition(".x")[2] if ".x\u01c1" in name else name.partition(".x_")[2]
    if rest.startswith("\u01c1"):
        cls, _, method = rest[1:].partition("\u01c1")
        return f"{cls}.{method}"
    return rest


def equivalents_markdown(equivalents: dict[str, str]) -> str:
    """The equivalent-mutant tables of docs/mutation.md, one per module."""
    by_module: dict[str, list[tuple[str, str]]] = {}
    for name, reason in equivalents.items():
        module = next(
            (t.module for t in TARGETS.values() if name.startswith(slug(t.module) + ".x")), "?"
        )
        by_module.setdefault(module, []).append((short_name(name), reason))
    out: list[str] = []
    for module in sorted(by_module):
        rows = by_module[module]
        out += [
            f"### `{module}` ({len(rows)})",
            "",
            "| mutant | why it is equivalent |",
            "|---|---|",
        ]
        out += [f"| `{n}` | {r} |" for n, r in rows]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--module", action="append", default=[], help="a module path (repeat)")
    parser.add_argument("--all", action="store_true", help="every mapped module")
    parser.add_argument("--list", action="store_true", help="print the module → tests map")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test workers")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".mutation")
    parser.add_argument(
        "--report", action="store_true", help="report the last (maybe interrupted) run only"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the equivalent-mutant tables for docs/mutation.md",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(equivalents_markdown(json.loads(EQUIVALENTS_FILE.read_text())), end="")
        return 0
    if args.list:
        for t in TARGETS.values():
            only = f" (functions {', '.join(t.functions)})" if t.functions else ""
            print(f"{t.module}: {' '.join(t.tests)}{only}")
        return 0
    names = list(TARGETS) if args.all else args.module
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        parser.error(f"choose --all or --module from: {', '.join(TARGETS)} (got {unknown})")
    equivalents: dict[str, str] = json.loads(EQUIVALENTS_FILE.read_text())
    results = [
        run_target(TARGETS[n], args.workdir, args.max_children, equivalents, not args.report)
        for n in names
    ]
    print()
    print_table(results)
    return 1 if any(r.unexplained for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
