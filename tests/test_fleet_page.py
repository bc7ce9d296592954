"""The fleet page's server side: each device's health judged against the model it ran before, one page
of devices sorted and filtered on the server, each channel's rollout and why it stands there; and who
may see any of it -- an operator who signed in (a strict, HttpOnly session cookie) or who sends an
operator token. Against a real `edgeopt serve` on 127.0.0.1 with a simulated clock. The page in a
real browser: test_fleet_page_browser.py."""

from __future__ import annotations

import datetime as dt
import time
from types import SimpleNamespace

import httpx
import pytest

from edgeopt.fleet import auth
from edgeopt.fleet.page import COOKIE, SESSION_S
from edgeopt.fleet.view import STALE_S, Entry, Query, judge, select
from edgeopt.rollout.policy import Criteria
from tests.fleet_page_helpers import SOAK_S, PageFleet, window

NOW = 1_796_000_000.0  # December 2026
CRITERIA = Criteria()


def row(device: str, **fields) -> dict:
    """A device row as fleet.overview.device_row makes it (only what judge and select read)."""
    base = {"device_id": device, "revoked": None, "reported": "2026-12-01T10:00:00Z", "channel": "stable",
            "device_class": "arm64-4c", "release": 7, "install": None, "service": None, "previous_service": None,
            "last_error": None}
    return {**base, **fields}


def entry(device: str, received_s: float | None = NOW, **fields) -> Entry:
    r = row(device, **fields) if received_s is not None else row(device, reported=None, **fields)
    return Entry(r, judge(r, CRITERIA), received_s)


def test_each_device_is_judged_against_the_model_it_ran_before():
    install = {"release": 8, "result": "smoke-test-failed", "time": "2026-12-01T10:00:00Z", "detail": "NaN outputs"}
    failed = judge(row("a", install=install), CRITERIA)
    assert failed["level"] == "failed" and failed["problems"] == ["release 8: smoke-test-failed (NaN outputs)"]
    # a failure of a release older than the one it runs now is history, not a problem
    assert judge(row("b", release=9, install=install), CRITERIA)["level"] == "ok"
    assert judge(row("c", install={**install, "result": "download-failed"}), CRITERIA)["level"] == "degraded"

    before = window(6, 0.91, 0.04, p90=6.0)
    worse = judge(row("d", service=window(7, 0.70, 0.05, p90=6.0), previous_service=before), CRITERIA)
    assert worse["level"] == "degraded" and worse["confidence_delta"] == pytest.approx(-0.21)
    assert worse["problems"] == ["mean confidence -0.21 against release 6"]
    fine = judge(row("e", service=window(7, 0.88, 0.06, p90=6.6), previous_service=before), CRITERIA)
    assert fine["level"] == "ok" and fine["latency_p90_ratio"] == pytest.approx(1.1) and fine["problems"] == []
    slow = judge(row("f", service=window(7, 0.9, 0.04, p90=12.0), previous_service=before), CRITERIA)
    assert slow["level"] == "degraded" and slow["problems"] == ["p90 latency 2.00x release 6's"]
    noisy = judge(row("g", service=window(7, 0.9, 0.30), previous_service=before), CRITERIA)
    assert noisy["level"] == "degraded" and "low-confidence share +0.26" in noisy["problems"][0]
    # too few frames to say: shown, not judged
    young = judge(row("h", service=window(7, 0.5, 0.5, frames=CRITERIA.min_frames - 1), previous_service=before), CRITERIA)
    assert young["level"] == "ok" and young["confidence_delta"] is None

    assert judge(row("i", reported=None), CRITERIA)["level"] == "silent"
    assert judge(row("j", revoked="2026-12-01T11:00:00Z", install=install), CRITERIA)["level"] == "revoked"


def test_a_device_that_stops_reporting_goes_stale_and_a_worse_level_stays():
    quiet, broken = entry("quiet", NOW), entry("broken", NOW, install={"release": 8, "result": "rolled-back",
                                                                      "time": "2026-12-01T10:00:00Z"})
    assert quiet.level(NOW + STALE_S) == "ok" and quiet.level(NOW + STALE_S + 1) == "stale"
    shown = quiet.shown(NOW + 2 * 3600)
    assert shown["report_age_s"] == 7200 and shown["health"]["problems"] == ["no report for 2 h"]
    assert broken.level(NOW + 2 * 3600) == "failed"
    assert broken.shown(NOW + 2 * 3600)["health"]["problems"][-1] == "no report for 2 h"


