"""The fleet page of `edgeopt serve`: every device's health and each channel's rollout, for operators.

GET  /fleet             the page, for a signed-in operator (anyone else is sent to /fleet/login); its
                        script polls /fleet.json and redraws in place, every 10 s by default
GET  /fleet/login       the sign-in form: the operator pastes the token of 'edgeopt fleet add-operator'
POST /fleet/login       checks the token and opens a session: a random id in a cookie (HttpOnly,
                        SameSite=Strict, Path=/, 8 hours; Secure over https). The token is sent once, in
                        the body of a POST: never in a URL, never kept by the browser; and only over https
                        or from loopback, never in clear across a network.
POST /fleet/logout      ends the session
GET  /fleet/assets/<f>  the page's script and style sheet: edgeopt's own code, no fleet data
GET  /fleet.json        the fleet, for a session or an operator token (Authorization: Bearer). With
                        limit (and offset, sort, order, q, health, channel: fleet.view.Query) one page
                        of devices, so a browser never holds the whole of a large fleet.

Sessions live in the server process's memory (a restart signs everyone out); the server keeps each
session id's sha256 and the digest of the token it was opened with, and checks that token on every
request, so revoking an operator ends their sessions at once. Every page carries a Content-Security-
Policy that allows scripts, styles and requests from this server only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from edgeopt.errors import ConfigError
from edgeopt.fleet import auth
from edgeopt.fleet.overview import device_row
from edgeopt.fleet.store import FleetStore
from edgeopt.fleet.view import Entry, Query, judge, rollout_view, select, summary
from edgeopt.rollout.control import FRESH_S, Rollouts
from edgeopt.rollout.policy import ACTIVE, Criteria, Evidence, evidence_from

COOKIE = "edgeopt_fleet_session"
# How long a session lasts from sign-in (not extended by use): a working day.
SESSION_S = 8 * 3600.0
# Open sessions kept at most; beyond it the oldest is closed (a sign-in costs memory).
MAX_SESSIONS = 1000
# Largest sign-in form read.
MAX_FORM_BYTES = 4096
# After re-reading the fleet, wait this many times as long as the read took before the next one: a
# large fleet that reports all the time costs the server at most ~1/(1+N) of a core, however many
# pages poll it; a small fleet is re-read as soon as anything changed.
REREAD_PAUSE = 9.0
ASSETS = {"fleet.js": "text/javascript; charset=utf-8", "fleet.css": "text/css; charset=utf-8",
          "icon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it a browser sends "Origin: null" on the sign-in form's POST
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> str:
    return resources.files("edgeopt.fleet").joinpath("assets", name).read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Sessions:
    """Signed-in operators: sha256 of the session id -> (token digest, expiry, seconds since the epoch)."""

    def __init__(self, lifetime_s: float = SESSION_S, cap: int = MAX_SESSIONS) -> None:
        self.lifetime_s, self.cap = lifetime_s, cap
        self._open: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, token_digest: str, now: float) -> str:
        """A new session for the token; returns the id that goes into the cookie."""
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._open = {k: v for k, v in self._open.items() if v[1] > now}
            while len(self._open) >= self.cap:
                del self._open[min(self._open, key=lambda k: self._open[k][1])]
            self._open[_digest(session)] = (token_digest, now + self.lifetime_s)
        return session

    def token_digest(self, session: str | None, now: float) -> str | None:
        """The token digest of an open, unexpired session, or None."""
        if not session:
            return None
        with self._lock:
            found = self._open.get(_digest(session))
        return found[0] if found and found[1] > now else None

    def close(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._open.pop(_digest(session), None)


@dataclass(frozen=True)
class _Known:
    """A device as last read: what its row was built from, and what was built."""

    report_id: int | None
    enrolled: dt.datetime
    revoked: dt.datetime | None
    entry: Entry
    evidence: Evidence | None


class FleetData:
    """The store's devices as the page needs them. Re-read only when the fleet changed (store.marker
    or a running rollout's criteria), and then not sooner than REREAD_PAUSE times the last read's
    duration; a re-read fetches only the reports that changed since (store.latest_ids)."""

    def __init__(self, store: FleetStore, repo: Any) -> None:
        self.store, self.rollouts = store, Rollouts(repo)
        self._lock = threading.Lock()
        self._key: Any = None
        self._criteria: dict[str, Criteria] = {}
        self._known: dict[str, _Known] = {}
        self._entries: list[Entry] = []
        self._evidence: dict[str, list[Evidence]] = {}
        self._next_read = 0.0

    def _read(self, criteria: dict[str, Criteria], now: float) -> None:
        if criteria != self._criteria:  # every device is judged again
            self._known, self._criteria = {}, criteria
        devices, report_ids = self.store.devices(), self.store.latest_ids()
        changed = [d for d in devices if (k := self._known.get(d.device_id)) is None
                   or (k.report_id, k.enrolled, k.revoked) != (report_ids.get(d.device_id), d.enrolled, d.revoked)]
        fresh = {s.device_id: s for s in self.store.latest(devices=[d.device_id for d in changed if d.device_id in report_ids])}
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        for device in changed:
            stored = fresh.get(device.device_id)
            row = device_row(device.device_id, device.enrolled, device.revoked, stored, moment)
            received = stored.received.timestamp() if stored else None
            evidence = None
            if stored is not None and received is not None and row["channel"] in criteria and device.revoked is None:
                evidence = evidence_from(stored.report.model_dump(), received)  # as `rollout watch` reads it
            entry = Entry(row, judge(row, criteria.get(row["channel"], Criteria())), received)
            self._known[device.device_id] = _Known(stored.id if stored else None, device.enrolled, device.revoked, entry,
                                                   evidence)
        known = [self._known[d.device_id] for d in devices]
        self._entries = [k.entry for k in known]
        self._evidence = {}
        for k in known:
            if k.evidence is not None:
                self._evidence.setdefault(k.entry.row["channel"], []).append(k.evidence)

    def answer(self, query: Query, now: float) -> dict[str, Any]:
        warnings = []
        try:
            states = self.rollouts.states()
        except ConfigError as exc:  # a damaged rollout file: say so on the page, show the devices anyway
            states, warnings = [], [str(exc)]
        criteria = {s.channel: s.criteria for s in states if s.status in ACTIVE}
        with self._lock:
            key = (self.store.marker(), tuple(sorted(criteria.items())))
            if key != self._key and time.monotonic() >= self._next_read:
                started = time.monotonic()
                self._read(criteria, now)
                self._key, self._next_read = key, time.monotonic() + REREAD_PAUSE * (time.monotonic() - started)
            entries, evidence = self._entries, self._evidence
        rollouts = [rollout_view(s, [e for e in evidence.get(s.channel, []) if now - e.reported_at <= FRESH_S], now)
                    for s in states]
        generated = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"generated": generated, "summary": summary(entries, now), "rollouts": rollouts, "warnings": warnings,
                **select(entries, query, now)}


def _same_origin(request: Request) -> bool:
    """A POST from this server's own pages: a browser sends Origin on every POST; a form on another
    site (or a sandboxed one, Origin: null) is refused. The SameSite=Strict cookie is the other half."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _private(request: Request) -> bool:
    """Whether a token may be sent over this connection: https (TLS in front of the server, which
    tells uvicorn so), or plain http from this very machine (loopback)."""
    import ipaddress

    if request.url.scheme == "https":
        return True
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _template(name: str, **values: str) -> str:
    import html

    return string.Template(_asset(name)).substitute({k: html.escape(v, quote=True) for k, v in values.items()})


