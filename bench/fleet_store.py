"""Fleet store benchmark: N devices reporting once each, into SQLite and into PostgreSQL.

    python bench/fleet_store.py [--devices 10000] [--threads 4] [--postgres URL] [--out bench/results]

Two paths, each on each database (a fresh one per measurement; devices enrolled first, not timed):
  store     FleetStore.record_report with the request's nonce: what the server does for one report
            (history insert, upsert of the device's latest row, nonce), from --threads threads
  endpoint  signed POST /status to `edgeopt serve` (its own process, on 127.0.0.1) from --threads
            client threads: signing, HTTP, the checks from the headers (enrollment, freshness,
            signature, nonce), the body's hash, then the store
PostgreSQL: --postgres URL (an empty database the benchmark may fill), or a throwaway server started
from the installed binaries (tests/fleet_helpers.py; as root through runuser), or skipped, saying why.
Issue 32's target: 10,000 devices reporting once each into SQLite in under a minute.
Writes bench/results/fleet_store.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0  # issue 32: 10,000 devices into SQLite in under a minute


def _report_body(device: str, release: int) -> bytes:
    from edgeopt.fleet.report import DeviceReport, ServiceWindow

    window = ServiceWindow(release=release, start="2026-12-01T10:00:00Z", end="2026-12-01T10:10:00Z", frames=600,
                           latency_p50_ms=4.2, latency_p90_ms=6.1, mean_confidence=0.92, low_confidence_share=0.04)
    report = DeviceReport(device_id=device, channel="stable", active_release=release, previous_release=release - 1,
                          device_class="x86_64-2c", rollbacks=0, restarts=1, service=window,
                          profile={"machine": "x86_64", "cores": 2, "runtimes": {"ai-edge-litert": "2.3.0"}})
    return report.model_dump_json().encode()


def _run_threads(devices: list[str], threads: int, work: Callable[[list[str]], None]) -> float:
    """Seconds for `threads` workers to share `devices` between them (started together)."""
    shares = [devices[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(share: list[str]) -> None:
        barrier.wait()
        try:
            work(share)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(s,)) for s in shares]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} workers failed; first: {errors[0]!r}")
    return seconds


def measure_store(url: str, devices: int, threads: int = 1, prefix: str = "store") -> dict[str, Any]:
    """`devices` devices, each reporting once through FleetStore.record_report (with a nonce)."""
    import os

    from edgeopt.fleet.report import DeviceReport
    from edgeopt.fleet.store import FleetStore

    now = dt.datetime.now(dt.UTC)
    ids = [f"{prefix}-{i:05d}" for i in range(devices)]
    with FleetStore(url) as store:
        store.enroll_many({d: os.urandom(32) for d in ids}, now)
        reports = {d: DeviceReport.model_validate_json(_report_body(d, 2)) for d in ids}

        def work(share: list[str]) -> None:
            for device in share:
                store.record_report(reports[device], now, nonce=(os.urandom(16).hex(), int(now.timestamp())))

        seconds = _run_threads(ids, threads, work)
        stored = store.count_reports()
    return {"path": "store", "devices": devices, "threads": threads, "seconds": seconds,
            "reports_per_s": devices / seconds, "reports_stored": stored}


def measure_endpoint(url: str, devices: int, threads: int = 4, prefix: str = "http") -> dict[str, Any]:
    """`devices` devices, each sending one signed report to POST /status of `edgeopt serve`, run
    as its own process (as in production: the senders do not share its interpreter)."""
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeopt.fleet.auth import parse_public_key, public_key_text, sign_request
    from edgeopt.fleet.store import FleetStore

    now = dt.datetime.now(dt.UTC)
    ids = [f"{prefix}-{i:05d}" for i in range(devices)]
    keys = {d: Ed25519PrivateKey.generate() for d in ids}
    with FleetStore(url) as store:
        store.enroll_many({d: parse_public_key(public_key_text(k)) for d, k in keys.items()}, now)
    bodies = {d: _report_body(d, 2) for d in ids}
    with tempfile.TemporaryDirectory() as tmp, _serve(Path(tmp), url) as base:
        def work(share: list[str]) -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                for device in share:
                    body = bodies[device]
                    headers = sign_request(keys[device], device, "POST", "/status", body, time.time())
                    answer = client.post("/status", content=body, headers={**headers, "Content-Type": "application/json"})
                    if answer.status_code != 200:
                        raise RuntimeError(f"{device}: {answer.status_code} {answer.text[:200]}")

        seconds = _run_threads(ids, threads, work)
    with FleetStore(url) as store:
        stored = store.count_reports()
    return {"path": "endpoint", "devices": devices, "threads": threads, "seconds": seconds,
            "reports_per_s": devices / seconds, "reports_stored": stored}


@contextmanager
def _serve(tmp: Path, url: str) -> Iterator[str]:
    """`edgeopt serve` of a new, empty release repository on a free loopback port."""
    import socket
    import subprocess

    import httpx

    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository

    generate_keys(tmp / "keys", ("stable",))
    Repository(tmp / "repo").init(tmp / "keys", ("stable",))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen([sys.executable, "-m", "edgeopt", "serve", str(tmp / "repo"), "--port", str(port), "--db", url],
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/metadata/timestamp.json", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgeopt serve did not start: {(tmp / 'serve.log').read_text()[-500:]}")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@contextmanager
def _databases(postgres: str | None) -> Iterator[tuple[Callable[[str], Any], str | None]]:
    """A factory of fresh PostgreSQL database URLs (a context manager per name), or the reason there is none."""
    if postgres:
        @contextmanager
        def given(_name: str) -> Iterator[str]:
            yield postgres

        yield given, None
        return
    sys.path.insert(0, str(ROOT))
    try:
        from pytest_postgresql.janitor import DatabaseJanitor
        from tests.fleet_helpers import PG_USER, PostgresServer

        server = PostgresServer()
    except Exception as exc:  # no binaries, no unprivileged user, no pytest-postgresql: say so
        yield (lambda _name: None), f"PostgreSQL could not start here: {exc}"
        return

    @contextmanager
    def fresh(name: str) -> Iterator[str]:
        with DatabaseJanitor(user=PG_USER, host="127.0.0.1", port=server.port, dbname=name):
            yield server.url(name)

    try:
        yield fresh, None
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000, help="devices, each reporting once")
    parser.add_argument("--threads", type=int, default=4, help="concurrent senders")
    parser.add_argument("--paths", default="store,endpoint", help="store, endpoint or both")
    parser.add_argument("--postgres", help="URL of an empty PostgreSQL database [default: start a throwaway server]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not set(paths) <= {"store", "endpoint"} or args.devices < 1 or args.threads < 1:
        print("--paths takes store and/or endpoint; --devices and --threads at least 1", file=sys.stderr)
        return 2
    commit = provenance.commit("bench/fleet_store.py")
    measure = {"store": measure_store, "endpoint": measure_endpoint}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            url = f"sqlite:///{Path(tmp) / f'{path}.db'}"
            rows.append({"database": "sqlite", **measure[path](url, args.devices, args.threads)})
            print(f"sqlite {path}: {rows[-1]['reports_per_s']:.0f} reports/s", file=sys.stderr)
    with _databases(args.postgres) as (database, reason):
        for path in paths:
            if reason:
                skipped["postgresql"] = reason
                break
            with database(f"bench_{path}") as url:
                rows.append({"database": "postgresql", **measure[path](url, args.devices, args.threads)})
            print(f"postgresql {path}: {rows[-1]['reports_per_s']:.0f} reports/s", file=sys.stderr)
    sqlite_store = next((r for r in rows if r["database"] == "sqlite" and r["path"] == "store"), None)
    sqlite_endpoint = next((r for r in rows if r["database"] == "sqlite" and r["path"] == "endpoint"), None)
    scale = 10_000 / args.devices
    result = {
        "edgeopt_fleet_store_bench": 1,
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": args.devices,
        "threads": args.threads,
        "what_is_timed": "each device's one report: store = FleetStore.record_report with its nonce; endpoint = a signed "
                         "POST /status to a real server on loopback (signing, HTTP, header checks, body hash, store)",
        "runs": rows,
        "skipped": skipped,
        "target": {"what": "10,000 devices reporting once each into SQLite", "seconds": TARGET_S,
                   "store_seconds_for_10000": sqlite_store["seconds"] * scale if sqlite_store else None,
                   "endpoint_seconds_for_10000": sqlite_endpoint["seconds"] * scale if sqlite_endpoint else None},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet_store.json").write_text(json.dumps(result, indent=1))
    print(f"{args.devices:,} devices reporting once each, {args.threads} sender threads:")
    print(f"{'database':<11} {'path':<9} {'seconds':>8} {'reports/s':>10} {'stored':>8}")
    for r in rows:
        print(f"{r['database']:<11} {r['path']:<9} {r['seconds']:>8.1f} {r['reports_per_s']:>10.0f} {r['reports_stored']:>8,}")
    for database, reason in skipped.items():
        print(f"{database}: skipped ({reason})")
    target = result["target"]
    for key in ("store_seconds_for_10000", "endpoint_seconds_for_10000"):
        if target[key] is None:
            continue
        if args.devices == 10_000:
            verdict = "MET" if target[key] < TARGET_S else "NOT MET"
            print(f"10,000 devices into SQLite via the {key.split('_')[0]}: {target[key]:.1f} s (target < {TARGET_S:.0f} s: {verdict})")
        else:
            print(f"10,000 devices into SQLite via the {key.split('_')[0]}: ~{target[key]:.1f} s scaled from {args.devices:,} "
                  "(no verdict: run with --devices 10000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
