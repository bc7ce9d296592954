"""Fleet benchmark jobs: when the agent is idle, measure the repository's candidate variants on this
device and send the results.

A job (jobs/job.json) is signed by the repository's targets role, like the files it names: an
optimize run's results and its candidate variants. The device measures them with its own runtime
on its labelled samples (samples/<class>/) and uploads the results, signed with its key; a static
server has no /bench, so the results stay on the device (bench/<job>.json). Best effort: a job
never stops the agent's real work, and one that fails waits JOB_RETRY_S (doubling) before its next
attempt and is given up after JOB_MAX_ATTEMPTS, so a job that cannot succeed does not take the
device's CPU every check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgeopt.device.config import AgentConfig
from edgeopt.device.report import Reporter
from edgeopt.device.state import DeviceState
from edgeopt.device.update import Channel

JOB_RETRY_S, JOB_MAX_ATTEMPTS = 3600.0, 3


def run_bench_job(config: AgentConfig, state: DeviceState, channel: Channel, reporter: Reporter, updater: Any) -> None:
    """Run the repository's current benchmark job once: download the run's results and candidate
    variants, measure them on this device with its labelled samples, and upload the results. Best
    effort: a failure is logged and tried next time."""
    from tuf.api import exceptions

    try:
        info = updater.get_targetinfo("jobs/job.json")
    except Exception as exc:  # a benchmark never stops the agent's real work
        state.log("bench-job-failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return
    if info is None or not state.job_due(info.hashes["sha256"]):
        return
    job_sha = info.hashes["sha256"]
    samples = state.root / "samples"
    if not samples.is_dir() or not any(p.is_dir() for p in samples.iterdir()):
        state.log("bench-job-skipped", reason="no labelled samples in samples/<class>/")
        return
    work = state.root / "staging" / f"job-{job_sha[:16]}"
    try:
        (work / "variants").mkdir(parents=True, exist_ok=True)
        job = json.loads(Path(channel.download_signed(updater, info, work / "job.json")).read_text())
        for name, path in job["files"].items():
            target = updater.get_targetinfo(path)
            if target is None:
                raise exceptions.RepositoryError(f"job file {path} is not signed")
            destination = work / ("results.json" if name == "results" else f"variants/{Path(path).name}")
            channel.download_signed(updater, target, destination)
        _measure(config, state, reporter, work, job, job_sha)
    except Exception as exc:  # a benchmark never stops the agent's real work, nor repeats without end
        attempts = state.job_failed(job_sha, JOB_RETRY_S, JOB_MAX_ATTEMPTS)
        given_up = attempts >= JOB_MAX_ATTEMPTS
        state.log("bench-job-abandoned" if given_up else "bench-job-failed", attempts=attempts,
                  error=f"{type(exc).__name__}: {exc}"[:300])
        shutil.rmtree(work, ignore_errors=True)


def _measure(config: AgentConfig, state: DeviceState, reporter: Reporter, work: Path, job: dict[str, Any],
             job_sha: str) -> None:
    from edgeopt.config import MeasureConfig
    from edgeopt.device.bench import bench_run
    from edgeopt.results import load_results

    run = load_results(work)
    keep = set(job["variants"])
    trimmed = run.model_copy(update={"variants": [v for v in run.variants if v.name in keep]})
    (work / "results.json").write_text(trimmed.to_json())  # only the candidates are measured
    results = bench_run(work, MeasureConfig(threads=config.smoke.threads, rounds=3, invocations=20),
                        images=state.root / "samples", device_class=reporter.profile()["device_class"],
                        source_sha256=job["results_sha256"])
    kept = ""
    if config.key_file is not None:
        status = reporter.post("/bench", results.to_json())
        if status in (404, 405, 501):  # a static server: the results stay on the device
            kept = str(state.root / "bench" / f"{job_sha[:16]}.json")
            Path(kept).parent.mkdir(exist_ok=True)
            Path(kept).write_text(results.to_json())
        elif status != 200:
            raise ConnectionError(f"the server answered {status} to the results")
    state.job_done(job_sha)
    state.log("bench-job-done", job=job["job"], variants=len(results.variants),
              **({"kept": kept, "reason": "the server has no /bench"} if kept else {}))
    shutil.rmtree(work, ignore_errors=True)