def fleet_routes(store: FleetStore, repo: Any, clock: Callable[[], float], refresh_s: float = 10.0) -> list[Route]:
    """The page's routes and GET /fleet.json, on the server's store, repository and clock."""
    sessions = Sessions()
    data = FleetData(store, repo)

    async def operator(request: Request) -> str | None:
        """The operator a request comes from (an operator token, or a session), or None."""
        token = auth.bearer_token(request.headers)
        digest = auth.token_digest(token) if token else sessions.token_digest(request.cookies.get(COOKIE), clock())
        return await run_in_threadpool(store.operator, digest) if digest else None

    def login_form(error: str = "", status: int = 200) -> HTMLResponse:
        page = _template("login.html", error=error, hidden="" if error else "hidden")
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)

    async def get_page(request: Request) -> Response:
        name = await operator(request)
        if name is None:
            return RedirectResponse("/fleet/login", status_code=303, headers={"Cache-Control": "no-store"})
        page = _template("fleet.html", operator=name, refresh_ms=str(round(refresh_s * 1000)))
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    async def get_login(request: Request) -> Response:
        if await operator(request) is not None:
            return RedirectResponse("/fleet", status_code=303)
        return login_form()

    async def post_login(request: Request) -> Response:
        if not _same_origin(request):
            return JSONResponse({"error": "sign in from this server's own page"}, status_code=403)
        if not _private(request):
            return login_form("Sign in over https (put TLS in front of 'edgeopt serve') or on the server's own machine: "
                              "over plain http this form would send your token across the network in clear.", 403)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return login_form("That is not an operator token.", 413)
        token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
        digest = auth.token_digest(token) if token else None
        if digest is None or await run_in_threadpool(store.operator, digest) is None:
            return login_form("That token is not an operator's, or it was revoked. Paste the whole content of the "
                              "file 'edgeopt fleet add-operator --out' wrote.", 401)
        answer = RedirectResponse("/fleet", status_code=303)
        answer.set_cookie(COOKIE, sessions.open(digest, clock()), max_age=int(SESSION_S), path="/",
                          secure=request.url.scheme == "https", httponly=True, samesite="strict")
        return answer

    async def post_logout(request: Request) -> Response:
        if not _same_origin(request):
            return JSONResponse({"error": "sign out from this server's own page"}, status_code=403)
        sessions.close(request.cookies.get(COOKIE))
        answer = RedirectResponse("/fleet/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict")
        return answer

    async def get_asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("not found", status_code=404)
        return Response(_asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def get_fleet(request: Request) -> Response:
        name = await operator(request)
        if name is None:
            return JSONResponse({"error": "an operator token is needed (Authorization: Bearer ...), or sign in at /fleet; "
                                 "issue one with 'edgeopt fleet add-operator'"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"})
        try:
            query = Query.from_params(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        answer = await run_in_threadpool(data.answer, query, clock())
        return JSONResponse({**answer, "operator": name}, headers={"Cache-Control": "no-store"})

    return [
        Route("/fleet.json", get_fleet, methods=["GET"]),
        Route("/fleet", get_page, methods=["GET"]),
        Route("/fleet/login", get_login, methods=["GET"]),
        Route("/fleet/login", post_login, methods=["POST"]),
        Route("/fleet/logout", post_logout, methods=["POST"]),
        Route("/fleet/assets/{name}", get_asset, methods=["GET"]),
    ]
