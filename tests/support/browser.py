"""Headless Chromium for the event-flow page's tests (Debian's ``chromium`` and
``chromium-driver`` driven by selenium), with the network blocked except loopback,
and helpers to read the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.net import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium that reaches nothing but loopback (skips without one)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1500,950",
        # air-gapped: no name resolves, and anything not loopback goes to a dead proxy
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{free_port()}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], Any], timeout: float = 20):
    """Until ``check`` is truthy; an element re-rendered under it (stale) is looked up again."""
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(check)


def find(driver: webdriver.Chrome, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def text(driver: webdriver.Chrome, css: str) -> str | None:
    """The rendered text of the first match, read in one step (the panel re-renders)."""
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
    )
    return str(found) if found is not None else None


def node_css(node_id: str) -> str:
    return f'[data-node="{node_id}"]'


def count_text(driver: webdriver.Chrome, node_id: str, kind: str) -> str:
    els = driver.find_elements(By.CSS_SELECTOR, f'{node_css(node_id)} [data-count="{kind}"]')
    return els[0].text if els else ""


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the screenshot was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("TRIGGERFISH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def only_loopback_was_fetched(driver: webdriver.Chrome, base: str) -> None:
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    assert urls and all(u.startswith(base) for u in urls), urls
