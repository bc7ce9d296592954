"""The device agent: keep the channel's current signed, working release active; never end up
without one.

Trust comes from The Update Framework (python-tuf's ngclient): the device holds a trusted root;
every check refreshes timestamp, snapshot and targets metadata (signatures, versions: no
rollback; expiry: no freeze; length caps: no endless data), and the channel's model and labels
are fetched only as the channel's key signed them (length and sha256).

Order of an update: verify metadata -> check free space -> download into staging (resumable, with
a deadline and a minimum rate) -> check length and sha256 -> smoke-test the staged release ->
rename it into releases/ (complete) -> point `previous` at the old release -> switch `active`
(an atomic symlink rename) -> smoke-test the active release; on failure switch back.

A release is refused for good only when its own signed bytes prove it bad: a smoke test that fails
twice, or a model file that matches its signed hash but unpacks to something else. What the network
can do -- a short answer, extra bytes, a wrong range, bytes that do not match the signed hash, a
slow server -- is retried with backoff however often it comes: a device cannot tell a lying network
from a bad upload, and a network must never be able to block a valid release for good. Every
refusal, including rollback and freeze attempts, is logged, reported and counted in the exit code
of --once.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeopt.device.fetch import (
    BoundedFetcher,
    EncodedAnswer,
    Incomplete,
    Limits,
    RangeRefused,
    SlowRetrieval,
    deadline,
    device_client,
    download_target,
    paced,
)
from edgeopt.device.health import record_install, report_fields
from edgeopt.device.smoke import MalformedRelease, SmokeLimits, SmokeTestFailed, smoke_test
from edgeopt.device.state import RELEASE_RECORD, DeviceState, file_matches
from edgeopt.errors import ConfigError

# Fault injection, for the kill -9 tests only. At each named point of an update the agent appends
# the point's name to the file FAULT_REPORT_ENV names, so a test knows *where* it killed instead of
# guessing from timing or folders; at the point FAULT_STOP_ENV names it then waits to be killed.
FAULT_REPORT_ENV = "EDGEOPT_FAULT_REPORT"
FAULT_STOP_ENV = "EDGEOPT_FAULT_STOP_AT"
FAULT_STOP_S = 60.0
# The points, in the order an update passes them.
FAULT_POINTS = ("download", "staged", "renamed", "previous", "switched")
# TUF metadata caps (bytes): far above what a few channels need, far below "endless".
ROOT_MAX_BYTES, TIMESTAMP_MAX_BYTES, SNAPSHOT_MAX_BYTES, TARGETS_MAX_BYTES = 64 * 1024, 16 * 1024, 256 * 1024, 1024 * 1024
# A whole metadata refresh gets the time of this many bytes at the minimum rate (a new root or
# two, timestamp, snapshot, targets and the channel's delegated targets).
METADATA_BUDGET_BYTES = 4 * 1024 * 1024
# Seconds a report or an upload may take, answer included.
REPORT_S = 60.0
# A failed fleet benchmark job waits this long before its next attempt (doubling), and is given up
# after JOB_MAX_ATTEMPTS: a job that cannot succeed must not take the device's CPU every check.
JOB_RETRY_S, JOB_MAX_ATTEMPTS = 3600.0, 3
MODEL_FORMATS = ("tflite", "onnx")
# Largest model a release may unpack to (its signed uncompressed length), bytes.
MAX_MODEL_BYTES = 2 * 1024**3
# Release numbers are labels for people (the model's sha256 decides what is new), bounded so a
# signed but absurd number cannot break the device's reports.
MAX_RELEASE = 2**31 - 1
# Free space left over after a download, so the device never fills its disk with a model.
FREE_SPACE_MARGIN = 16 * 1024 * 1024


def fault_point(name: str) -> None:
    """Report reaching `name`, and stop there, when the fault-injection variables say so."""
    report = os.environ.get(FAULT_REPORT_ENV)
    if report:
        with open(report, "a") as f:
            f.write(name + "\n")
    if os.environ.get(FAULT_STOP_ENV) == name:
        time.sleep(FAULT_STOP_S)


@dataclass(frozen=True)
class AgentConfig:
    # The repository's base URL: it serves metadata/ and targets/ (any static web server).
    server: str
    state: Path
    # The trust anchor: the repository's newest root, N.root.json ('edgeopt repo trust-anchor'), copied to the device.
    root: Path
    channel: str = "stable"
    device_id: str = field(default_factory=socket.gethostname)
    # The device's private key (from 'edgeopt fleet enroll --out' or 'edgeopt device keygen'), which
    # signs its reports and uploads; None: reports are not sent.
    key_file: Path | None = None
    # A name for devices that should measure alike (fleet benchmarks); None: derived from the profile.
    device_class: str | None = None
    # Seconds between checks, and the longest back-off after faults.
    interval_s: float = 30.0
    max_backoff_s: float = 600.0
    smoke: SmokeLimits = SmokeLimits()
    limits: Limits = Limits()
    # Releases kept besides active and previous.
    keep_releases: int = 2
    # Faults of one release in a row before it is refused for good.
    failures_to_reject: int = 2


OutcomeKind = Literal["up-to-date", "no-release", "activated", "refused", "retry", "unreachable", "rolled-back", "skipped",
                      "held"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    message: str
    release: int | None = None

    @property
    def refused(self) -> bool:
        """An available release (or metadata) was refused: exit code 3 for --once."""
        return self.kind in ("refused", "rolled-back", "skipped")

    def __str__(self) -> str:
        return self.message


def _custom(target: Any) -> dict[str, Any]:
    """A target's signed custom data; {} when it is not a JSON object (the checks then refuse the release)."""
    return target.custom if isinstance(target.custom, dict) else {}


