"""Fleet page benchmark: what GET /fleet.json costs the server for a fleet of N devices.

    python bench/fleet_page.py [--devices 10000] [--rounds 15] [--out bench/results]

A SQLite fleet database of N enrolled devices that reported once each (a few of them failed, lost
confidence, went quiet or never reported: tests/fleet_page_helpers.fill_fleet), with a staged rollout
on the channel, and `edgeopt serve` on 127.0.0.1. Measured through HTTP with an operator token:
  cold       the first page of 50 devices (the server reads every device's latest report)
  unchanged  a page of 50 while no device reports: the server answers from what it read
  changed    a page after one device reported: a re-read, which fetches only the changed report but
             walks every device (the re-read pause is set to 0 here; in service the server re-reads
             at most every REREAD_PAUSE x this long)
  whole      every device in one answer (no limit): what a page without paging would have to load
Writes bench/results/fleet_page.json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/fleet_page_helpers.py: the fleet


CPU: list[float] = []  # CPU seconds of this process (server and client) per answer, in the order asked


def _timed(client: Any, params: dict[str, str]) -> tuple[float, int, dict[str, Any]]:
    """(wall seconds, bytes, JSON) of one answer; its CPU seconds go to CPU."""
    start, cpu = time.perf_counter(), time.process_time()
    answer = client.get("/fleet.json", params=params)
    seconds = time.perf_counter() - start
    CPU.append(time.process_time() - cpu)
    answer.raise_for_status()
    return seconds, len(answer.content), answer.json()


def measure(devices: int, rounds: int) -> dict[str, Any]:
    import httpx
    from tests.fleet_page_helpers import PageFleet, fill_fleet, window

    from edgeopt.fleet import page
    from edgeopt.fleet.report import DeviceReport
    from edgeopt.fleet.store import FleetStore

    with tempfile.TemporaryDirectory() as tmp:
        fleet = PageFleet(Path(tmp), time.time())
        with FleetStore(f"sqlite:///{fleet.repo_path / 'fleet' / 'fleet.db'}") as store:
            fill_start = time.perf_counter()
            fill_fleet(store, devices, fleet.now)
            fill_s = time.perf_counter() - fill_start
        original, page.REREAD_PAUSE = page.REREAD_PAUSE, 0.0  # every change re-read at once: its cost is measured
        try:
            with fleet.serve() as server, httpx.Client(base_url=server.url, timeout=300,
                                                       headers={"Authorization": f"Bearer {fleet.token}"}) as client:
                fleet.clock[0] = time.time()
                page_of_50 = {"limit": "50"}
                cold_s, page_bytes, first = _timed(client, page_of_50)
                unchanged = [_timed(client, page_of_50)[0] for _ in range(rounds)]
                changed = []
                for i in range(rounds):
                    device = f"belt-{i:05d}"
                    report = DeviceReport.model_validate({"device_id": device, "channel": "stable", "active_release": 7,
                                                          "last_error": f"bench {i}", "service": window(7, 0.9, 0.05)})
                    server.app.state.store.record_report(report, dt.datetime.now(dt.UTC))
                    seconds, _, answer = _timed(client, {"limit": "50", "q": device})
                    assert answer["devices"][0]["last_error"] == f"bench {i}", "the answer missed the report"
                    changed.append(seconds)
                whole_s, whole_bytes, whole = _timed(client, {})
        finally:
            page.REREAD_PAUSE = original
    cpu = {"cold": CPU[0], "unchanged": statistics.median(CPU[1:1 + rounds]),
           "changed": statistics.median(CPU[1 + rounds:1 + 2 * rounds]), "whole": CPU[-1]}
    return {
        "devices": first["total"], "fill_s": round(fill_s, 1), "rounds": rounds,
        "cold_s": round(cold_s, 3), "unchanged_median_s": round(statistics.median(unchanged), 4),
        "changed_median_s": round(statistics.median(changed), 3), "page_bytes": page_bytes,
        "whole_s": round(whole_s, 3), "whole_bytes": whole_bytes, "whole_devices": len(whole["devices"]),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()}, "load_average": [round(x, 1) for x in os.getloadavg()],
        "cores": os.cpu_count(), "reread_pause": original,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result = measure(args.devices, args.rounds)
    cpu = result["cpu_s"]
    record = {"edgeopt_fleet_page_bench": 1, "commit": provenance.commit("bench/fleet_page.py"),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **result}
    lines = [
        f"# Fleet page: GET /fleet.json for {result['devices']:,} devices (SQLite)", "",
        f"commit {record['commit']}, {record['date']}; medians of {result['rounds']} answers (cold, whole: one); command: "
        f"`python bench/fleet_page.py --devices {args.devices}`", "",
        "| answer | wall time | CPU time | bytes |", "|---|---|---|---|",
        f"| first page of 50, cold (reads every device) | {result['cold_s']:.3f} s | {cpu['cold']:.3f} s | {result['page_bytes']:,} |",
        f"| page of 50, nothing changed | {result['unchanged_median_s'] * 1000:.0f} ms | {cpu['unchanged'] * 1000:.0f} ms "
        f"| {result['page_bytes']:,} |",
        f"| after a report (re-read: the changed report fetched, every device walked) | {result['changed_median_s']:.3f} s "
        f"| {cpu['changed']:.3f} s | |",
        f"| every device, no paging | {result['whole_s']:.3f} s | {cpu['whole']:.3f} s | {result['whole_bytes']:,} |", "",
        f"CPU time: this process's (server and client), per answer. Load average during the run: "
        f"{', '.join(map(str, result['load_average']))} on {result['cores']} cores (other jobs share the machine: wall "
        "times are longer than the CPU times by that much).", "",
        f"While devices keep reporting, the server re-reads at most every {result['reread_pause']:g} x the re-read's "
        f"time (here {cpu['changed'] * result['reread_pause'] * 1000:.0f} ms of CPU time, more in wall time under load), "
        "so the page's data is at most that much older than the newest report (plus the page's own 10 s), and "
        f"re-reading costs at most 1/{1 + result['reread_pause']:g} of the server's time however many pages poll.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "fleet_page.json", record)
    provenance.write_text(args.out / "fleet_page.md", text)
    print(text)


if __name__ == "__main__":
    main()
