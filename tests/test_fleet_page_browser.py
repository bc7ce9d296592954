"""The fleet page in a real browser (headless Chromium), served by `edgeopt serve` on 127.0.0.1: nothing
is shown without an operator's sign-in; once signed in, the devices and each channel's rollout are on
the page, which refreshes itself without reloading; a fleet of 10,000 devices arrives a page at a time.
Every test fails on a console error, an image that does not load or a request off this machine, and
saves a screenshot (browser_helpers: where). Skips where no chromium is installed."""

from __future__ import annotations

import time

import pytest

from edgeopt.fleet.store import open_store
from tests.browser_helpers import artifacts, chromium, open_page  # noqa: F401 (fixtures: a real browser for pages)
from tests.fleet_page_helpers import PageFleet, fill_fleet

pytestmark = pytest.mark.browser
# What Chromium logs for an answer refused with 401 (the tests that ask for one expect it).
REFUSED = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"


@pytest.fixture
def fleet(tmp_path, chromium):  # noqa: F811
    chromium.clear_cookies()  # the browser is shared by the module's tests: nobody is signed in at the start
    fleet = PageFleet(tmp_path, time.time())
    with fleet.serve(page_refresh_s=1.0) as server:
        fleet.report_all(server)
        fleet.server = server
        yield fleet


def sign_in(visit, token: str) -> None:
    visit.page.fill("#token", token)
    with visit.page.expect_navigation():
        visit.page.click("#login button[type=submit]")


def fetch(visit, url: str) -> tuple[int, str]:
    """What the page's own script would get from `url` (the session cookie goes with it, if any)."""
    return tuple(visit.page.evaluate("async url => { const r = await fetch(url); return [r.status, await r.text()]; }", url))


def row_text(visit, device: str) -> str:
    return visit.page.locator(f'#devices tr[data-device="{device}"]').inner_text()


def test_without_the_operator_credential_nothing_is_shown(fleet, open_page):  # noqa: F811
    visit = open_page(f"{fleet.server.url}/fleet")
    page = visit.page
    assert page.url == f"{fleet.server.url}/fleet/login"  # sent to sign in
    assert page.locator("#token").is_visible() and page.locator("#devices").count() == 0
    assert "sorter-" not in page.content()
    for url in ("/fleet.json?limit=5", "/fleet.json"):
        status, text = fetch(visit, url)
        assert status == 401 and "sorter-" not in text

    sign_in(visit, "eo_op_" + "x" * 43)  # a token that is no operator's
    assert page.locator("#error").is_visible() and "not an operator" in page.locator("#error").inner_text()
    assert page.locator("#devices").count() == 0 and "sorter-" not in page.content()
    assert [p for p in visit.problems() if REFUSED not in p] == []
    print("screenshot:", visit.screenshot("fleet-sign-in-refused"))


def test_the_fleet_page_shows_devices_and_rollouts_and_refreshes_itself(fleet, open_page):  # noqa: F811
    visit = open_page(f"{fleet.server.url}/fleet")
    sign_in(visit, fleet.token)
    page = visit.page
    assert page.url == f"{fleet.server.url}/fleet"
    page.locator("#devices tbody tr[data-device]").first.wait_for()

    devices = page.locator("#devices tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert devices[:4] == ["sorter-2", "sorter-3", "sorter-4", "sorter-5"]  # failed, degraded, stale, silent first
    assert sorted(devices[4:]) == ["beta-1", "sorter-1"]
    assert "failed" in row_text(visit, "sorter-2") and "smoke-test-failed (2)" in row_text(visit, "sorter-2")
    assert "degraded" in row_text(visit, "sorter-3") and "(\u22120.36)" in row_text(visit, "sorter-3")
    assert "stale" in row_text(visit, "sorter-4") and "2 h ago" in row_text(visit, "sorter-4")
    assert "never" in row_text(visit, "sorter-5")
    assert "2 (was 1)" in row_text(visit, "sorter-1") and "4.0 / 6.0" in row_text(visit, "sorter-1")
    assert page.locator('#levels [data-level="failed"] .count').inner_text() == "1"

    stable = page.locator('#rollouts article[data-channel="stable"]')
    assert stable.is_visible() and "running" in stable.inner_text()
    assert stable.locator(".stage.current").inner_text() == "1 %"
    assert "soaks 50 min more (of 1 h)" in stable.inner_text() and "Next: wait." in stable.inner_text()
    beta = page.locator('#rollouts article[data-channel="beta"]')
    assert "aborted" in beta.inner_text() and "belt 3 jams on glass" in beta.locator(".halt").inner_text()

    page.evaluate("window.loadedOnce = 'this document'")  # gone if the page reloaded
    fleet.report(fleet.server, "sorter-5", active_release=1, last_error="camera unplugged", service=None)
    page.wait_for_function("() => (document.querySelector('#devices tr[data-device=\"sorter-5\"]') || {})"
                           ".textContent?.includes('camera unplugged')")
    assert page.evaluate("window.loadedOnce") == "this document"
    assert "silent" not in row_text(visit, "sorter-5") and "0 s ago" in row_text(visit, "sorter-5")
    assert int(page.evaluate("document.body.dataset.refreshes")) >= 2
    assert visit.problems() == []
    print("screenshot:", visit.screenshot("fleet-page"))

    with page.expect_navigation():
        page.click("header form button")  # sign out
    assert page.url == f"{fleet.server.url}/fleet/login"
    assert fetch(visit, "/fleet.json?limit=5")[0] == 401


def test_ten_thousand_devices_arrive_a_page_at_a_time(tmp_path, chromium, open_page):  # noqa: F811
    chromium.clear_cookies()
    fleet = PageFleet(tmp_path, time.time())
    with open_store(fleet.repo_path) as store:
        kinds = fill_fleet(store, 10_000, fleet.now)
    total = 10_000 + len(fleet.device_keys)
    problems = sum(len(v) for v in kinds.values()) + len(fleet.device_keys)  # its sorters never reported here
    with fleet.serve(page_refresh_s=2.0) as server:
        visit = open_page(f"{server.url}/fleet")
        answers: list[int] = []
        visit.page.on("response", lambda r: answers.append(int(r.headers["content-length"])) if "/fleet.json" in r.url
                      else None)
        sign_in(visit, fleet.token)
        page = visit.page
        rows = page.locator("#devices tbody tr")
        rows.first.wait_for()
        assert page.locator("#range").inner_text() == f"1\u201350 of {total:,}"
        assert rows.count() == 50
        assert page.locator('#levels .tile.total .count').inner_text() == f"{total:,}"
        first = rows.evaluate_all("rows => rows.map(r => r.dataset.device)")
        assert first[:len(kinds["failed"])] == sorted(kinds["failed"])  # the problems first
        print("screenshot:", visit.screenshot("fleet-page-10000"))

        page.click("#next")
        page.wait_for_function(f"() => document.querySelector('#range').textContent === '51\u2013100 of {total:,}'")
        assert rows.count() == 50 and rows.first.get_attribute("data-device") not in first

        page.select_option("#health", "problems")
        page.wait_for_function(f"() => document.querySelector('#range').textContent === '1\u2013{problems} of {problems}'")
        assert rows.count() == problems
        page.fill("#q", kinds["degraded"][0])
        page.wait_for_function("() => document.querySelector('#range').textContent === '1\u20131 of 1'")
        assert rows.count() == 1 and "degraded" in rows.first.inner_text()

        assert visit.problems() == []
        assert answers and max(answers) < 200_000  # a page of devices, never the fleet (10,000 rows: megabytes)
