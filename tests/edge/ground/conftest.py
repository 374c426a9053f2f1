"""Fixtures of the review desk's tests: a served desk over a ground folder, and headless Chromium."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def served_desk(ground_dir: Path, *, token: str = "") -> Iterator[str]:
    """The review desk over ``ground_dir`` on a free loopback port; yields its base URL."""
    from edge.ground.review import ReviewSettings, create_app, run_until, serve
    from edge.node.assemble import MODELS_DIR

    app = create_app(ReviewSettings(ground_dir, engines=(MODELS_DIR,), token=token, catch_up_every_s=0.0))
    server = serve(app, "127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=run_until, args=(server, stop.is_set), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(10)
        app.extensions["desk"].close()


def submitted(browser: Any, target: str | tuple[str, str], wait_for_id: str) -> Any:
    """Click a button (by id) or a link (a locator) and return the next page's element
    ``wait_for_id``. The wait goes by the page's address, which changes (a query, a label's
    redirect, a link), and ignores WebDriver errors meanwhile: Chromium's inspector may fail on an
    element of the page being left ("Node with given id does not belong to the document")."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.current_url
    locator = (By.ID, target) if isinstance(target, str) else target
    browser.find_element(*locator).click()
    wait = WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,))
    wait.until(lambda d: d.current_url != old and d.execute_script("return document.readyState") == "complete")
    return wait.until(lambda d: d.find_element(By.ID, wait_for_id))


@pytest.fixture
def desk() -> Callable[..., Any]:
    """served_desk, as a fixture that tests call with their ground folder."""
    return served_desk


def chromium_paths() -> tuple[str, str]:
    """The distribution's Chromium and its WebDriver (./build.sh test installs both)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the review desk's browser tests need Chromium and chromedriver: ./build.sh test installs "
                    "them (apt install chromium chromium-driver)")
    return binary, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven through Selenium's WebDriver, 1280 x 1400 px."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--hide-scrollbars"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def demo_ground(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ground folder of a short demo: 6 twin frames of 1024 px through a real node and the shipped engine."""
    from edge.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["-q", "demo", "--n", "6", "--size", "1024", "--out", str(out)]) == 0
    return out / "ground"
