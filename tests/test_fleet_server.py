"""The report endpoints of `edgeopt serve`, against a real server on 127.0.0.1: a signed report is
stored once; unsigned, unenrolled, revoked, stale, replayed and forged requests are refused --
from their headers, before the body is read; what a logging mirror saw is of no use to it; the
fleet's data is read with an operator's token."""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeopt.device.agent import Agent, AgentConfig
from edgeopt.fleet import auth
from edgeopt.fleet.auth import HEADER_DEVICE, HEADER_SIGNATURE, MAX_SKEW_S, load_device_key, sign_request
from edgeopt.fleet.report import MAX_BENCH_BYTES, MAX_REPORT_BYTES
from tests.delivery_helpers import ServerThread
from tests.fleet_helpers import enroll_device

NOW = 1_796_000_000.0  # the server's simulated clock (December 2026)


@pytest.fixture
def served(tmp_path, db_url):
    repo = tmp_path / "repo"
    enroll_device(repo, "sorter-1", tmp_path / "sorter-1.key", db=db_url)
    enroll_device(repo, "sorter-2", tmp_path / "sorter-2.key", db=db_url)
    clock = [NOW]
    with ServerThread(repo, db=db_url, clock=lambda: clock[0]) as server, httpx.Client(base_url=server.url) as client:
        yield SimpleNamespace(client=client, server=server, store=server.app.state.store, clock=clock,
                              key=load_device_key(tmp_path / "sorter-1.key"), tmp=tmp_path)


def _report(device: str = "sorter-1", release: int = 3) -> bytes:
    return json.dumps({"device_id": device, "channel": "stable", "active_release": release}).encode()


def test_a_signed_report_is_stored_once_and_every_forgery_is_refused(served):
    client, key = served.client, served.key

    def post(body: bytes, headers: dict[str, str], path: str = "/status") -> tuple[int, str]:
        answer = client.post(path, content=body, headers=headers)
        return answer.status_code, answer.json().get("error", "")

    body = _report()
    signed = sign_request(key, "sorter-1", "POST", "/status", body, NOW)
    assert post(body, signed) == (200, "")
    status, error = post(body, signed)  # the very same request again
    assert status == 401 and "replayed" in error
    status, error = post(_report(release=4), {**signed, auth.HEADER_NONCE: "f" * 32})  # what a mirror logged, altered
    assert status == 401 and "bad signature" in error
    status, error = post(_report(release=4), sign_request(key, "sorter-1", "POST", "/status", body, NOW))
    assert status == 401 and "does not match its signed sha256" in error  # a body swapped under a valid signature
    stranger = Ed25519PrivateKey.generate()
    assert post(body, sign_request(stranger, "sorter-1", "POST", "/status", body, NOW))[0] == 401
    status, error = post(body, sign_request(key, "sorter-1", "POST", "/bench", body, NOW))  # signed for another endpoint
    assert status == 401 and "bad signature" in error
    status, error = post(_report("intruder"), sign_request(key, "intruder", "POST", "/status", _report("intruder"), NOW))
    assert status == 401 and "not enrolled" in error
    status, error = post(_report("sorter-2"), sign_request(key, "sorter-1", "POST", "/status", _report("sorter-2"), NOW))
    assert status == 401 and "signed by sorter-1" in error  # one enrolled device cannot speak for another
    status, error = post(body, {"Content-Type": "application/json"})
    assert status == 401 and "must be signed" in error
    for offset, word in ((-MAX_SKEW_S - 5, "behind"), (MAX_SKEW_S + 5, "ahead of")):
        status, error = post(body, sign_request(key, "sorter-1", "POST", "/status", body, NOW + offset))
        assert status == 401 and word in error and "NTP" in error
    assert post(body, sign_request(key, "sorter-1", "POST", "/status", body, NOW - MAX_SKEW_S + 5))[0] == 200

    served.store.revoke("sorter-1", served.store.devices()[0].enrolled)
    status, error = post(body, sign_request(key, "sorter-1", "POST", "/status", body, NOW))
    assert status == 401 and "revoked" in error
    assert served.store.count_reports() == 2 and [s.report.active_release for s in served.store.history()] == [3, 3]


