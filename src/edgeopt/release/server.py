"""`edgeopt serve`: the release repository over HTTP (an ASGI app run by uvicorn), and the place
devices report to. Any static web server can serve the repository instead (metadata/ and
targets/ are plain files); this one adds Range resumption, a bandwidth limit for experiments,
and authenticated device reports.

GET  /metadata/<N.role.json | root.json | timestamp.json>   TUF metadata, nothing else
GET  /targets/<channel>/<sha256>.<name>, /targets/jobs/<job>/<sha256>.<name>
     target files under their hash, with ETag and single-range Range support
POST /status   a device's report (fleet.DeviceReport, at most 16 KB), authenticated by the
               credential 'edgeopt device enroll' issued; kept in fleet/status.json (latest per
               device) and fleet/reports.jsonl (all, rotated at 10 MB)
POST /bench    a device's benchmark of a fleet job (a results file, at most 4 MB), authenticated
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeopt.fleet import MAX_BENCH_BYTES, MAX_REPORT_BYTES, DeviceReport, authenticated
from edgeopt.release.repository import FLEET, METADATA, TARGETS

CHUNK = 16 * 1024
MAX_LOG_BYTES = 10 * 1024 * 1024
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


def create_app(repo: Path, rate_kbps: float | None = None) -> Starlette:
    repo = Path(repo).resolve()
    lock = threading.Lock()

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

    def credential(request: Request) -> str | None:
        value = request.headers.get("authorization", "")
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    async def post_status(request: Request) -> Response:
        body = await _body(request, MAX_REPORT_BYTES)
        if body is None:
            return JSONResponse({"error": f"report larger than {MAX_REPORT_BYTES} bytes"}, status_code=413)
        try:
            report = DeviceReport.model_validate_json(body)
        except ValidationError as exc:
            return JSONResponse({"error": f"not a device report: {exc.errors()[0]['msg']}"}, status_code=400)
        if not authenticated(repo, report.device_id, credential(request)):
            return JSONResponse({"error": "unknown device or wrong credential"}, status_code=401)
        entry = {**report.model_dump(), "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fleet = repo / FLEET
        with lock:
            fleet.mkdir(exist_ok=True)
            status_file = fleet / "status.json"
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            status[report.device_id] = entry
            tmp = status_file.with_name(".status.json.tmp")
            tmp.write_text(json.dumps(status, indent=1))
            os.replace(tmp, status_file)
            log = fleet / "reports.jsonl"
            if log.is_file() and log.stat().st_size > MAX_LOG_BYTES:
                os.replace(log, fleet / "reports.1.jsonl")
            with open(log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return JSONResponse({"ok": True})

    async def post_bench(request: Request) -> Response:
        from edgeopt.results import Results

        body = await _body(request, MAX_BENCH_BYTES)
        if body is None:
            return JSONResponse({"error": f"benchmark larger than {MAX_BENCH_BYTES} bytes"}, status_code=413)
        device_id = request.query_params.get("device", "")
        if not authenticated(repo, device_id, credential(request)):
            return JSONResponse({"error": "unknown device or wrong credential"}, status_code=401)
        try:
            results = Results.model_validate_json(body)
        except ValidationError as exc:
            return JSONResponse({"error": f"not a device benchmark: {exc.errors()[0]['msg']}"}, status_code=400)
        if results.kind != "device-bench" or not re.fullmatch(r"[0-9a-f]{64}", results.source_results_sha256):
            return JSONResponse({"error": "not a device benchmark"}, status_code=400)
        folder = repo / FLEET / "bench" / device_id
        with lock:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{results.source_results_sha256}.json").write_bytes(body)
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/status", post_status, methods=["POST"]),
        Route("/bench", post_bench, methods=["POST"]),
        Route(f"/{METADATA}/{{path:path}}", serve(METADATA), methods=["GET"]),
        Route(f"/{TARGETS}/{{path:path}}", serve(TARGETS), methods=["GET"]),
    ])


def serve(repo: Path, host: str = "127.0.0.1", port: int = 8080, rate_kbps: float | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(repo, rate_kbps), host=host, port=port, log_level="warning")


def fleet_status(repo: Path) -> list[dict[str, Any]]:
    status_file = Path(repo) / FLEET / "status.json"
    if not status_file.is_file():
        return []
    return sorted(json.loads(status_file.read_text()).values(), key=lambda r: r["device_id"])
