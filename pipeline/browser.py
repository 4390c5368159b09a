"""Headless Chromium, offline, for screenshots of the viewer and for the browser tests.

Uses Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``) through selenium, with the binaries named explicitly so selenium never
tries to download a driver. The flags keep Chromium from contacting the internet (no background
networking, component updates, sync or QUIC) and give every session a fresh profile folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
from typing import Any, Iterator, Sequence

__all__ = ["BrowserError", "CHROMIUM_FLAGS", "find_chromium", "headless_chromium"]

#: Flags of every session (plus ``--user-data-dir`` and ``--window-size``).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--enable-unsafe-swiftshader")
BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"


class BrowserError(ValueError):
    """No usable headless Chromium; the message says what to install."""


def _which(names: Sequence[str]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def find_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its chromedriver.

    Raises
    ------
    BrowserError
        Chromium or chromedriver is not on PATH.
    """
    browser, driver = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise BrowserError(f"{missing} not found on PATH: {INSTALL_HINT}")
    return browser, driver


@contextlib.contextmanager
def headless_chromium(window_size: tuple[int, int] = (1280, 800)) -> Iterator[Any]:
    """A selenium ``WebDriver`` of a fresh headless Chromium; quits it (and its processes) on exit.

    Raises
    ------
    BrowserError
        Chromium, chromedriver or the selenium package is missing.
    """
    browser, driver = find_chromium()
    if importlib.util.find_spec("selenium") is None:
        raise BrowserError("the selenium package is missing: pip install selenium (part of the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="corrseg3d-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={window_size[0]},{window_size[1]}"):
            options.add_argument(flag)
        session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        try:
            yield session
        finally:
            session.quit()
