"""A fleet for the fleet page's tests: a real release repository with two channels -- 'stable' rolling
release 2 out (stage 1 of 4, soaking), 'beta' whose rollout an operator aborted -- devices enrolled
in the fleet database, an operator's token, and `edgeopt serve` on 127.0.0.1 with a clock the test
moves. Devices report through the real endpoint, signed with their own keys.

The models are a few random bytes: what is published is never run here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import httpx

from edgeopt.fleet import auth
from edgeopt.fleet.report import DeviceReport
from edgeopt.release.keys import generate_keys
from edgeopt.release.repository import Repository
from edgeopt.rollout.control import Rollouts
from edgeopt.rollout.policy import PPM, Criteria
from tests.delivery_helpers import ServerThread

STAGES = (10_000, 50_000, 250_000, PPM)
STABLE_2_SEED = 375668
SOAK_S = 3600.0


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(release: int, confidence: float, low: float, p50: float = 4.1, p90: float = 6.3, frames: int = 600) -> dict[str, Any]:
    """An in-service window of `frames` frames (fleet.report.ServiceWindow as JSON)."""
    return {"release": release, "start": "2026-12-01T09:00:00Z", "end": "2026-12-01T10:00:00Z", "frames": frames,
            "latency_p50_ms": p50, "latency_p90_ms": p90, "mean_confidence": confidence, "low_confidence_share": low}


class PageFleet:
    """The repository, its rollouts, the operator token and the devices' keys; `serve()` starts the server."""

    def __init__(self, tmp: Path, now: float) -> None:
        self.tmp, self.now = tmp, now
        self.keys, self.repo_path = tmp / "keys", tmp / "repo"
        generate_keys(self.keys, ("stable", "beta"))
        repo = Repository(self.repo_path)
        repo.init(self.keys, ("stable", "beta"))
        labels = tmp / "labels.json"
        labels.write_text(json.dumps({"classes": ["aluminium", "carton", "glass", "pet", "tin"]}))
        for channel in ("stable", "beta"):
            repo.publish_release(self.keys, channel, self._model(f"{channel}-1"), labels, {"format": "onnx"})
        rollouts = Rollouts(self.repo_path)
        # the rollout's bounds are loose enough that the devices below leave it waiting (soaking), not halted
        criteria = Criteria(max_failure_rate=0.5, min_reports=2, min_frames=50, max_confidence_drop=0.3,
                            max_low_confidence_rise=0.5)
        stable_2 = self._model("stable-2")
        self.stable_2_sha = hashlib.sha256(stable_2.read_bytes()).hexdigest()
        rollouts.start(self.keys, "stable", stable_2, labels, {"format": "onnx"}, STAGES, (SOAK_S,), criteria, now=now - 600)
        rollouts.start(self.keys, "beta", self._model("beta-2"), labels, {"format": "onnx"}, STAGES, (SOAK_S,),
                       Criteria(), now=now - 7200)
        rollouts.abort(self.keys, "beta", now - 3600, "belt 3 jams on glass")
        from edgeopt.fleet.store import open_store

        self.token = auth.new_operator_token()
        self.device_keys: dict[str, Any] = {}
        with open_store(self.repo_path) as store:
            store.add_operator("alice", auth.token_digest(self.token), dt.datetime.fromtimestamp(now, dt.UTC))
            for device in ("sorter-1", "sorter-2", "sorter-3", "sorter-4", "sorter-5", "beta-1"):
                key = self.tmp / f"{device}.key"
                store.enroll(device, auth.parse_public_key(auth.generate_device_key(key)), dt.datetime.fromtimestamp(now, dt.UTC))
                self.device_keys[device] = auth.load_device_key(key)

    def _model(self, name: str) -> Path:
        path = self.tmp / "models" / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        # stable-2's bytes are fixed: drawn so that sorter-1, -2 and -3 fall in its first 1 % (the server counts
        # only the devices it places in the stage); any other model is random
        seed = hashlib.sha256(f"stable-2/{STABLE_2_SEED}".encode()).digest()
        path.write_bytes(seed * 8 if name == "stable-2" else secrets.token_bytes(256))
        return path

    def serve(self, **options: Any) -> ServerThread:
        self.clock = [self.now]
        return ServerThread(self.repo_path, clock=lambda: self.clock[0], **options)

    def report(self, server: ServerThread, device: str, **fields: Any) -> None:
        """The device reports (signed, through POST /status) at the server's current time."""
        body = DeviceReport.model_validate({"device_id": device, "channel": "stable", "device_class": "x86_64-2c",
                                            **fields}).model_dump_json().encode()
        headers = auth.sign_request(self.device_keys[device], device, "POST", "/status", body, self.clock[0])
        answer = httpx.post(f"{server.url}/status", content=body, headers=headers)
        assert answer.status_code == 200, answer.text

    def report_all(self, server: ServerThread) -> None:
        """What the fleet looks like in the tests: one device of each kind of health."""
        now = self.clock[0]
        self.clock[0] = now - 2 * 3600  # sorter-4 last reported two hours ago
        self.report(server, "sorter-4", active_release=1, restarts=0, rollbacks=0, service=window(1, 0.9, 0.05))
        self.clock[0] = now
        self.report(server, "sorter-1", active_release=2, active_sha256=self.stable_2_sha, previous_release=1, rollbacks=0, restarts=1,
                    install={"release": 2, "result": "activated", "smoke_test": "passed", "time": _iso(now - 500)},
                    service=window(2, 0.9, 0.05, 4.0, 6.0), previous_service=window(1, 0.91, 0.04, 4.2, 6.2))
        self.report(server, "sorter-2", active_release=1, rollbacks=0, restarts=0,
                    install={"release": 2, "result": "smoke-test-failed", "smoke_test": "failed", "time": _iso(now - 400),
                             "detail": "NaN in the output for 2 of 5 samples"},
                    last_error="smoke test failed on release 2", service=window(1, 0.89, 0.06),
                    refusals=[{"time": _iso(now - 400), "what": "release 2: smoke test failed"}])
        self.report(server, "sorter-3", active_release=2, active_sha256=self.stable_2_sha, previous_release=1, rollbacks=0,
                    restarts=0,
                    install={"release": 2, "result": "activated", "smoke_test": "passed", "time": _iso(now - 450)},
                    service=window(2, 0.55, 0.41), previous_service=window(1, 0.91, 0.04))
        self.report(server, "beta-1", channel="beta", active_release=3, previous_release=2, rollbacks=0, restarts=0,
                    service=window(3, 0.92, 0.03))