def test_one_page_of_devices_problems_first_sorted_and_filtered_on_the_server():
    entries = [entry(f"belt-{i:03d}", NOW - i, service=window(7, 0.9, 0.05, p90=5.0 + i / 100)) for i in range(120)]
    entries += [entry("zz-failed", NOW, install={"release": 7, "result": "refused", "time": "2026-12-01T10:00:00Z"},
                      release=6),
                entry("zz-silent", None), entry("aa-stale", NOW - 2 * STALE_S)]
    first = select(entries, Query(limit=10), NOW)
    assert first["total"] == 123 and len(first["devices"]) == 10
    assert [d["device_id"] for d in first["devices"][:3]] == ["zz-failed", "aa-stale", "zz-silent"]
    assert [d["device_id"] for d in first["devices"][3:5]] == ["belt-000", "belt-001"]
    last = select(entries, Query(offset=120, limit=10), NOW)
    assert [d["device_id"] for d in last["devices"]] == ["belt-117", "belt-118", "belt-119"]

    slowest = select(entries, Query(limit=2, sort="latency", descending=True), NOW)["devices"]
    assert [d["device_id"] for d in slowest] == ["belt-119", "belt-118"]
    oldest_first = select(entries, Query(sort="reported"), NOW)["devices"]
    assert oldest_first[0]["device_id"] == "aa-stale" and oldest_first[-1]["device_id"] == "zz-silent"  # never: last
    newest_first = select(entries, Query(sort="reported", descending=True), NOW)["devices"]
    assert newest_first[-1]["device_id"] == "zz-silent"  # whichever the order

    problems = select(entries, Query(health="problems"), NOW)
    assert [d["device_id"] for d in problems["devices"]] == ["zz-failed", "aa-stale", "zz-silent"]
    assert select(entries, Query(text="BELT-11"), NOW)["total"] == 10
    assert select(entries, Query(text="refused"), NOW)["total"] == 1  # the problem's words are searched too
    assert select(entries, Query(channel="beta"), NOW)["total"] == 0