def _raw_post(port: int, path: str, headers: dict[str, str], declared_length: int) -> bytes:
    """Send the headers and one byte of a body that never comes; return the answer, which can only
    arrive if the server decided without reading the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 f"Content-Length: {declared_length}", *(f"{k}: {v}" for k, v in headers.items())]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n{").encode())
        return conn.recv(4096)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_credentials_are_checked_before_the_body_is_read(served):
    port, key = served.server.port, served.key
    stranger = Ed25519PrivateKey.generate()
    used = sign_request(key, "sorter-1", "POST", "/status", _report(), NOW)
    assert served.client.post("/status", content=_report(), headers=used).status_code == 200
    refused = {
        "unsigned report": ("/status", {}, 10_000),
        "unsigned upload of 4 MB": ("/bench", {}, 4_000_000),
        "forged upload": ("/bench", sign_request(stranger, "sorter-1", "POST", "/bench", b"x" * 4_000_000, NOW), 4_000_000),
        "replayed report": ("/status", used, 10_000),
        "stale report": ("/status", sign_request(key, "sorter-1", "POST", "/status", b"{}", NOW - 3600), 10_000),
    }
    for what, (path, headers, length) in refused.items():
        assert _raw_post(port, path, headers, length).startswith(b"HTTP/1.1 401"), what
    over_cap = sign_request(key, "sorter-1", "POST", "/status", b"x" * (MAX_REPORT_BYTES + 1), NOW)
    assert _raw_post(port, "/status", over_cap, MAX_REPORT_BYTES + 1).startswith(b"HTTP/1.1 413")
    over_cap = sign_request(key, "sorter-1", "POST", "/bench", b"", NOW)
    assert _raw_post(port, "/bench", over_cap, MAX_BENCH_BYTES + 1).startswith(b"HTTP/1.1 413")
    assert served.store.count_reports() == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_mirror_that_logs_the_agents_report_can_neither_replay_nor_alter_it(served, tmp_path):
    """The real agent's report, as a logging proxy on the way would record it, sent again by the proxy."""
    served.clock[0] = time.time()  # the agent signs with the real clock
    root = tmp_path / "root.json"
    root.write_text("{}")  # reports need no metadata
    agent = Agent(AgentConfig(server=served.server.url, state=tmp_path / "device", root=root, device_id="sorter-1",
                              key_file=tmp_path / "sorter-1.key"))
    logged: list[httpx.Request] = []
    agent.client.event_hooks["request"].append(logged.append)
    agent.report()
    assert served.store.count_reports() == 1 and len(logged) == 1
    request = logged[0]
    assert "authorization" not in request.headers and HEADER_SIGNATURE in request.headers  # no secret on the wire
    headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-edgeopt") or k.lower() == "content-type"}
    replay = served.client.post("/status", content=request.content, headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    altered = json.loads(request.content)
    altered["last_error"] = "forged by the mirror"
    forged = served.client.post("/status", content=json.dumps(altered).encode(),
                                headers={**headers, auth.HEADER_NONCE: "0" * 32})
    assert forged.status_code == 401
    as_other = served.client.post("/status", content=request.content, headers={**headers, HEADER_DEVICE: "sorter-2"})
    assert as_other.status_code == 401
    assert served.store.count_reports() == 1 and served.store.latest()[0].report.last_error is None


def test_fleet_data_is_read_with_an_operator_token(served):
    token = auth.new_operator_token()
    served.store.add_operator("alice", auth.token_digest(token), served.store.devices()[0].enrolled)
    body = _report()
    assert served.client.post("/status", content=body, headers=sign_request(served.key, "sorter-1", "POST", "/status",
                                                                             body, NOW)).status_code == 200
    assert served.client.get("/fleet.json").status_code == 401
    assert served.client.get("/fleet.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    device_signed = sign_request(served.key, "sorter-1", "GET", "/fleet.json", b"", NOW)
    assert served.client.get("/fleet.json", headers=device_signed).status_code == 401  # a device cannot read the fleet
    answer = served.client.get("/fleet.json", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    devices = {row["device_id"]: row for row in answer.json()["devices"]}
    assert devices["sorter-1"]["release"] == 3 and devices["sorter-1"]["report_age_s"] == 0
    assert devices["sorter-2"]["reported"] is None  # enrolled, never reported: listed too
    served.store.revoke_operator("alice", served.store.devices()[0].enrolled)
    assert served.client.get("/fleet.json", headers={"Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_agent_whose_reports_are_refused_says_so_in_its_log_and_keeps_going(served, tmp_path):
    served.clock[0] = time.time()
    root = tmp_path / "root.json"
    root.write_text("{}")
    auth.generate_device_key(tmp_path / "unenrolled.key")  # a key the server does not know
    agent = Agent(AgentConfig(server=served.server.url, state=tmp_path / "device", root=root, device_id="sorter-1",
                              key_file=tmp_path / "unenrolled.key"))
    agent.report()
    events = [json.loads(line) for line in (tmp_path / "device" / "agent.log").read_text().splitlines()]
    assert {"event": "report-refused", "status": 401}.items() <= events[-1].items()
    assert served.store.count_reports() == 0


def _bench(machine: dict, variants: int = 1, run: str = "a" * 64) -> bytes:
    """A device benchmark upload as `edgeopt device bench` writes one (trimmed to what the server reads)."""
    variant = {"name": "f0_float32", "backend": "onnxruntime", "summary": "float32", "file": "variants/f0.onnx",
               "sha256": "0" * 64, "size_bytes": 1000}
    return json.dumps({
        "schema": "edgeopt.results/2", "kind": "device-bench", "created": "2026-12-01T00:00:00Z", "edgeopt_version": "0",
        "model": {"source": "x", "kind": "onnx", "classes": ["a", "b"], "image_size": 8},
        "data": {"root": ".", "synthetic": False, "test_items": [], "train_images": 0, "train_total": 0},
        "machine": machine, "measure": {}, "variants": [variant] * variants, "source_results_sha256": run}).encode()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_benchmark_is_kept_under_its_signer_and_the_class_it_last_reported(served):
    from edgeopt.choose import fleet_results
    from edgeopt.release.server import MAX_BENCH_FILES

    def post(path: str, body: bytes) -> httpx.Response:
        return served.client.post(path, content=body, headers=sign_request(served.key, "sorter-1", "POST", path, body, NOW))

    report = json.dumps({"device_id": "sorter-1", "channel": "stable", "device_class": "pi5-belt"}).encode()
    assert post("/status", report).status_code == 200
    forged = post("/bench", _bench({"device_id": "sorter-2", "device_class": "pi5-fleet-a"}))
    assert forged.status_code == 401 and "names sorter-2 but is signed by sorter-1" in forged.json()["error"]
    empty = post("/bench", _bench({"device_class": "pi5-belt"}, variants=0))
    assert empty.status_code == 400 and "at least one variant" in empty.json()["error"]
    assert post("/bench", _bench({"device_class": "a-class-it-never-reported"})).status_code == 200
    repo = served.tmp / "repo"
    kept = json.loads((repo / "fleet" / "bench" / "sorter-1" / f"{'a' * 64}.json").read_text())
    assert kept["machine"] == {"device_id": "sorter-1", "device_class": "pi5-belt"}
    # an upload kept before the signer was bound, naming another device, is read as its folder's device
    old = repo / "fleet" / "bench" / "sorter-1" / f"{'b' * 64}.json"
    old.write_bytes(_bench({"device_id": "sorter-2", "device_class": "pi5-belt"}, run="b" * 64))
    assert [d.machine["device_id"] for d in fleet_results(repo, "b" * 64)["pi5-belt"]] == ["sorter-1"]
    for i in range(MAX_BENCH_FILES + 3):  # one device cannot fill the disk with uploads
        assert post("/bench", _bench({}, run=f"{i:064x}")).status_code == 200
    files = {f.name for f in (repo / "fleet" / "bench" / "sorter-1").glob("*.json")}
    assert len(files) == MAX_BENCH_FILES and f"{MAX_BENCH_FILES + 2:064x}.json" in files


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_disk_is_answered_503_with_retry_after_and_the_server_recovers(served, caplog):
    import sqlalchemy as sa

    engine = served.store.engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    def tiny(dbapi_connection, _record):  # SQLite's own "database or disk is full", without filling a disk
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

    sa.event.listen(engine, "connect", tiny)
    engine.dispose()
    answers = []
    with caplog.at_level("WARNING", logger="edgeopt.serve"):
        for i in range(60):
            body = json.dumps({"device_id": "sorter-1", "channel": "stable", "last_error": f"{i}" + "x" * 490}).encode()
            answers.append(served.client.post("/status", content=body,
                                              headers=sign_request(served.key, "sorter-1", "POST", "/status", body, NOW)))
    codes = {a.status_code for a in answers}
    assert codes == {200, 503}, codes
    full = next(a for a in answers if a.status_code == 503)
    assert full.headers["retry-after"] == "60" and "try again later" in full.json()["error"]
    assert len([r for r in caplog.records if "answering 503" in r.getMessage()]) == 1  # one line, not one per request
    sa.event.remove(engine, "connect", tiny)
    engine.dispose()
    body = _report(release=9)
    assert served.client.post("/status", content=body, headers=sign_request(served.key, "sorter-1", "POST", "/status",
                                                                             body, NOW)).status_code == 200
    (served.tmp / "repo" / "fleet").mkdir(parents=True, exist_ok=True)
    (served.tmp / "repo" / "fleet" / "bench").write_text("not a folder")  # where uploads go cannot be written
    body = _bench({})
    answer = served.client.post("/bench", content=body, headers=sign_request(served.key, "sorter-1", "POST", "/bench", body, NOW))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "60"
