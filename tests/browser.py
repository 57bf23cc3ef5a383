"""A real headless browser for tests: Debian's Chromium driven by Playwright.

``make test`` installs the ``chromium`` package (Makefile, ``BROWSER=1``); Playwright's own
browser downloads are never used (no internet in CI), so the executable is given explicitly.
The ``browser`` and ``page`` fixtures are registered for every test (``pytest_plugins`` in
tests/conftest.py)::

    def test_x(page):
        page.goto(url)

Screenshots a test wants to keep go to ``artifact_dir()``: ``$TECHNOGAN_TEST_ARTIFACTS``
when set, else ``test-artifacts/`` under the repository (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str:
    """The Chromium executable; a clear failure (not a skip) when it is missing."""
    env = os.environ.get("TECHNOGAN_CHROMIUM")
    for candidate in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    raise RuntimeError("no Chromium for the browser tests: `make test` installs Debian's chromium package "
                       "(or set TECHNOGAN_CHROMIUM to a Chromium/Chrome executable)")


def artifact_dir() -> Path:
    """Where tests keep files worth looking at after the run (screenshots)."""
    path = Path(os.environ.get("TECHNOGAN_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium per test module (starting one costs about a second)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                               args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page (own context: no cookies or cache shared between tests), 30 s timeouts."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()