@pytest.mark.parametrize("params, word", [({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"),
                                          ({"offset": "-1"}, "offset"), ({"sort": "price"}, "sort"),
                                          ({"order": "up"}, "order"), ({"health": "sick"}, "health")])
def test_a_bad_query_says_which_parameter_and_what_it_takes(params, word):
    with pytest.raises(ValueError, match=f"^{word} must be"):
        Query.from_params(params)


@pytest.fixture
def fleet(tmp_path):
    fleet = PageFleet(tmp_path, NOW)
    with fleet.serve() as server, httpx.Client(base_url=server.url) as client:
        fleet.report_all(server)
        yield SimpleNamespace(fleet=fleet, server=server, client=client, store=server.app.state.store)


def device(client: httpx.Client, device_id: str) -> dict:
    """One device's row, as the page gets it."""
    return next(d for d in client.get("/fleet.json", params={"limit": "10", "q": device_id}).json()["devices"]
                if d["device_id"] == device_id)


def with_cookie(url: str, session: str) -> httpx.Client:
    return httpx.Client(base_url=url, cookies={COOKIE: session})


def sign_in(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    return client.post("/fleet/login", data={"token": token}, headers=headers)


def test_without_an_operator_the_page_and_its_data_are_refused(fleet):
    client, device_key = fleet.client, fleet.fleet.device_keys["sorter-1"]
    page = client.get("/fleet")
    assert page.status_code == 303 and page.headers["location"] == "/fleet/login"
    form = client.get("/fleet/login")
    assert form.status_code == 200 and 'method="post"' in form.text and "sorter-" not in form.text
    assert client.get("/fleet.json").status_code == 401
    assert with_cookie(fleet.server.url, "made-up").get("/fleet.json?limit=5").status_code == 401
    signed = auth.sign_request(device_key, "sorter-1", "GET", "/fleet.json", b"", NOW)
    assert client.get("/fleet.json", headers=signed).status_code == 401  # a device cannot read the fleet
    wrong = sign_in(client, "eo_op_" + "x" * 43)
    assert wrong.status_code == 401 and "not an operator" in wrong.text and COOKIE not in wrong.headers.get("set-cookie", "")
    assert client.get("/fleet").status_code == 303
    assert client.get("/fleet/assets/fleet.js").status_code == 200  # the script: edgeopt's code, no fleet data
    assert client.get("/fleet/assets/../page.py").status_code == 404


def test_signing_in_opens_a_strict_http_only_session_for_the_page_and_its_data(fleet):
    client, token = fleet.client, fleet.fleet.token
    answer = sign_in(client, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/fleet"  # the token never goes in a URL
    cookie = answer.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", f"Max-Age={int(SESSION_S)}"):
        assert attribute in cookie
    assert "Secure" not in cookie and token not in cookie  # plain http on loopback: a Secure cookie would be dropped
    page = client.get("/fleet")
    assert page.status_code == 200 and "signed in as <strong>alice</strong>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["cache-control"] == "no-store"

    data = client.get("/fleet.json", params={"limit": "2"}).json()
    assert data["operator"] == "alice" and data["total"] == 6 and len(data["devices"]) == 2
    assert data["summary"]["levels"] == {"failed": 1, "degraded": 1, "stale": 1, "silent": 1, "ok": 2, "revoked": 0}
    assert [d["device_id"] for d in data["devices"]] == ["sorter-2", "sorter-3"]  # the worst first
    stable, beta = (next(r for r in data["rollouts"] if r["channel"] == c) for c in ("stable", "beta"))
    assert stable["status"] == "running" and stable["stage"] == 1 and stable["share"] == "1 %"
    assert stable["soak_left_s"] == SOAK_S - 600 and stable["next"] == "wait" and "soaks 3000 s more" in stable["reason"]
    assert stable["stats"]["failed_devices"] == ["sorter-2"] and stable["halts"] == []
    assert beta["status"] == "aborted" and beta["soak_left_s"] is None
    assert [h["event"] for h in beta["halts"]] == ["aborted"] and "belt 3 jams on glass" in beta["halts"][0]["reason"]
    assert "release 1 published again as release 3" in beta["reason"]


def test_a_new_report_shows_in_the_answers_and_ages_move_with_the_servers_clock(fleet):
    client, fleet_ = fleet.client, fleet.fleet
    sign_in(client, fleet_.token)
    before = device(client, "sorter-5")
    assert before["health"]["level"] == "silent"
    fleet_.clock[0] += 30
    fleet_.report(fleet.server, "sorter-5", active_release=1, last_error="camera unplugged")
    # the server re-reads a changed fleet at most every REREAD_PAUSE times its last read's duration
    # (a CPU budget, on the real clock): a few milliseconds for six devices; wait for it, generously
    deadline = time.monotonic() + 30
    while (after := device(client, "sorter-5"))["reported"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["health"]["level"] == "ok" and after["last_error"] == "camera unplugged" and after["report_age_s"] == 0
    fleet.store.revoke("sorter-1", dt.datetime.fromtimestamp(fleet_.clock[0], dt.UTC))  # no report: still re-read
    while (revoked := device(client, "sorter-1"))["revoked"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert revoked["health"]["level"] == "revoked" and revoked["release"] == 2  # its report stays
    fleet_.clock[0] += 2 * STALE_S  # and ages move with the server's clock, reports or not
    later = device(client, "sorter-5")
    assert later["health"]["level"] == "stale" and later["report_age_s"] == 2 * STALE_S


def test_a_session_ends_at_sign_out_at_expiry_and_when_the_operator_is_revoked(fleet):
    client, fleet_ = fleet.client, fleet.fleet
    sign_in(client, fleet_.token)
    session = client.cookies[COOKIE]
    assert client.post("/fleet/logout").status_code == 303
    assert COOKIE not in client.cookies
    assert with_cookie(fleet.server.url, session).get("/fleet.json").status_code == 401  # the old cookie is dead

    sign_in(client, fleet_.token)
    fleet_.clock[0] += SESSION_S - 60
    assert client.get("/fleet").status_code == 200
    fleet_.clock[0] += 61
    assert client.get("/fleet").status_code == 303 and client.get("/fleet.json").status_code == 401

    sign_in(client, fleet_.token)
    assert client.get("/fleet.json").status_code == 200
    fleet.store.revoke_operator("alice", dt.datetime.fromtimestamp(NOW, dt.UTC))
    assert client.get("/fleet.json").status_code == 401 and client.get("/fleet").status_code == 303
    assert sign_in(client, fleet_.token).status_code == 401


def test_a_sign_in_or_out_posted_from_another_site_is_refused(fleet):
    client = fleet.client
    forged = sign_in(client, fleet.fleet.token, origin="http://evil.example")
    assert forged.status_code == 403 and COOKIE not in client.cookies
    ours = sign_in(client, fleet.fleet.token, origin=fleet.server.url)
    assert ours.status_code == 303 and COOKIE in client.cookies
    assert client.post("/fleet/logout", headers={"origin": "null"}).status_code == 403  # a sandboxed frame
    assert client.get("/fleet.json").status_code == 200


def test_operator_tokens_still_read_every_device_and_a_bad_parameter_is_one_line(fleet):
    bearer = {"Authorization": f"Bearer {fleet.fleet.token}"}
    every = fleet.client.get("/fleet.json", headers=bearer).json()
    assert len(every["devices"]) == every["total"] == 6 and every["limit"] is None  # no limit: the whole fleet
    bad = fleet.client.get("/fleet.json", params={"sort": "price"}, headers=bearer)
    assert bad.status_code == 400 and bad.json()["error"].startswith("sort must be one of health, device")


def test_a_token_is_not_taken_in_clear_across_a_network(fleet):
    """Plain http from another machine (`edgeopt serve --host 0.0.0.0` without TLS): the form would send
    the token in clear, so it is refused; behind a TLS proxy on the same machine it is taken, and the
    cookie is Secure. (The app called directly, as from another address.)"""
    import asyncio

    async def sign_in_from(base_url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=fleet.server.app, client=("192.0.2.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as remote:
            return await remote.post("/fleet/login", data={"token": fleet.fleet.token})

    refused = asyncio.run(sign_in_from("http://fleet.example:8080"))
    assert refused.status_code == 403 and "over https" in refused.text and "set-cookie" not in refused.headers
    taken = asyncio.run(sign_in_from("https://fleet.example"))
    assert taken.status_code == 303 and "Secure" in taken.headers["set-cookie"]
