"""A real browser for the pages edgeopt makes (report.html; the fleet page later): Debian's
chromium, driven by Playwright, which never downloads a browser of its own here.

`open_page(url)` loads a page and returns a Visit that has recorded, from the first request on,
every console error and uncaught exception, every failed request, and every request that left
localhost / file: / data: (those are aborted, so a page that would fetch from the network fails
its test instead of hanging). `Visit.problems()` adds every image that did not load; a test asserts
it is empty, then checks what the page shows, and saves a screenshot with `Visit.screenshot()`.

Where no chromium (or no playwright) is installed the browser tests skip, saying so; `.ci/run`
installs chromium, so CI runs them. EDGEOPT_CHROMIUM names another browser binary;
EDGEOPT_TEST_ARTIFACTS a folder to keep the screenshots in (default: pytest's tmp folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# What headless Chromium needs here (TECH-NOTES): no sandbox as root, no GPU, and none of its own
# traffic to the outside (without these its background connections are refused many at a time).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
LOCAL_SCHEMES = ("file", "data", "blob", "about")
VIEWPORT = {"width": 1280, "height": 900}
# Generous: pages are checked under a loaded 2-core machine, and nothing here is timed.
TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    given = os.environ.get("EDGEOPT_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def is_local(url: str) -> bool:
    """Whether a request stays on this machine: a file, inline data, or localhost."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


@dataclass
class Visit:
    """One page as loaded, and what went wrong while it loaded."""

    page: Any  # playwright.sync_api.Page
    folder: Path
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    off_host_requests: list[str] = field(default_factory=list)

    def broken_images(self) -> list[str]:
        """<img> elements that did not load (naturalWidth 0), by the first 80 characters of src."""
        return self.page.evaluate(
            "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.src.slice(0, 80))")

    def problems(self) -> list[str]:
        return ([f"console error: {e}" for e in self.console_errors]
                + [f"failed request: {r}" for r in self.failed_requests]
                + [f"request off this host: {r}" for r in self.off_host_requests]
                + [f"image did not load: {src}" for src in self.broken_images()])

    def screenshot(self, name: str) -> Path:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[Any]:
    """A headless Chromium with an empty profile, for the tests of one module (Playwright's sync
    API marks the thread's asyncio loop running while it is open: other modules must not see it)."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium installed (apt-get install chromium, or set EDGEOPT_CHROMIUM): browser tests skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]'): browser tests skipped")
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=list(CHROMIUM_FLAGS), viewport=VIEWPORT)
    except Exception as exc:  # a browser that is there but cannot start here: say why, do not hide it as a pass
        playwright.stop()
        pytest.skip(f"{executable} did not start: {str(exc).splitlines()[0]}")
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()
    playwright.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: $EDGEOPT_TEST_ARTIFACTS, else a pytest tmp folder."""
    given = os.environ.get("EDGEOPT_TEST_ARTIFACTS")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def open_page(chromium, artifacts) -> Iterator[Callable[[str], Visit]]:
    """open_page(url) -> Visit: a new tab that loaded url, every problem recorded (module doc)."""
    pages = []

    def visit(url: str) -> Visit:
        page = chromium.new_page()
        pages.append(page)
        seen = Visit(page=page, folder=artifacts)

        def on_request(route: Any) -> None:
            if is_local(route.request.url):
                route.continue_()
            else:
                seen.off_host_requests.append(route.request.url)
                route.abort()

        page.route("**/*", on_request)
        page.on("request", lambda r: None if is_local(r.url) or r.url in seen.off_host_requests
                else seen.off_host_requests.append(r.url))
        page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.console_errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: None if r.url in seen.off_host_requests
                else seen.failed_requests.append(f"{r.url[:120]} ({r.failure})"))
        page.goto(url, wait_until="load")
        return seen

    yield visit
    for page in pages:
        page.close()
