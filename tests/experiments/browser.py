"""Debian's headless Chromium (selenium + chromedriver) for the self-contained report pages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMEDRIVER = Path("/usr/bin/chromedriver")


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Chromium driver without background networking that records its network requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def assert_offline(driver: Any) -> None:
    """The page loaded nothing from the network and links no external script or style."""
    requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = [
        m["params"]["request"]["url"]
        for m in requests
        if m["method"] == "Network.requestWillBeSent"
    ]
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
    external = driver.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
        ".filter(u => /^(https?:)?\\/\\//.test(u))"
    )
    assert external == []
