"""The event-flow page in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium), against a real ``triggerfish run``.

The browser can reach nothing but loopback (every host name resolves to nothing, and
every non-loopback request goes to a dead proxy), so the page is shown to work
air-gapped. Screenshots are saved under the test's temp dir (and copied to
``$TRIGGERFISH_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.support.browser import (
    chromium,
    count_text,
    find,
    node_css,
    only_loopback_was_fetched,
    screenshot,
    text,
    wait,
)
from tests.support.flow import (
    BERT_DEP,
    SEED_DEP,
    SEED_EVENT,
    SEED_TRIGGER,
    WORKFLOWS,
    post,
    start_seed,
    workflows,
)
from tests.support.net import wait_for
from tests.support.proc import Triggerfish

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path) as driver:
        yield driver


def test_the_seed_pipeline_on_the_page(
    tmp_path: Path, kube_api: Any, browser: webdriver.Chrome
) -> None:
    tf, port = start_seed(tmp_path, kube_api)
    base = f"http://127.0.0.1:{tf.api_port}"
    try:
        browser.get(base + "/")
        # the graph: source event, sensor with its dependency and trigger
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, node_css(SEED_TRIGGER)))
        assert "trigger" in find(browser, node_css(SEED_EVENT)).text
        sensor = find(browser, node_css("sn:argo-events/ml-pipeline-sensor")).text
        assert "ml-pipeline-sensor" in sensor and "training-event" in sensor
        assert "trigger-ml-pipeline" in sensor and "k8s" in sensor
        assert "nothing created yet" in find(browser, "#col-objects").text
        assert count_text(browser, SEED_DEP, "received") == "0 received"
        browser.execute_script("window.stillTheSamePage = true")
        dep_row = find(browser, node_css(SEED_DEP))
        browser.execute_script("arguments[0].focus()", dep_row)

        # an event: the counts and the created Workflow appear without a reload
        post(port, {"model": "resnet", "dataset": "imagenet"})
        wait(browser, lambda d: count_text(d, SEED_DEP, "received") == "1 received")
        # ... updated in place: the same element (not stale), still focused
        assert "1 received" in dep_row.text
        assert browser.execute_script("return document.activeElement === arguments[0]", dep_row)
        wait(browser, lambda d: count_text(d, SEED_TRIGGER, "fired") == "1 fired")
        wait(browser, lambda d: count_text(d, BERT_DEP, "filtered") == "1 filtered")
        assert count_text(browser, SEED_EVENT, "published") == "1 received"
        [wf] = workflows(kube_api)
        name = wf["metadata"]["name"]
        wait(browser, lambda d: name in find(d, "#col-objects").text)
        link = find(browser, "#col-objects a")
        assert link.get_attribute("href") == (
            f"http://argo.example.invalid:2746/workflows/argo-events/{name}"
        )
        assert browser.execute_script("return window.stillTheSamePage") is True
        edge_labels = browser.execute_script(
            "return [...document.querySelectorAll('#edges text')].map(t => t.textContent)"
        )
        assert "1 in" in edge_labels and "1 fired" in edge_labels, edge_labels
        # click an edge (its label; the edges are redrawn on every poll): the events
        # through it, here the trigger's firing
        label = f'#edges g.label[data-edge="{SEED_TRIGGER}"]'
        wait(browser, lambda d: find(d, label).click() or True)
        wait(
            browser,
            lambda d: text(d, "#panel h3") == "Trigger trigger-ml-pipeline of ml-pipeline-sensor",
        )
        assert "succeeded" in wait(browser, lambda d: text(d, "#panel .trace[open]"))

        # click the dependency: its trace, with each parameter's value and source
        find(browser, node_css(SEED_DEP)).click()
        trace = wait(browser, lambda d: text(d, "#panel .trace[open]"))
        assert "fired" in trace and "succeeded" in trace
        assert "spec.arguments.parameters.0.value" in trace
        assert '"resnet"' in trace and "dataKey" in trace
        event_id = browser.execute_script(
            "return document.querySelector('#panel .trace[open]').dataset.eventId"
        )

        # the open panel follows new events through that node, keeping what is open
        post(port, {"model": "resnet", "dataset": "more"})
        wait(browser, lambda d: text(d, "#traces h4") == "Recent events (2)")
        opened = browser.execute_script(
            "return [...document.querySelectorAll('#panel .trace[open]')]"
            ".map(t => t.dataset.eventId)"
        )
        assert opened == [event_id]

        # the filtered sensor: the rejecting filter and its reason
        find(browser, node_css(BERT_DEP)).click()
        wait(browser, lambda d: "filtered" in (text(d, "#panel .trace summary") or ""))
        reasons = text(browser, "#panel .trace .filters") or ""
        assert "body.model" in reasons and "bert" in reasons, reasons

        # search by event id: both sensors' traces of that event
        box = find(browser, "#search")
        box.send_keys(event_id)
        find(browser, "#search-form button").click()
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#panel .trace")) == 2)
        assert event_id in (text(browser, "#panel h3") or "")
        screenshot(browser, tmp_path, "flow-page.png")

        # a failing trigger: its error on the node and in the trace; a dead letter
        kube_api.fault("POST", WORKFLOWS, status=403, times=1)
        post(port, {"model": "resnet", "dataset": "coco"})
        wait(browser, lambda d: count_text(d, SEED_TRIGGER, "deadLettered") == "1 dead-lettered")
        wait(browser, lambda d: "Forbidden" in find(d, node_css(SEED_TRIGGER)).text)
        wait(browser, lambda d: find(d, "#dlq-count").text == "1")
        # ... and on the edge to the trigger's objects
        labels = "return [...document.querySelectorAll('#edges text')].map(t => t.textContent)"
        wait(browser, lambda d: "2 fired · 1 failed · 1 dead-lettered" in d.execute_script(labels))
        find(browser, node_css(SEED_TRIGGER)).click()
        error = wait(browser, lambda d: text(d, "#panel .trigger-error"))
        assert "Forbidden" in error
        # only the failed firings of that trigger
        Select(find(browser, "#outcome")).select_by_value("failed")
        wait(browser, lambda d: text(d, "#traces h4") == "Recent events (1)")
        assert "dead-lettered" in (text(browser, "#panel .trace[open]") or "")
        replay = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#panel-dlq .replay"))[0]
        screenshot(browser, tmp_path, "flow-page-dead-letter.png")

        # replayed from the page (a double click): one Workflow for that event
        ActionChains(browser).double_click(replay).perform()
        wait(browser, lambda d: "replayed" in find(d, "#panel-dlq .result").text)
        coco = [
            w
            for w in workflows(kube_api)
            if w["spec"]["arguments"]["parameters"][1]["value"] == "coco"
        ]
        assert len(coco) == 1
        wait(browser, lambda d: find(d, "#dlq-count").text == "0")
        assert httpx.get(f"{base}/api/v1/deadletters").json() == []
        wait(browser, lambda d: count_text(d, SEED_TRIGGER, "fired") == "3 fired")
        only_loopback_was_fetched(browser, base)
        assert browser.execute_script("return window.stillTheSamePage") is True
    finally:
        tf.stop()


def test_the_page_asks_for_the_api_token(
    tmp_path: Path, kube_api: Any, browser: webdriver.Chrome
) -> None:
    tf, _ = start_seed(tmp_path, kube_api, TRIGGERFISH_API_TOKEN="page-t0ken")
    try:
        browser.get(f"http://127.0.0.1:{tf.api_port}/")
        wait(browser, lambda d: find(d, "#token-dialog").get_attribute("open") is not None)
        assert not browser.find_elements(By.CSS_SELECTOR, node_css(SEED_TRIGGER))
        find(browser, "#token").send_keys("page-t0ken")
        find(browser, "#token-form button").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, node_css(SEED_TRIGGER)))
    finally:
        tf.stop()


def distinct_free_ports(n: int) -> list[int]:
    """``n`` different free ports (all held at once while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _many(tmp: Path, sources: int, sensors: int, namespaces: int) -> tuple[list[str], list[int]]:
    """``sources`` webhook EventSources (one event each, own port) and ``sensors``
    Sensors spread over ``namespaces`` namespaces, each consuming one source's event."""
    tmp.mkdir(parents=True, exist_ok=True)
    ports = distinct_free_ports(sources)
    docs = []
    for i, port in enumerate(ports):
        docs.append(
            f"""apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: source-{i:02d}, namespace: team-{i % namespaces}}}
spec:
  webhook:
    push-{i:02d}: {{port: "{port}", endpoint: /push, method: POST}}
"""
        )
    for j in range(sensors):
        i = j % sources
        docs.append(
            f"""apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {{name: sensor-{j:03d}, namespace: team-{j % namespaces}}}
spec:
  dependencies:
    - {{name: dep, eventSourceName: source-{i:02d}, eventName: push-{i:02d}}}
  triggers:
    - template: {{name: note, log: {{}}}}
"""
        )
    (tmp / "many.yaml").write_text("---\n".join(docs))
    return [str(tmp / "many.yaml")], ports


def test_fifty_sources_and_a_hundred_sensors_stay_readable(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    files, ports = _many(tmp_path / "manifests", sources=50, sensors=100, namespaces=5)
    tf = Triggerfish(files=files, state_dir=tmp_path / "state").start(timeout=90)
    try:
        browser.get(f"http://127.0.0.1:{tf.api_port}/")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#col-sensors .card")) == 100)
        # collapsed to one line per sensor and per source, grouped by namespace
        assert len(browser.find_elements(By.CSS_SELECTOR, "#col-sensors .card.collapsed")) == 100
        assert len(browser.find_elements(By.CSS_SELECTOR, "#col-sources .card.collapsed")) == 50
        groups = browser.find_elements(By.CSS_SELECTOR, "#col-sensors details.group > summary")
        assert [g.text for g in groups] == [f"namespace team-{n} · 20 sensors" for n in range(5)]
        # one edge per sensor, from its source's card to its own
        assert len(browser.find_elements(By.CSS_SELECTOR, "#edges path")) == 100
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/push", json={"n": 1})
        assert r.status_code == 200
        # sensors 0 and 50 consume source 0
        for j in (0, 50):
            css = node_css(f"sn:team-{j % 5}/sensor-{j:03d}")
            wait(browser, lambda d, css=css: "1 received" in find(d, css).text)
        screenshot(browser, tmp_path, "flow-page-100-sensors.png")
        # the name filter narrows the graph to what matches
        find(browser, "#filter").send_keys("sensor-057")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#col-sensors .card")) == 1)
        # ... and keeps the source that feeds it
        assert len(browser.find_elements(By.CSS_SELECTOR, "#col-sources .card")) == 1
        assert len(browser.find_elements(By.CSS_SELECTOR, "#edges path")) == 1
        find(browser, node_css("sn:team-2/sensor-057") + " .toggle").click()
        dep = node_css("dep:team-2/sensor-057/dep")
        wait(browser, lambda d: find(d, dep).is_displayed())
    finally:
        tf.stop()
    wait_for(lambda: tf.proc is None)


def test_the_api_docs_render_without_a_network(
    tmp_path: Path, kube_api: Any, browser: webdriver.Chrome
) -> None:
    tf, _ = start_seed(tmp_path, kube_api)
    base = f"http://127.0.0.1:{tf.api_port}"
    try:
        browser.get(base + "/api/docs")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
        assert "/api/v1/traces" in paths and "/api/v1/deadletters/{bus}/{seq}/replay" in paths
        only_loopback_was_fetched(browser, base)
    finally:
        tf.stop()
