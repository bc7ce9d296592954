"""Update benchmark: the study's claim that a smaller model updates a device faster, measured.

    python bench/update.py [--run runs/demo/optimized] [--rate 1024] [--out bench/results]

Sets up a release repository (TUF metadata, fresh keys), publishes the optimize run's float32
baseline and its selected variant, serves them on 127.0.0.1 at a fixed bandwidth (--rate KB/s,
default 1024 = 1 MB/s), and times a fresh device agent installing each: refresh and verify the
metadata, download, check length and sha256, smoke-test, activate. Writes
bench/results/update.json and prints a table.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import provenance  # bench/, beside this script

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

    commit = provenance.commit("bench/update.py")  # the code the run starts with
    import uvicorn

    from edgeopt.device.agent import Agent, AgentConfig
    from edgeopt.methods.base import TRANSFER_LEVEL
    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository, release_custom
    from edgeopt.release.server import create_app
    from edgeopt.results import load_results

    results = load_results(args.run)
    baseline, selected = results.variants[0].name, results.selected.name
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate_keys(tmp / "keys", ("stable",))
        repo = Repository(tmp / "repo")
        trusted_root = repo.init(tmp / "keys", ("stable",))
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(repo.path, args.rate), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            for variant, compress in ((baseline, False), (selected, False), (baseline, True), (selected, True)):
                model, labels, custom = release_custom(args.run, variant)
                published = repo.publish_release(tmp / "keys", "stable", model, labels, custom, compress=compress)
                seconds = []
                for repeat in range(args.repeats):
                    state = tmp / f"device-{variant}-{compress}-{repeat}"
                    agent = Agent(AgentConfig(server=f"http://127.0.0.1:{port}", state=state,
                                              root=trusted_root, device_id=f"bench-{repeat}"))
                    start = time.perf_counter()
                    outcome = agent.check_once()
                    seconds.append(time.perf_counter() - start)
                    if outcome.kind != "activated":
                        raise RuntimeError(f"delivery of {variant} failed: {outcome}")
                size = published["length"] + labels.stat().st_size
                rows.append({
                    "variant": variant, "compressed": compress, "bytes": size, "file_bytes": published["uncompressed_length"],
                    "seconds_median": statistics.median(seconds),
                    "seconds_all": seconds, "transfer_seconds_at_rate": size / (args.rate * 1024),
                })
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    base_row, sel_row, base_zst, sel_zst = rows
    report = {
        "edgeopt_update_bench": 2,
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(args.run),
        "synthetic_data": results.data.synthetic,
        "rate_kbps": args.rate,
        "repeats": args.repeats,
        "what_is_timed": "a fresh device agent's check: refresh and verify TUF metadata, download, check length and "
                         "sha256, smoke-test, activate",
        "deliveries": rows,
        "bytes_ratio": base_row["bytes"] / sel_row["bytes"],
        "seconds_ratio": base_row["seconds_median"] / sel_row["seconds_median"],
        "compression": {
            "codec": f"zstd level {TRANSFER_LEVEL}",
            "selected_bytes_ratio": sel_row["bytes"] / sel_zst["bytes"],
            "selected_seconds_ratio": sel_row["seconds_median"] / sel_zst["seconds_median"],
            "baseline_bytes_ratio": base_row["bytes"] / base_zst["bytes"],
            "baseline_seconds_ratio": base_row["seconds_median"] / base_zst["seconds_median"],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "update.json", report)
    print(f"delivery at {args.rate:g} KB/s ({'synthetic demo model' if report['synthetic_data'] else args.run}):")
    print(f"{'variant':<20} {'sent':>5} {'bytes':>12} {'s (median)':>11} {'s at rate':>10}")
    for r in rows:
        print(f"{r['variant']:<20} {'zstd' if r['compressed'] else 'file':>5} {r['bytes']:>12,} {r['seconds_median']:>11.2f} "
              f"{r['transfer_seconds_at_rate']:>10.2f}")
    print(f"{baseline} / {selected}: {report['bytes_ratio']:.2f}x the bytes, {report['seconds_ratio']:.2f}x the time")
    c = report["compression"]
    print(f"zstd: {selected} {c['selected_bytes_ratio']:.2f}x fewer bytes, {c['selected_seconds_ratio']:.2f}x faster delivery; "
          f"{baseline} {c['baseline_bytes_ratio']:.2f}x / {c['baseline_seconds_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
