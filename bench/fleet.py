"""Fleet benchmark: staged rollouts that stop themselves, with real agents and with 10,000 simulated ones.

    python bench/fleet.py [--agents 200] [--part a|b|both] [--out bench/results]

(a) `--agents` instances of the real agent (device/agent.py, device/poll.py), each in a thread with
    its own state folder, identity and signing key, poll a plain static file server on 127.0.0.1
    (Python's http.server; it forwards POST /status to `edgeopt serve`'s report endpoint, as a
    reverse proxy in front of any static host would). Each device's frames are classified with its
    active release by the sorting loop's own pieces (ActiveModel, HealthRecorder), in-process.
    `edgeopt rollout watch` runs every second (the real Rollouts.watch, evidence from the fleet
    database). Three staged rollouts (1, 5, 25, 100 %):
      1. a good release: it must reach 100 %;
      2. a release whose smoke test fails on the 30 % of devices whose camera sees bright frames
         (it answers NaN on them): it must halt by itself, never beyond the 25 % stage;
      3. a release that passes every smoke test but is far less confident in service than the
         model before on the same devices: likewise;
    after each halt every device must run the model before again. In-service latency is not a
    criterion here (--max-latency-ratio): all devices share one process, so a frame's time measures
    the installs around it, not the model. Reported: devices that installed
    each bad release, requests per second, the static server's egress against devices x the
    compressed size, time to 100 %.
(b) 10,000 devices on a simulated clock (bench/fleet_sim.py): the same schedule, bucket and policy code.

Writes bench/results/fleet.json and fleet.md. Short soak times and intervals (seconds), so part (a)
runs in minutes; the models are tiny ONNX classifiers built in code (tests/rollout_helpers.py).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import http.server
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/rollout_helpers.py: the tiny models

STAGES = (10_000, 50_000, 250_000, 1_000_000)


class Front(http.server.SimpleHTTPRequestHandler):
    """The static host: files of the repository; POST /status forwarded to the report endpoint."""

    counts: Counter[str]
    per_second: Counter[int]
    egress: Counter[str]
    report_port: int

    def log_message(self, *args: object) -> None:
        pass

    def _kind(self) -> str:
        return "metadata" if self.path.startswith("/metadata/") else "targets" if self.path.startswith("/targets/") else "other"

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        self.per_second[int(time.time())] += 1

    def do_GET(self) -> None:  # noqa: N802
        self._count(self._kind())
        super().do_GET()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        self.egress[self._kind()] += len(data)
        outputfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self._count("reports")
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        upstream = http.client.HTTPConnection("127.0.0.1", self.report_port, timeout=30)
        upstream.request("POST", self.path, body, {k: v for k, v in self.headers.items() if k.lower() != "host"})
        answer = upstream.getresponse()
        payload = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", answer.getheader("content-type", "application/json"))
        self.end_headers()
        self.wfile.write(payload)
        upstream.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Device:
    """One agent with its own state and key, its loop thread, and its belt."""

    def __init__(self, tmp: Path, index: int, bright: bool, url: str, root: Path, keys_dir: Path, store: Any) -> None:
        import datetime as dt

        from tests.rollout_helpers import write_frame

        from edgeopt.device.agent import Agent, AgentConfig
        from edgeopt.device.fetch import Limits
        from edgeopt.fleet.auth import generate_device_key, parse_public_key

        self.name, self.bright = f"belt-{index:04d}", bright
        self.state = tmp / "devices" / self.name
        key = keys_dir / f"{self.name}.key"
        store.enroll(self.name, parse_public_key(generate_device_key(key)), dt.datetime.now(dt.UTC))
        write_frame(self.state / "samples" / "belt.png", 220 if bright else 90, seed=index)  # the smoke test's sample
        self.agent = Agent(AgentConfig(server=url, state=self.state, root=root, device_id=self.name, key_file=key,
                                       limits=Limits(timeout_s=30, min_rate_bps=1000, rate_window_s=30, deadline_base_s=120)))
        self.outcomes: list[tuple[float, str, int | None]] = []
        check = self.agent.check_once

        def recorded() -> Any:
            outcome = check()
            self.outcomes.append((time.time(), outcome.kind, outcome.release))
            return outcome

        self.agent.check_once = recorded  # type: ignore[method-assign]

    def active_sha(self) -> str | None:
        record = self.agent.state.record_of("active")
        return record["model"]["sha256"] if record else None


def belt(devices: list[Device], frame_rate: float, stop: threading.Event) -> None:
    """Each device's sorting loop, in-process: its active release (reloaded when it changes) classifies
    a frame of its belt every 1/frame_rate s; the in-service window goes to its state for the agent."""
    from tests.rollout_helpers import frame

    from edgeopt.device.health import HealthRecorder
    from edgeopt.device.sort import ActiveModel

    models = {d.name: ActiveModel(d.state) for d in devices}
    health = {d.name: HealthRecorder(d.state, window=100, flush_s=1.0) for d in devices}
    seed = 0
    while not stop.is_set():
        start = time.monotonic()
        for d in devices:
            model = models[d.name]
            try:
                if not model.refresh():
                    continue
                pixels = frame(200 if d.bright else 90, seed)
                t0 = time.perf_counter()
                probs = model.session.predict(pixels[None])[0]
                latency = (time.perf_counter() - t0) * 1000
                health[d.name].record(model.sha256, model.release or 0, latency, float(probs.max()), time.time())
            except Exception as exc:  # a device's sorting never stops the others
                print(f"belt {d.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            seed += 1
        stop.wait(max(0.0, 1.0 / frame_rate - (time.monotonic() - start)))


def run_part_a(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn
    from tests.rollout_helpers import write_release

    from edgeopt.device.poll import LoopConfig, run_agent
    from edgeopt.device.schedule import PollPolicy
    from edgeopt.fleet.store import open_store
    from edgeopt.methods.base import sha256_of
    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository
    from edgeopt.release.server import create_app
    from edgeopt.rollout.control import Rollouts, fleet_evidence
    from edgeopt.rollout.policy import Criteria

    tmp = Path(tempfile.mkdtemp(prefix="edgeopt-fleet-"))
    keys = tmp / "keys"
    generate_keys(keys, ("stable",))
    repo = Repository(tmp / "repo")
    root = repo.init(keys, ("stable",))
    first = write_release(tmp / "models", "good", 0, args.model_kb * 1024)
    published = repo.publish_release(keys, "stable", *first)
    report_port = _free_port()
    reports = uvicorn.Server(uvicorn.Config(create_app(repo.path), host="127.0.0.1", port=report_port, log_level="error"))
    threading.Thread(target=reports.run, daemon=True).start()
    counts: Counter[str] = Counter()
    per_second: Counter[int] = Counter()
    egress: Counter[str] = Counter()
    handler = type("BenchFront", (Front,), {"counts": counts, "per_second": per_second, "egress": egress,
                                            "report_port": report_port})
    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(repo.path)))
    front.daemon_threads = True
    threading.Thread(target=front.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{front.server_address[1]}"
    while not reports.started:
        time.sleep(0.05)

    rng = random.Random(0)
    bright = set(rng.sample(range(args.agents), round(0.3 * args.agents)))
    with open_store(repo.path) as store:
        devices = [Device(tmp, i, i in bright, url, root, keys, store) for i in range(args.agents)]
    stop = threading.Event()
    config = LoopConfig(policy=PollPolicy(interval_s=args.interval, jitter=0.5, backoff_base_s=1.0, max_backoff_s=10.0,
                                          min_fault_s=0.5), report_every_s=args.interval, full_every_s=60.0)
    threads = [threading.Thread(target=run_agent, args=(d.agent, config), daemon=True,
                                kwargs={"sleep": stop.wait, "stop": stop.is_set, "rng": random.Random(i)})
               for i, d in enumerate(devices)]
    groups = [devices[i::args.belts] for i in range(args.belts)]
    threads += [threading.Thread(target=belt, args=(g, args.frame_rate, stop), daemon=True) for g in groups]
    for thread in threads:
        thread.start()

    def wait_for(predicate: Any, what: str, timeout: float) -> float:
        started = time.time()
        while not predicate():
            if time.time() - started > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)
        return time.time() - started

    good_sha = sha256_of(first[0])
    wait_for(lambda: all(d.active_sha() == good_sha for d in devices), "release 1 on every device", args.timeout)
    rollouts = Rollouts(repo.path)
    criteria = Criteria(max_failure_rate=0.10, min_reports=5, min_frames=args.min_frames, max_confidence_drop=0.10,
                        max_latency_ratio=args.max_latency_ratio, promote_share=0.9)
    phases = []
    for label, kind, variant in (("good", "good", 1), ("smoke fails on 30 %", "nan", 2), ("low confidence", "flat", 3)):
        model, labels, custom = write_release(tmp / "models", kind, variant, args.model_kb * 1024)
        sha = sha256_of(model)
        egress_before, counts_before = Counter(egress), sum(counts.values())
        started = time.time()
        state = rollouts.start(keys, "stable", model, labels, custom, STAGES, (args.soak,), criteria, started)
        release = state.release
        compressed = repo.current_release("stable")["length"]
        share_times: dict[str, float] = {}
        while state.status in ("running", "paused"):
            if time.time() - started > args.timeout:
                raise RuntimeError(f"rollout of {label} did not finish in {args.timeout:.0f} s: {state.reason}")
            state, decision = rollouts.watch(keys, "stable", fleet_evidence(repo.path, "stable"), time.time())
            share_times.setdefault(f"{state.share_ppm / 10_000:g} %", time.time() - started)
            time.sleep(1.0)
        decided = time.time() - started
        target = sha if state.status == "complete" else good_sha  # a halt: the model before, published again
        converged = wait_for(lambda t=target: all(d.active_sha() == t for d in devices), f"every device on {target[:12]}",
                             args.timeout)
        installed = sorted(d.name for d in devices if any(k == "activated" and r == release for _, k, r in d.outcomes))
        tried = sorted(d.name for d in devices if any(r == release and k in ("activated", "retry", "refused", "rolled-back")
                                                      for _, k, r in d.outcomes))
        phases.append({
            "release": label, "kind": kind, "status": state.status, "reason": state.reason,
            "stage_at_end": state.stage + 1, "share_at_end_pct": state.share_ppm / 10_000,
            "expected": (state.status == "complete") if kind == "good" else (state.status == "halted" and state.share_ppm <= 250_000),
            "share_reached_after_s": share_times, "decided_after_s": round(decided, 1),
            "every_device_converged_after_s": round(decided + converged, 1), "converged_on_sha256": target,
            "devices_that_installed_it": len(installed), "devices_that_tried_it": len(tried),
            "devices_in_stage_1_of_it": sum(1 for d in devices if _inside(d.name, sha, STAGES[0])),
            "compressed_model_bytes": compressed, "egress_bytes": dict(egress - egress_before),
            "target_egress_per_device_x_compressed": (egress["targets"] - egress_before["targets"]) / (len(devices) * compressed),
            "requests": sum(counts.values()) - counts_before,
        })
        print(f"{label}: {state.status} at {state.share_ppm / 10_000:g} % after {decided:.0f} s; "
              f"{len(installed)} installed it, {len(tried)} tried; converged {converged:.0f} s later -- {state.reason}",
              flush=True)
        good_sha = target if kind == "good" else good_sha
    stop.set()
    for thread in threads:  # an inference cut off by the interpreter's exit aborts the process
        thread.join(timeout=60)
    front.shutdown()
    reports.should_exit = True
    seconds = [per_second[s] for s in range(min(per_second), max(per_second) + 1)]
    return {"agents": args.agents, "bright_devices": len(bright), "interval_s": args.interval, "soak_s": args.soak,
            "frame_rate_per_device": args.frame_rate, "criteria": criteria.__dict__, "stages_pct": [s / 10_000 for s in STAGES],
            "release_1_bytes": published["length"], "phases": phases, "requests_by_kind": dict(counts),
            "requests_per_s_mean": sum(seconds) / len(seconds), "requests_per_s_peak": max(seconds),
            "egress_bytes": dict(egress), "model_kb": args.model_kb, "state_folder": str(tmp)}


def _inside(name: str, sha: str, share: int) -> bool:
    from edgeopt.rollout.policy import in_share

    return in_share(name, sha, share)


def run_part_b(args: argparse.Namespace) -> dict[str, Any]:
    from edgeopt.device.schedule import PollPolicy
    from edgeopt.rollout.policy import Criteria
    from fleet_sim import restart_storm, rollout

    policy = PollPolicy(interval_s=300.0, jitter=0.5, backoff_base_s=5.0, max_backoff_s=600.0)
    lockstep = PollPolicy(interval_s=300.0, jitter=0.0, spread_start=False, backoff_base_s=5.0, max_backoff_s=600.0)
    started = time.time()
    storms = [restart_storm(args.devices, policy, True, args.capacity, 3600.0),
              restart_storm(args.devices, lockstep, False, args.capacity, 3600.0)]
    rollouts = [rollout(args.devices, bad, STAGES, 1800.0, Criteria(), policy, frame_rate=0.5, watch_every_s=60.0,
                        horizon_s=12 * 3600.0) for bad in (None, "smoke", "confidence")]
    return {"devices": args.devices, "interval_s": 300.0, "soak_s": 1800.0, "watch_every_s": 60.0, "frames_per_s": 0.5,
            "restart": storms, "rollouts": rollouts, "wall_s": round(time.time() - started, 1)}


def render(report: dict[str, Any]) -> str:
    lines = ["# Fleet benchmark", "", f"commit {report['commit']}, {report['created']}", ""]
    a = report.get("a")
    if a:
        lines += [f"## (a) {a['agents']} real agents, static file server on loopback + report endpoint", "",
                  f"Stages {', '.join(f'{s:g}' for s in a['stages_pct'])} %; soak {a['soak_s']:g} s; poll every "
                  f"{a['interval_s']:g} s (jitter 0.5); {a['frame_rate_per_device']:g} frames/s per device; "
                  f"{a['bright_devices']} devices see bright frames.", "",
                  "| release | end | reason | installed it | tried it | decided after s | all devices converged after s "
                  "| target bytes sent / (devices x compressed model) | metadata bytes sent |", "|---|---|---|---|---|---|---|---|---|"]
        for p in a["phases"]:
            lines.append(f"| {p['release']} | {p['status']} at {p['share_at_end_pct']:g} % | {p['reason']} | "
                         f"{p['devices_that_installed_it']} | {p['devices_that_tried_it']} | {p['decided_after_s']} | "
                         f"{p['every_device_converged_after_s']} | {p['target_egress_per_device_x_compressed']:.2f} | "
                         f"{p['egress_bytes'].get('metadata', 0):,} |")
        good = a["phases"][0]
        unmet = [p["release"] for p in a["phases"] if not p["expected"]]
        lines += ["", "Expected (the good release complete; each bad one halted by itself, never beyond 25 %; every "
                  "device back on the model before): " + (f"NOT MET for {', '.join(unmet)}" if unmet else "met"), ""]
        lines += [f"Time to 100 %: {good['share_reached_after_s'].get('100 %', float('nan')):.0f} s (the share), "
                  f"{good['every_device_converged_after_s']:.0f} s (every device running it).",
                  f"Requests: {sum(a['requests_by_kind'].values()):,} ({a['requests_by_kind']}); "
                  f"{a['requests_per_s_mean']:.1f}/s on average, {a['requests_per_s_peak']}/s at peak. "
                  f"Static server egress {sum(a['egress_bytes'].values()):,} bytes ({a['egress_bytes']}); the model "
                  f"weighs {a['phases'][0]['compressed_model_bytes']:,} bytes compressed.", ""]
    b = report.get("b")
    if b:
        lines += [f"## (b) {b['devices']:,} simulated devices (simulated clock; the agent's schedule, bucket and "
                  "rollout policy code)", "", "| after a fleet-wide restart | peak requests/s | 503 answers | "
                  "every device answered after s |", "|---|---|---|---|"]
        for r in b["restart"]:
            answered = r["every_device_answered_after_s"]
            when = f"{answered:.0f}" if answered is not None else f"not within an hour ({r['never_answered']:,} never)"
            lines.append(f"| {'with jitter' if r['jitter'] else 'without jitter'} (server {r['capacity_rps']}/s) | "
                         f"{r['peak_rps']:,} | {r['refused_503']:,} | {when} |")
        lines += ["", f"Rollouts (poll every {b['interval_s']:g} s, soak {b['soak_s']:g} s per stage, watch every "
                  f"{b['watch_every_s']:g} s):", "", "| release | end | reason | received it before the decision | "
                  "decided after s | every device settled after s | peak requests/s |", "|---|---|---|---|---|---|---|"]
        for r in b["rollouts"]:
            decided = r["complete_after_s"] if r["complete_after_s"] is not None else r["halted_after_s"]
            lines.append(f"| {r['bad'] or 'good'} | {r['status']} at {r['share_reached_pct']:g} % | {r['reason']} | "
                         f"{r['devices_that_received_it']:,} | {decided} | {r['every_device_settled_after_s']:.0f} | "
                         f"{r['peak_rps']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--agents", type=int, default=200, help="(a) real agents")
    parser.add_argument("--interval", type=float, default=2.0, help="(a) mean seconds between checks and reports")
    parser.add_argument("--soak", type=float, default=6.0, help="(a) seconds each stage soaks")
    parser.add_argument("--frame-rate", type=float, default=2.0, help="(a) frames per second each device sorts")
    parser.add_argument("--min-frames", type=int, default=10, help="(a) in-service frames before a device's health counts")
    parser.add_argument("--max-latency-ratio", type=float, default=1e6,
                        help="(a) in-service p90 latency bound; off by default: the devices share one process and its "
                             "GIL, so a frame's time measures the contention of the installs around it, not the model")
    parser.add_argument("--model-kb", type=int, default=512, help="(a) incompressible padding in each model, KB")
    parser.add_argument("--belts", type=int, default=4, help="(a) threads classifying the devices' frames")
    parser.add_argument("--timeout", type=float, default=900.0, help="(a) seconds any one phase may take")
    parser.add_argument("--devices", type=int, default=10_000, help="(b) simulated devices")
    parser.add_argument("--capacity", type=int, default=1000, help="(b) requests/s the simulated server answers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.part in ("a", "both") and args.agents < 20:
        print("--agents must be at least 20 (a 1 % stage needs a device or two)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"edgeopt_fleet_bench": 1, "commit": provenance.commit("bench/fleet.py", "bench/fleet_sim.py"),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.part in ("b", "both"):
        report["b"] = run_part_b(args)
    if args.part in ("a", "both"):
        report["a"] = run_part_a(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (args.out / "fleet.md").write_text(text)
    print(text)
    return 1 if "a" in report and not all(p["expected"] for p in report["a"]["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