def _model_sha256(target: Any) -> str:
    """The sha256 of the model itself: the target's, or the signed uncompressed one of a zstd target."""
    custom = _custom(target)
    plain = custom.get("uncompressed") if custom.get("compression") else None
    return str(plain.get("sha256", "")) if isinstance(plain, dict) else str(target.hashes.get("sha256", ""))


class Retry(Exception):
    """A transient fault; the next check tries again."""


class Refused(Exception):
    """Metadata or a release that must not be used; `permanent` when it is proven bad."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = DeviceState(config.state)
        if not Path(config.root).is_file():
            raise ConfigError(f"trusted root {config.root} does not exist; copy the repository's newest root to the device "
                              "(edgeopt repo trust-anchor REPO --out root.json)")
        self.base = config.server.rstrip("/")
        self.client = device_client(self.base, config.limits)
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self.refusals: collections.deque[dict[str, str]] = collections.deque(maxlen=10)
        self._profile: dict[str, Any] | None = None

    # --- metadata ---------------------------------------------------------------------------
    def _updater(self) -> Any:
        from tuf.ngclient import Updater, UpdaterConfig

        trusted = self.state.root / "tuf" / "root.json"
        # the first time the device trusts the root it was given; later, the chain it has verified
        bootstrap = None if trusted.is_file() else Path(self.config.root).read_bytes()
        return Updater(
            metadata_dir=str(self.state.root / "tuf"), metadata_base_url=f"{self.base}/metadata/",
            target_dir=str(self.state.root / "staging"), target_base_url=f"{self.base}/targets/",
            fetcher=BoundedFetcher(self.client, self.config.limits), config=UpdaterConfig(
                root_max_length=ROOT_MAX_BYTES, timestamp_max_length=TIMESTAMP_MAX_BYTES,
                snapshot_max_length=SNAPSHOT_MAX_BYTES, targets_max_length=TARGETS_MAX_BYTES),
            bootstrap=bootstrap,
        )

    def _current(self) -> tuple[Any, Any, Any]:
        """(updater, model target, labels target) of the channel, verified; raises Refused/Retry."""
        import httpx
        from tuf.api import exceptions

        channel = self.config.channel
        try:
            with deadline(self.config.limits.deadline(METADATA_BUDGET_BYTES), "metadata"):
                updater = self._updater()
                updater.refresh()
                model = updater.get_targetinfo(f"{channel}/model")
                labels_path = str(_custom(model).get("labels", "")) if model is not None else ""
                if model is not None and labels_path != f"{channel}/labels.json":
                    raise Refused(f"release names labels {labels_path!r}, not {channel}/labels.json", permanent=True)
                labels = updater.get_targetinfo(labels_path) if model is not None else None
        except exceptions.ExpiredMetadataError as exc:
            raise Refused(f"metadata expired ({exc}): the repository is frozen or was not refreshed") from None
        except exceptions.BadVersionNumberError as exc:
            raise Refused(f"metadata rollback refused ({exc})") from None
        except exceptions.DownloadLengthMismatchError as exc:
            raise Refused(f"metadata longer than allowed ({exc})") from None
        except EncodedAnswer as exc:
            raise Refused(f"metadata refused ({exc})") from None
        except SlowRetrieval as exc:
            raise Retry(f"slow retrieval: {exc}") from None
        except exceptions.DownloadHTTPError as exc:
            raise Retry(f"the repository answered {exc.status_code} for metadata") from None
        except (exceptions.DownloadError, httpx.HTTPError, ConnectionError) as exc:
            raise ConnectionError(str(exc)) from None
        except exceptions.RepositoryError as exc:
            raise Refused(f"metadata does not verify ({type(exc).__name__}: {exc})") from None
        return updater, model, labels

    # --- one check --------------------------------------------------------------------------
    def check_once(self) -> Outcome:
        """Look for the channel's current release and activate it if it passes every check."""
        try:
            return self._check()
        except OSError as exc:  # the device's own storage (full, read-only, failing): metadata or a release
            self.state.clean_staging(keep=None)  # a partial download gives its space back; the next check starts again
            return self._fail("retry", f"will retry: the device could not write its files: {exc}")

    def _check(self) -> Outcome:
        recovered = self.state.recover()
        if recovered:
            self.state.log("recovered", active=recovered)
        try:
            updater, model, labels = self._current()
        except Refused as exc:
            return self._refused(None, str(exc), permanent=False)
        except Retry as exc:
            return self._fail("retry", f"will retry: {exc}")
        except ConnectionError as exc:
            self.last_error = "repository unreachable"
            self.state.log("unreachable", error=str(exc)[:200])
            return Outcome("unreachable", "unreachable")
        if model is None or labels is None:
            return Outcome("no-release", f"no release on channel {self.config.channel} yet")
        sha = model.hashes.get("sha256", "")  # what is downloaded: identifies the release
        number = _custom(model).get("release")
        release = number if isinstance(number, int) and 1 <= number <= MAX_RELEASE else 0
        active = self.state.record_of("active")
        if (active is not None and active["model"]["sha256"] == _model_sha256(model)
                and active["labels"]["sha256"] == labels.hashes.get("sha256")):
            self.state.clean_staging(keep=None)
            self._bench_job(updater)  # idle: time for the fleet's benchmark, if there is a new one
            return Outcome("up-to-date", "up-to-date", release)
        reason = self.state.rejected(sha)
        if reason:
            return Outcome("skipped", f"skipped release {release} (rejected before: {reason})", release)
        if not release:
            return self._refused(sha, f"release number {number!r} is not a whole number from 1 to {MAX_RELEASE}",
                                 permanent=True)
        from edgeopt.rollout.policy import held_back

        held = held_back(self.config.device_id, model, has_model=active is not None)
        if held:  # a staged rollout whose signed share does not reach this device yet
            return Outcome("held", held, release)
        try:
            return self._install(updater, model, labels, release)
        except Refused as exc:
            if exc.permanent:
                record_install(self.state.root, release, "refused", detail=str(exc))
            return self._refused(sha, f"release {release}: {exc}", permanent=exc.permanent, release=release)
        except Retry as exc:
            return self._fail("retry", f"will retry: release {release}: {exc}", release)
        except ConnectionError as exc:
            self.last_error = "repository unreachable"
            self.state.log("unreachable", error=str(exc)[:200])
            return Outcome("unreachable", "unreachable", release)

    def _fail(self, kind: OutcomeKind, message: str, release: int | None = None) -> Outcome:
        self.last_error = message
        self.state.log(kind, release=release, reason=message)
        self.report()
        return Outcome(kind, message, release)

    def _refused(self, sha: str | None, message: str, permanent: bool, release: int | None = None) -> Outcome:
        if permanent and sha:
            self.state.reject(sha, message)
        self.refusals.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": message[:300]})
        return self._fail("refused", f"rejected: {message}", release)

    def _count(self, sha: str, kind: str, message: str) -> Exception:
        """A fault of this release: retried until it repeats, then refused for good."""
        if self.state.count_failure(sha, kind) >= self.config.failures_to_reject:
            return Refused(f"{message} (again)", permanent=True)
        return Retry(message)

    def _install(self, updater: Any, model: Any, labels: Any, release: int) -> Outcome:
        sha = model.hashes["sha256"]
        custom = _custom(model)
        fmt = str(custom.get("format", ""))
        if fmt not in MODEL_FORMATS:
            raise Refused(f"its model format {fmt!r} is not one of {', '.join(MODEL_FORMATS)}", permanent=True)
        compression = custom.get("compression")
        if compression not in (None, "zstd"):
            raise Refused(f"its compression {compression!r} is not zstd", permanent=True)
        plain = custom.get("uncompressed") if compression else {"length": model.length, "sha256": sha}
        if not (isinstance(plain, dict) and isinstance(plain.get("length"), int) and 0 < plain["length"] <= MAX_MODEL_BYTES
                and isinstance(plain.get("sha256"), str) and len(plain["sha256"]) == 64):
            raise Refused("its signed uncompressed length or sha256 is malformed", permanent=True)
        model_entry: dict[str, Any] = {"file": f"model.{fmt}", "length": plain["length"], "sha256": plain["sha256"]}
        labels_entry: dict[str, Any] = {"file": "labels.json", "length": labels.length, "sha256": labels.hashes["sha256"]}
        record: dict[str, Any] = {
            "release": release, "channel": self.config.channel, "custom": custom, "model": model_entry,
            "labels": labels_entry, "download": {"length": model.length, "sha256": sha, "compression": compression},
        }
        folder = self.state.release_dir(record)
        if self.state.complete(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            staging = self.state.root / "staging" / sha
            self.state.clean_staging(keep=sha)
            staging.mkdir(parents=True, exist_ok=True)
            need = model.length + (plain["length"] if compression else 0) + labels.length + FREE_SPACE_MARGIN
            if self.state.free_bytes() < need:
                raise Retry(f"not enough free space: it needs {need:,} bytes, the device has {self.state.free_bytes():,}")
            if compression:
                sent = {"file": model_entry["file"] + ".zst", "length": model.length, "sha256": sha}
                self._fetch(staging, sent, model, sha)
                self._decompress(staging / sent["file"], staging / model_entry["file"], model_entry, sha)
            else:
                self._fetch(staging, model_entry, model, sha)
            self._fetch(staging, labels_entry, labels, sha)
            (staging / RELEASE_RECORD).write_text(json.dumps(record, indent=1))
            try:
                smoke_test(staging, record, self.state.root / "samples", self.config.smoke)
            except MalformedRelease as exc:  # its own signed files say so: no second try needed
                raise Refused(str(exc), permanent=True) from None
            except SmokeTestFailed as exc:
                record_install(self.state.root, release, "smoke-test-failed", detail=str(exc))
                raise self._count(sha, "smoke", f"smoke test failed: {exc}") from None
            fault_point("staged")
            os.replace(staging, folder)
        old = self.state.record_of("active")
        fault_point("renamed")
        if old is not None:
            self.state.point("previous", self.state.release_dir(old))
        fault_point("previous")
        self.state.point("active", folder)
        self.state.log("activated", release=release, sha256=sha, previous=old["release"] if old else None)
        fault_point("switched")
        try:
            check = smoke_test(self.state.root / "active", record, self.state.root / "samples", self.config.smoke)
        except SmokeTestFailed as exc:
            if old is not None:
                self.state.point("active", self.state.release_dir(old))
            else:
                (self.state.root / "active").unlink()
            error = self._count(sha, "smoke", f"post-switch check failed: {exc}")
            self.state.log("rolled-back", release=release, to=old["release"] if old else None, reason=str(exc))
            record_install(self.state.root, release, "rolled-back", detail=str(exc))
            if isinstance(error, Refused):
                self.state.reject(sha, str(error))
            self.last_error = f"rolled back release {release}: {exc}"
            self.refusals.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": self.last_error[:300]})
            self.report()
            return Outcome("rolled-back", f"rolled back release {release}: {exc}", release)
        self.state.clear_failures(sha)
        record_install(self.state.root, release, "activated")
        self.last_latency_ms = check["latency_ms"]
        self.last_error = None
        removed = self.state.prune(self.config.keep_releases)
        if removed:
            self.state.log("pruned", releases=removed)
        self.report()
        return Outcome("activated", f"activated release {release}", release)

    def _fetch(self, staging: Path, entry: dict[str, Any], info: Any, sha: str) -> None:
        """One target file into staging, checked against its signed length and sha256."""
        import httpx
        from tuf.api import exceptions

        final = staging / entry["file"]
        if file_matches(final, entry["length"], entry["sha256"]):
            return
        part = staging / (entry["file"] + ".part")
        folder, name = info.path.rsplit("/", 1)
        url = f"{self.base}/targets/{folder}/{entry['sha256']}.{name}"
        try:
            limits = self.config.limits
            with deadline(limits.deadline(entry["length"]) + limits.timeout_s, url):
                download_target(self.client, url, part, entry["length"], limits,
                                on_first_chunk=lambda: fault_point("download"))
        except SlowRetrieval as exc:
            raise Retry(f"slow retrieval: {exc}") from None
        except (RangeRefused, Incomplete, EncodedAnswer) as exc:
            raise Retry(str(exc)) from None
        except exceptions.DownloadLengthMismatchError as exc:
            raise Retry(f"{entry['file']}: {exc}") from None
        except exceptions.DownloadHTTPError as exc:
            raise Retry(f"{entry['file']}: HTTP {exc.status_code}") from None
        except httpx.HTTPError as exc:
            raise Retry(f"{entry['file']}: transfer cut ({type(exc).__name__}); it resumes") from None
        if not file_matches(part, entry["length"], entry["sha256"]):
            part.unlink(missing_ok=True)
            times = self.state.count_failure(sha, "transfer")  # reported, never a reason to refuse
            raise Retry(f"{entry['file']} does not match its signed sha256 (corrupt or tampered in transit; "
                        f"{times} time{'s' if times > 1 else ''} for this release); it is fetched again from the start")
        os.replace(part, final)

    def _decompress(self, compressed: Path, final: Path, entry: dict[str, Any], sha: str) -> None:
        """The zstd file into the model, never past its signed uncompressed length; it must match
        the signed sha256 of the uncompressed model."""
        import zstandard

        if file_matches(final, entry["length"], entry["sha256"]):
            return
        part = final.with_name(final.name + ".part")
        with open(compressed, "rb") as source, open(part, "wb") as target:
            reader = zstandard.ZstdDecompressor().stream_reader(source)
            written = 0
            try:
                while chunk := reader.read(1 << 20):
                    written += len(chunk)
                    if written > entry["length"]:
                        break
                    target.write(chunk)
            except zstandard.ZstdError:
                written = -1
        if written != entry["length"] or not file_matches(part, entry["length"], entry["sha256"]):
            part.unlink(missing_ok=True)
            compressed.unlink(missing_ok=True)
            # the compressed file matched its signed hash: the release itself is inconsistent
            raise self._count(sha, "hash", "the decompressed model does not match its signed sha256")
        os.replace(part, final)
        compressed.unlink()

    # --- fleet benchmark jobs -------------------------------------------------------------------
    def _bench_job(self, updater: Any) -> None:
        """Run the repository's current benchmark job once (signed by its targets role): download
        the run's results and candidate variants, measure them on this device with its labelled
        samples, and upload the results. Best effort: a failure is logged and tried next time."""
        from tuf.api import exceptions

        try:
            info = updater.get_targetinfo("jobs/job.json")
        except Exception as exc:  # a benchmark never stops the agent's real work
            self.state.log("bench-job-failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if info is None or not self.state.job_due(info.hashes["sha256"]):
            return
        job_sha = info.hashes["sha256"]
        samples = self.state.root / "samples"
        if not samples.is_dir() or not any(p.is_dir() for p in samples.iterdir()):
            self.state.log("bench-job-skipped", reason="no labelled samples in samples/<class>/")
            return
        work = self.state.root / "staging" / f"job-{job_sha[:16]}"
        try:
            (work / "variants").mkdir(parents=True, exist_ok=True)
            job = json.loads(Path(self._download_signed(updater, info, work / "job.json")).read_text())
            for name, path in job["files"].items():
                target = updater.get_targetinfo(path)
                if target is None:
                    raise exceptions.RepositoryError(f"job file {path} is not signed")
                destination = work / ("results.json" if name == "results" else f"variants/{Path(path).name}")
                self._download_signed(updater, target, destination)
            self._run_job(work, job, job_sha)
        except Exception as exc:  # a benchmark never stops the agent's real work, nor repeats without end
            attempts = self.state.job_failed(job_sha, JOB_RETRY_S, JOB_MAX_ATTEMPTS)
            given_up = attempts >= JOB_MAX_ATTEMPTS
            self.state.log("bench-job-abandoned" if given_up else "bench-job-failed", attempts=attempts,
                           error=f"{type(exc).__name__}: {exc}"[:300])
            shutil.rmtree(work, ignore_errors=True)

    def _download_signed(self, updater: Any, info: Any, destination: Path) -> str:
        limits = self.config.limits
        with deadline(limits.deadline(info.length) + limits.timeout_s, info.path):
            return str(updater.download_target(info, str(destination)))

    def _run_job(self, work: Path, job: dict[str, Any], job_sha: str) -> None:
        from edgeopt.config import MeasureConfig
        from edgeopt.device.bench import bench_run
        from edgeopt.results import load_results

        run = load_results(work)
        keep = set(job["variants"])
        trimmed = run.model_copy(update={"variants": [v for v in run.variants if v.name in keep]})
        (work / "results.json").write_text(trimmed.to_json())  # only the candidates are measured
        results = bench_run(work, MeasureConfig(threads=self.config.smoke.threads, rounds=3, invocations=20),
                            images=self.state.root / "samples", device_class=self.profile()["device_class"],
                            source_sha256=job["results_sha256"])
        kept = ""
        if self.config.key_file is not None:
            status = self._post("/bench", results.to_json())
            if status in (404, 405, 501):  # a static server: the results stay on the device
                kept = str(self.state.root / "bench" / f"{job_sha[:16]}.json")
                Path(kept).parent.mkdir(exist_ok=True)
                Path(kept).write_text(results.to_json())
            elif status != 200:
                raise ConnectionError(f"the server answered {status} to the results")
        self.state.job_done(job_sha)
        self.state.log("bench-job-done", job=job["job"], variants=len(results.variants),
                       **({"kept": kept, "reason": "the server has no /bench"} if kept else {}))
        shutil.rmtree(work, ignore_errors=True)

    def _post(self, path: str, body: str) -> int:
        """POST to the release side, signed with the device's key, within REPORT_S, answer included,
        at the minimum rate from the answer's first byte; its status (the body is not read)."""
        from edgeopt.fleet.auth import load_device_key, sign_request

        if self.config.key_file is None:
            raise ConfigError("no --key-file: the device cannot sign what it sends")
        data = body.encode()
        signed = sign_request(load_device_key(self.config.key_file), self.config.device_id, "POST", path, data, time.time())
        with deadline(REPORT_S, f"POST {path}"), paced(self.config.limits, None, f"POST {path}"), self.client.stream(
                "POST", f"{self.base}{path}", content=data,
                headers={**signed, "Content-Type": "application/json"}) as response:
            return int(response.status_code)

    # --- reports ------------------------------------------------------------------------------
    def profile(self) -> dict[str, Any]:
        if self._profile is None:
            from edgeopt.machine import describe_machine, device_class

            self._profile = describe_machine()
            self._profile["device_class"] = self.config.device_class or device_class(self._profile)
        return self._profile

    def report(self) -> None:
        """Tell the release side (best effort: a static server has no /status; the next check reports again)."""
        if self.config.key_file is None:
            return
        from edgeopt.fleet.report import DeviceReport

        active = self.state.record_of("active")
        report = DeviceReport(
            device_id=self.config.device_id, channel=self.config.channel,
            active_release=active["release"] if active else None, active_sha256=active["model"]["sha256"] if active else None,
            latency_ms=self.last_latency_ms, last_error=(self.last_error or None) and self.last_error[:500],
            refusals=list(self.refusals), device_class=self.profile()["device_class"], profile=self.profile(),
            **report_fields(self.state.root, active, self.state.record_of("previous")),
        )
        try:
            status = self._post("/status", report.model_dump_json())
        except Exception:  # reporting is best effort; the next check reports again
            return
        if status in (401, 413, 400):  # refused: a clock off by minutes, a revoked key, ... -- say so locally
            self.state.log("report-refused", status=status)

    def run(self, max_checks: int | None = None) -> None:
        """Check forever (or max_checks times), backing off while the repository is unreachable or faulty."""
        delay = self.config.interval_s
        checks = 0
        while max_checks is None or checks < max_checks:
            try:
                outcome = self.check_once()
            except Exception as exc:  # a bug must not end the device's updates: logged, then retried with back-off
                self.state.log("internal-error", error=traceback.format_exc()[-3000:])
                outcome = Outcome("retry", f"internal error: {type(exc).__name__}: {exc}")
            checks += 1
            if max_checks is not None and checks >= max_checks:
                break
            faulty = outcome.kind in ("unreachable", "retry")
            delay = min(delay * 2, self.config.max_backoff_s) if faulty else self.config.interval_s
            time.sleep(delay)