def fill_fleet(store: Any, devices: int, now: float) -> dict[str, list[str]]:
    """`devices` devices enrolled in `store`, each reporting once through the store (most healthy;
    every 997th failed its install, every 1009th lost confidence, every 1013th went quiet two hours
    ago, every 1019th never reported). Returns the ids of each kind that is not healthy."""
    import os

    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    ids = [f"belt-{i:05d}" for i in range(devices)]
    store.enroll_many({d: os.urandom(32) for d in ids}, moment)
    kinds: dict[str, list[str]] = {"failed": [], "degraded": [], "stale": [], "silent": []}
    for i, device in enumerate(ids):
        fields: dict[str, Any] = {"active_release": 7, "previous_release": 6, "rollbacks": 0, "restarts": i % 3,
                                  "service": window(7, 0.9, 0.05, 4.0 + (i % 7) / 10, 6.0 + (i % 11) / 10),
                                  "previous_service": window(6, 0.91, 0.04)}
        received = moment
        if i % 1019 == 5:
            kinds["silent"].append(device)
            continue
        if i % 997 == 3:
            kinds["failed"].append(device)
            fields.update(active_release=6, previous_release=None, previous_service=None, service=window(6, 0.9, 0.05),
                          install={"release": 7, "result": "rolled-back", "time": _iso(now - 60), "detail": "NaN outputs"})
        elif i % 1009 == 4:
            kinds["degraded"].append(device)
            fields["service"] = window(7, 0.6, 0.3)
        elif i % 1013 == 2:
            kinds["stale"].append(device)
            received = moment - dt.timedelta(hours=2)
        report = DeviceReport.model_validate({"device_id": device, "channel": "stable", "device_class": f"arm64-{1 + i % 4}c",
                                              **fields})
        store.record_report(report, received)
    return kinds
