"""`edgeopt serve`: the release repository over HTTP (an ASGI app run by uvicorn), and the place
devices report to. Any static web server can serve the repository instead (metadata/ and
targets/ are plain files); this one adds Range resumption, a bandwidth limit for experiments,
and authenticated device reports.

GET  /metadata/<N.role.json | root.json | timestamp.json>   TUF metadata, nothing else
GET  /targets/<channel>/<sha256>.<name>, /targets/jobs/<job>/<sha256>.<name>
     target files under their hash, with ETag and single-range Range support
POST /status   a device's report (fleet.DeviceReport, at most 16 KB), signed with the device's key
               (fleet/auth.py); kept in the fleet database (history, and each device's latest)
POST /bench    a device's benchmark of a fleet job (a results file, at most 4 MB), signed likewise;
               kept in fleet/bench/<device>/<run sha256>.json under the signer's id and the class it
               last reported (the newest MAX_BENCH_FILES of each device)
GET  /fleet.json   every device's latest state (or one page of them) and each channel's rollout, for an
                   operator's token (Authorization: Bearer) or a signed-in operator's session
GET  /fleet        the fleet page, for operators who signed in at /fleet/login (fleet/page.py)

A signed request is checked from its headers -- enrollment, freshness, signature, nonce -- before
a byte of its body is read; then at most the endpoint's cap is read and checked against its
signed sha256. When the fleet database or the disk fails (down, full), a device is answered 503
with Retry-After, and the server logs one line a minute about it, not a traceback per request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeopt.fleet import auth
from edgeopt.fleet.page import fleet_routes
from edgeopt.fleet.report import MAX_BENCH_BYTES, MAX_REPORT_BYTES, DeviceReport
from edgeopt.fleet.store import FleetStore, StoreUnavailable, open_store
from edgeopt.release.repository import FLEET, METADATA, TARGETS

CHUNK = 16 * 1024
# Benchmark uploads kept per device (the newest); an older one is deleted when a new job's arrives.
MAX_BENCH_FILES = 16
# What a device is told to wait when the database or the disk fails, and how often that is logged (s).
RETRY_AFTER_S = 60
LOG_EVERY_S = 60.0
log = logging.getLogger("edgeopt.serve")
_METADATA_NAME = re.compile(r"^(\d+\.)?[a-z][a-z0-9-]*\.json$")
_TARGET_PATH = re.compile(r"^([a-z][a-z0-9-]{0,31}|jobs/[A-Za-z0-9][A-Za-z0-9._-]{0,63})/[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _served_file(repo: Path, folder: str, relative: str) -> Path | None:
    """The file a request may have, or None: only metadata and hash-named targets, inside the repo."""
    pattern = _METADATA_NAME if folder == METADATA else _TARGET_PATH
    if not pattern.match(relative) or ".." in relative.split("/"):
        return None
    base = (repo / folder).resolve()
    target = (base / relative).resolve()
    return target if target.is_relative_to(base) and target.is_file() else None


async def _body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` (not read past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class TooLarge(Exception):
    """A request body over its endpoint's cap (declared or read): 413, not read further."""


async def _signed_body(request: Request, store: FleetStore, endpoint: str, limit: int, now: float) -> tuple[auth.SignedHeaders, bytes]:
    """The body of a request signed by an enrolled device, read only once the headers prove it:
    Unauthenticated (or TooLarge) before anything past the headers is read."""
    signed = auth.read_signed_headers(request.headers)
    auth.check_fresh(signed, now)
    public_key, replayed = await run_in_threadpool(store.credentials, signed.device_id, signed.nonce)
    if public_key is None:
        raise auth.Unauthenticated(f"device {signed.device_id} is not enrolled (or was revoked); enroll it with "
                                   "'edgeopt fleet enroll'")
    auth.check_signature(public_key, signed, request.method, endpoint)
    if replayed:
        raise auth.Replayed(signed.device_id)
    body = await _body(request, limit)
    if body is None:
        raise TooLarge
    auth.check_body(signed, body)
    return signed, body


