"""Argo's own example manifests (``../shared/argo-examples``) against the models.

What we owe each of them (the corpus README): a manifest whose every type and field
Triggerfish supports loads without error; one that uses something Triggerfish does not
implement yet fails only with lines saying so ("... is not supported", "... not
supported yet"), never with "unknown field", a wrong type or a traceback. The few
examples that carry mistakes of their own are listed in ``KNOWN_BAD`` with the reason;
for them a clear error is the right answer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.compose.manifests import LoadResult, load_file
from app.compose.offline import run_offline_sync

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "argo-examples"

FILES = sorted(
    p.relative_to(CORPUS).as_posix()
    for p in CORPUS.rglob("*")
    if p.is_file() and p.suffix in (".yaml", ".yml")
) if CORPUS.is_dir() else []  # fmt: skip

# Examples that are wrong as published: the line we expect, and why.
KNOWN_BAD: dict[str, tuple[str, str]] = {
    "sensors/trigger-with-atleast-once-semantics.yaml": (
        "spec.triggers[0].template.atLeastOnce: unknown field",
        "atLeastOnce belongs on the trigger, not its template; Argo silently ignores it there",
    ),
    "sensors/trigger-with-policy.yaml": (
        "spec.triggers[0].template.policy: unknown field",
        "policy belongs on the trigger, not its template; Argo silently ignores it there",
    ),
    "sensors/trigger-openwhisk.yaml": (
        "spec.triggers[0].template.openwhisk: unknown field",
        "the key is openWhisk; Kubernetes' case-sensitive decoding drops 'openwhisk', "
        "leaving a template with no trigger",
    ),
    "sensors/url-sensor.yaml": (
        "spec.triggers[0].template.k8s.source.url.verifycert: unknown field",
        "the key is verifyCert; 'verifycert' is dropped by Kubernetes' decoding",
    ),
}

NOT_SUPPORTED = ("is not supported", "not supported yet")


def _lines(result: LoadResult) -> list[str]:
    return [f"{e.path}: {e.message}" if e.path else e.message for e in result.errors]


def _classify(rel: str) -> tuple[str, list[str]]:
    result = load_file(CORPUS / rel)
    lines = _lines(result)
    if not result.documents:
        return "empty", lines
    if not lines:
        return "ok", lines
    if all(any(marker in line for marker in NOT_SUPPORTED) for line in lines):
        return "not-supported", lines
    return "error", lines


@pytest.mark.skipif(not FILES, reason="argo examples not present")
@pytest.mark.parametrize("rel", FILES)
def test_example(rel: str) -> None:
    outcome, lines = _classify(rel)
    if rel in KNOWN_BAD:
        expected, reason = KNOWN_BAD[rel]
        assert expected in lines, f"{rel} ({reason}): {lines}"
        return
    assert outcome in ("ok", "not-supported"), f"{rel}: {lines}"


@pytest.mark.skipif(not FILES, reason="argo examples not present")
def test_corpus_summary(capsys: pytest.CaptureFixture[str]) -> None:
    counts: dict[str, list[str]] = {"ok": [], "not-supported": [], "known-bad": [], "error": []}
    for rel in FILES:
        outcome, _ = _classify(rel)
        if rel in KNOWN_BAD:
            outcome = "known-bad"
        counts.setdefault(outcome, []).append(rel)
    with capsys.disabled():
        print(
            f"\nargo-examples: {len(FILES)} files, {len(counts['ok'])} load ok, "
            f"{len(counts['not-supported'])} fail with not-supported lines only, "
            f"{len(counts['known-bad'])} known-bad ({', '.join(counts['known-bad'])})"
        )
    assert counts["error"] == []
    assert set(KNOWN_BAD) <= set(FILES)
    # These sources and triggers are implemented: their plain examples load.
    for rel in (
        "event-sources/webhook.yaml",
        "event-sources/resource.yaml",
        "event-sources/github.yaml",
        "event-sources/gitlab.yaml",
        "event-sources/bitbucket.yaml",
        "event-sources/bitbucketserver.yaml",
        "eventbus/native.yaml",
        "sensors/webhook.yaml",
        "sensors/log.yaml",
        "sensors/trigger-standard-k8s-resource.yaml",
        "sensors/resource.yaml",
        "sensors/multi-dependencies.yaml",
        "sensors/trigger-nats-messages.yaml",
        "sensors/azure-service-bus-sensor.yaml",
        "sensors/slack-trigger.yaml",
        "sensors/email-trigger.yaml",
        "sensors/aws-lambda-trigger.yaml",
        "sensors/custom-trigger.yaml",
        "sensors/transform.yaml",
        "sensors/filter-script.yaml",
        "event-sources/calendar.yaml",
        "sensors/calendar.yaml",
        "event-sources/slack.yaml",
        "event-sources/stripe.yaml",
        "event-sources/aws-sns.yaml",
    ):
        assert rel in counts["ok"], rel
    # Implemented types whose Argo example asks for pod-template fields (volumes to
    # watch, mounts) the controller does not apply yet: only those lines remain.
    for rel in ("event-sources/file.yaml",):
        _, lines = _classify(rel)
        assert lines and all(line.startswith("spec.template.") for line in lines), (rel, lines)


# Examples that run offline (``triggerfish test``) with a sample event: the sensor, the
# event (a webhook body, or a CloudEvent naming the dependency's event), and lines the
# report must hold.
RUNNABLE: list[tuple[str, dict[str, object], list[str]]] = [
    (
        "sensors/transform.yaml",
        {"message": "hello"},
        ["transform: script: applied", '= "{\\"message\\":\\"updated\\"}" (from dataKey)'],
    ),
    (
        "sensors/transform.yaml",
        {"specversion": "1.0", "id": "e1", "source": "webhook", "subject": "example-foo",
         "type": "webhook", "data": {"header": {}, "body": {"message": "hi"}}},
        ["transform: jq: applied", '= "{\\"message\\":\\"hihi\\"}" (from dataKey)'],
    ),
    (
        "sensors/filter-script.yaml",
        # its parameter reads dataKey "name" beside the body: the whole webhook data
        {"header": {}, "body": {"a": "b", "c": 10, "d": {"e": "z"}}, "name": "run-1"},
        ["script: returned true", "trigger workflow: succeeded"],
    ),
]  # fmt: skip


@pytest.mark.skipif(not FILES, reason="argo examples not present")
@pytest.mark.parametrize(("rel", "event", "expected"), RUNNABLE)
def test_runnable_example_fires_on_a_sample_event(
    rel: str, event: dict[str, object], expected: list[str], tmp_path: Path
) -> None:
    sample = tmp_path / "event.json"
    sample.write_text(json.dumps(event))
    out = io.StringIO()
    code = run_offline_sync(str(CORPUS / rel), [str(sample)], out)
    report = out.getvalue()
    assert code == 0, report
    for line in expected:
        assert line in report, report
