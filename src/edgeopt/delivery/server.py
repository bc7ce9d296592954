"""The update server: a release repository over HTTP (an ASGI app run by uvicorn).

GET  /channels/<channel>.json[.sig], /releases/<version>/<file>  static files with ETag and
     single-range Range support (resumable downloads), optionally throttled to --rate KB/s;
POST /status  a device's report (device id, active version, latency, last error), kept in
     REPO/fleet/status.json (latest per device) and REPO/fleet/reports.jsonl (all).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CHUNK = 16 * 1024
SERVED_FOLDERS = ("channels", "releases")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _etag(path: Path, cache: dict[tuple[str, int, int], str]) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in cache:
        cache[key] = '"' + hashlib.sha256(path.read_bytes()).hexdigest() + '"'
    return cache[key]


def create_app(repo: Path, rate_kbps: float | None = None) -> Starlette:
    repo = Path(repo).resolve()
    etags: dict[tuple[str, int, int], str] = {}
    status_lock = threading.Lock()

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

    async def get_file(request: Request) -> Response:
        relative = request.path_params["path"]
        target = (repo / relative).resolve()
        if (
            relative.split("/", 1)[0] not in SERVED_FOLDERS
            or not target.is_relative_to(repo)
            or not target.is_file()
        ):
            return Response("not found", status_code=404)
        etag = _etag(target, etags)
        size = target.stat().st_size
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

    async def post_status(request: Request) -> Response:
        try:
            body = await request.json()
            report = {
                "device_id": str(body["device_id"])[:64],
                "active_version": body.get("active_version"),
                "latency_ms": body.get("latency_ms"),
                "last_error": (str(body["last_error"])[:500] if body.get("last_error") else None),
                "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected JSON with device_id"}, status_code=400)
        fleet = repo / "fleet"
        with status_lock:
            fleet.mkdir(exist_ok=True)
            status_file = fleet / "status.json"
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            status[report["device_id"]] = report
            tmp = status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(status, indent=1))
            os.replace(tmp, status_file)
            with open(fleet / "reports.jsonl", "a") as log:
                log.write(json.dumps(report) + "\n")
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/status", post_status, methods=["POST"]),
        Route("/{path:path}", get_file, methods=["GET"]),
    ])


def serve(repo: Path, host: str = "127.0.0.1", port: int = 8080, rate_kbps: float | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(repo, rate_kbps), host=host, port=port, log_level="warning")


def fleet_status(repo: Path) -> list[dict[str, Any]]:
    status_file = Path(repo) / "fleet" / "status.json"
    if not status_file.is_file():
        return []
    return sorted(json.loads(status_file.read_text()).values(), key=lambda r: r["device_id"])