def create_app(repo: Path, rate_kbps: float | None = None, db: str | None = None,
               clock: Callable[[], float] = time.time, page_refresh_s: float = 10.0) -> Starlette:
    """The server of one repository; device reports go to the fleet database `db` (a URL; default
    REPO/fleet/fleet.db), opened (and migrated) here. `clock` is the time source of the freshness check,
    the operators' sessions and the fleet page; the page polls /fleet.json every `page_refresh_s`."""
    repo = Path(repo).resolve()
    lock = threading.Lock()
    store = open_store(repo, db)

    async def stream(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
                if rate_kbps:
                    await asyncio.sleep(len(chunk) / (rate_kbps * 1024))

    def serve(folder: str) -> Any:
        async def get(request: Request) -> Response:
            target = _served_file(repo, folder, request.path_params["path"])
            if target is None:
                return Response("not found", status_code=404)
            stat = target.stat()
            etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
            size = stat.st_size
            headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            start, end, status = 0, size - 1, 200
            range_header = request.headers.get("range")
            if_range = request.headers.get("if-range")
            if range_header and (if_range is None or if_range == etag):
                match = _RANGE.match(range_header.strip())
                if not match or (not match.group(1) and not match.group(2)):
                    return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(0, size - int(match.group(2)))
                if start >= size or start > end:
                    return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(end - start + 1)
            media = "application/json" if target.suffix == ".json" else "application/octet-stream"
            return StreamingResponse(stream(target, start, end), status_code=status, headers=headers, media_type=media)

        return get

    failing = {"logged": float("-inf"), "since": 0}

    def unavailable(what: str) -> JSONResponse:
        """503 with Retry-After; one log line a minute, however many requests fail."""
        now = time.monotonic()
        failing["since"] += 1
        if now - failing["logged"] >= LOG_EVERY_S:
            log.warning("answering 503 to device requests (%d since the last line): %s", failing["since"], what)
            failing["logged"], failing["since"] = now, 0
        return JSONResponse({"error": "the server's database or disk is unavailable now; try again later"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        return unavailable(str(exc))

    def refused(exc: Exception, limit: int) -> JSONResponse:
        if isinstance(exc, TooLarge):
            return JSONResponse({"error": f"body larger than {limit} bytes"}, status_code=413)
        return JSONResponse({"error": str(exc)}, status_code=401)

    async def post_status(request: Request) -> Response:
        now = clock()
        try:
            signed, body = await _signed_body(request, store, "/status", MAX_REPORT_BYTES, now)
        except (auth.Unauthenticated, TooLarge) as exc:
            return refused(exc, MAX_REPORT_BYTES)
        try:
            report = DeviceReport.model_validate_json(body)
        except ValidationError as exc:
            return JSONResponse({"error": f"not a device report: {exc.errors()[0]['msg']}"}, status_code=400)
        if report.device_id != signed.device_id:
            return JSONResponse({"error": f"the report names {report.device_id} but is signed by {signed.device_id}"},
                                status_code=401)
        received = dt.datetime.fromtimestamp(now, dt.UTC)
        try:
            await run_in_threadpool(store.record_report, report, received, (signed.nonce, signed.time_s))
        except auth.Replayed as exc:
            return refused(exc, MAX_REPORT_BYTES)
        return JSONResponse({"ok": True})

    async def post_bench(request: Request) -> Response:
        from edgeopt.results import Results

        now = clock()
        try:
            signed, body = await _signed_body(request, store, "/bench", MAX_BENCH_BYTES, now)
        except (auth.Unauthenticated, TooLarge) as exc:
            return refused(exc, MAX_BENCH_BYTES)
        try:
            results = Results.model_validate_json(body)
        except ValidationError as exc:
            return JSONResponse({"error": f"not a device benchmark: {exc.errors()[0]['msg']}"}, status_code=400)
        if results.kind != "device-bench" or not re.fullmatch(r"[0-9a-f]{64}", results.source_results_sha256):
            return JSONResponse({"error": "not a device benchmark"}, status_code=400)
        if not results.variants:
            return JSONResponse({"error": "a device benchmark measures at least one variant"}, status_code=400)
        named = results.machine.get("device_id")
        if named is not None and named != signed.device_id:
            return JSONResponse({"error": f"the benchmark names {named} but is signed by {signed.device_id}"}, status_code=401)
        try:
            await run_in_threadpool(store.use_nonce, signed.device_id, signed.nonce, signed.time_s,
                                    dt.datetime.fromtimestamp(now, dt.UTC))
        except auth.Replayed as exc:
            return refused(exc, MAX_BENCH_BYTES)
        # who measured is the signer, of the class it last reported (what `fleet show` shows), not what the body says
        latest = await run_in_threadpool(store.latest, None, [signed.device_id])
        reported = latest[0].report.device_class if latest else None
        machine = {**results.machine, "device_id": signed.device_id,
                   "device_class": reported or results.machine.get("device_class")}
        kept = results.model_copy(update={"machine": machine}).to_json().encode()
        folder = repo / FLEET / "bench" / signed.device_id
        try:
            with lock:
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{results.source_results_sha256}.json"
                (folder / name).write_bytes(kept)
                others = sorted((f for f in folder.glob("*.json") if f.name != name), key=lambda f: f.stat().st_mtime_ns)
                for file in others[:max(0, len(others) - (MAX_BENCH_FILES - 1))]:
                    file.unlink(missing_ok=True)
        except OSError as exc:  # a full disk, a read-only folder: the device tries again later
            return unavailable(f"cannot keep a benchmark in {folder}: {exc}")
        return JSONResponse({"ok": True})

    app = Starlette(routes=[
        Route("/status", post_status, methods=["POST"]),
        Route("/bench", post_bench, methods=["POST"]),
        *fleet_routes(store, repo, clock, page_refresh_s),
        Route(f"/{METADATA}/{{path:path}}", serve(METADATA), methods=["GET"]),
        Route(f"/{TARGETS}/{{path:path}}", serve(TARGETS), methods=["GET"]),
    ], exception_handlers={StoreUnavailable: store_unavailable})
    app.state.store = store
    return app


def serve(repo: Path, host: str = "127.0.0.1", port: int = 8080, rate_kbps: float | None = None,
          db: str | None = None) -> None:
    import uvicorn

    app = create_app(repo, rate_kbps, db)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.store.close()
