"""Update benchmark: the study's claim that a smaller model updates a device faster, measured.

    python bench/update.py [--run runs/demo/optimized] [--rate 1024] [--out bench/results]

Publishes the optimize run's float32 baseline (f0) and its selected variant as two signed
releases, serves them on 127.0.0.1 at a fixed bandwidth (--rate KB/s, default 1024 = 1 MB/s),
and times a device agent fetching, verifying, smoke-testing and activating each. Writes
bench/results/update.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "optimized", help="an optimize output folder")
    parser.add_argument("--rate", type=float, default=1024.0, help="server bandwidth, KB/s")
    parser.add_argument("--repeats", type=int, default=3, help="deliveries of each release (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not (args.run / "results.json").is_file():
        print(f"{args.run} is not an optimize output; run 'edgeopt demo' first or pass --run DIR", file=sys.stderr)
        return 2

    import uvicorn

    from edgeopt.delivery.agent import Agent, AgentConfig
    from edgeopt.delivery.release import generate_keys, publish
    from edgeopt.delivery.server import create_app

    results = json.loads((args.run / "results.json").read_text())
    baseline, selected = results["baseline"], results["selected"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        private, public = generate_keys(tmp / "keys")
        port = _free_port()
        repo = tmp / "repo"
        repo.mkdir()
        server = uvicorn.Server(uvicorn.Config(create_app(repo, args.rate), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            for variant in (baseline, selected):
                seconds = []
                for repeat in range(args.repeats):
                    release = publish(args.run, repo, private, variant=variant)
                    state = tmp / f"device-{variant}-{repeat}"
                    agent = Agent(AgentConfig(server=f"http://127.0.0.1:{port}", state=state, pubkey=public,
                                              device_id=f"bench-{variant}"))
                    start = time.perf_counter()
                    outcome = agent.check_once()
                    seconds.append(time.perf_counter() - start)
                    if outcome != f"activated {release.version}":
                        raise RuntimeError(f"delivery of {variant} failed: {outcome}")
                size = release.manifest["model"]["size_bytes"] + release.manifest["labels"]["size_bytes"]
                seconds.sort()
                rows.append({
                    "variant": variant, "bytes": size, "seconds_median": seconds[len(seconds) // 2],
                    "seconds_all": seconds, "transfer_seconds_at_rate": size / (args.rate * 1024),
                })
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    base_row, sel_row = rows
    report = {
        "edgeopt_update_bench": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(args.run),
        "synthetic_data": results["data"]["synthetic"],
        "rate_kbps": args.rate,
        "repeats": args.repeats,
        "what_is_timed": "agent.check_once: fetch and verify the signed pointer and manifest, download, check sha256, "
                         "smoke-test, activate",
        "deliveries": rows,
        "bytes_ratio": base_row["bytes"] / sel_row["bytes"],
        "seconds_ratio": base_row["seconds_median"] / sel_row["seconds_median"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "update.json").write_text(json.dumps(report, indent=1))
    print(f"delivery at {args.rate:g} KB/s ({'synthetic demo model' if report['synthetic_data'] else args.run}):")
    print(f"{'variant':<20} {'bytes':>12} {'s (median)':>11} {'s at rate':>10}")
    for r in rows:
        print(f"{r['variant']:<20} {r['bytes']:>12,} {r['seconds_median']:>11.2f} {r['transfer_seconds_at_rate']:>10.2f}")
    print(f"{baseline} / {selected}: {report['bytes_ratio']:.2f}x the bytes, {report['seconds_ratio']:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
