"""The device agent: keep the newest signed, working model active; never end up without one.

State folder:
    releases/<version>/   complete, verified, smoke-tested releases (model, labels, signed manifest)
    staging/<version>/    downloads in progress (<file>.part grows; resumed with HTTP Range)
    active, previous      symlinks to releases/<version>; switched with an atomic rename
    samples/              images for the smoke test (samples/<class>/*.jpg also checks accuracy)
    rejected.json         versions refused, with the reason (never retried)
    agent.log             one JSON line per event

Order of an update: verify the signed pointer and manifest -> download into staging, check size
and sha256 -> smoke-test the staged model -> rename staging into releases (complete) -> point
`previous` at the old release -> switch `active` (os.replace of a symlink: atomic) -> check the
active model again; on failure switch back. A kill at any moment leaves `active` pointing at a
complete release that matches a signed manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.delivery.release import MANIFEST, SIG_SUFFIX, SignatureError, check_manifest, load_public_key, sha256_bytes, verify

# Fault injection, for the kill -9 tests only. At each named point of an update the agent appends
# the point's name to the file FAULT_REPORT_ENV names, so a test knows *where* it killed instead of
# guessing from timing or folders; at the point FAULT_STOP_ENV names it then waits to be killed.
FAULT_REPORT_ENV = "EDGEOPT_FAULT_REPORT"
FAULT_STOP_ENV = "EDGEOPT_FAULT_STOP_AT"
FAULT_STOP_S = 60.0
# The points, in the order an update passes them.
FAULT_POINTS = ("download", "staged", "renamed", "previous", "switched")


@dataclass(frozen=True)
class AgentConfig:
    server: str
    state: Path
    pubkey: Path
    channel: str = "stable"
    device_id: str = field(default_factory=socket.gethostname)
    # Seconds between checks, and the longest back-off while the server is unreachable.
    interval_s: float = 30.0
    max_backoff_s: float = 600.0
    # Smoke test: median latency per image must stay under this; accuracy floor on labelled samples.
    latency_budget_ms: float = 2000.0
    min_accuracy: float | None = None
    threads: int = 1
    timeout_s: float = 30.0


class UpdateRejected(Exception):
    """A release that must not be activated; the reason is logged and reported, and the
    version is never tried again."""


class RetryLater(Exception):
    """A transient problem with a download; the next check starts it afresh."""


def fault_point(name: str) -> None:
    """Report reaching `name`, and stop there, when the fault-injection variables say so."""
    report = os.environ.get(FAULT_REPORT_ENV)
    if report:
        with open(report, "a") as f:
            f.write(name + "\n")
    if os.environ.get(FAULT_STOP_ENV) == name:
        time.sleep(FAULT_STOP_S)


def matches_entry(path: Path, entry: dict[str, Any]) -> bool:
    """True when the file has exactly the size and sha256 its signed manifest entry gives."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return len(data) == entry["size_bytes"] and sha256_bytes(data) == entry["sha256"]


def release_is_complete(folder: Path, public_key: Any) -> dict[str, Any] | None:
    """The release's manifest if its signature verifies and every file matches it, else None."""
    try:
        data = (folder / MANIFEST).read_bytes()
        manifest = verify(public_key, data, (folder / (MANIFEST + SIG_SUFFIX)).read_bytes())
        check_manifest(manifest)
        if not all(matches_entry(folder / e["file"], e) for e in (manifest["model"], manifest["labels"])):
            return None
        return manifest
    except (OSError, SignatureError):
        return None


def smoke_test(folder: Path, manifest: dict[str, Any], samples: Path, config: AgentConfig) -> dict[str, Any]:
    """Load the model and run it on the sample images; raise UpdateRejected on any failure."""
    from edgeopt.errors import EdgeoptError
    from edgeopt.images import IMAGE_SUFFIXES, load_pixels
    from edgeopt.runtimes.registry import runtime_for

    model_path = folder / manifest["model"]["file"]
    classes = json.loads((folder / manifest["labels"]["file"]).read_text())["classes"]
    try:
        session = runtime_for(model_path).open(model_path, config.threads)
    except (EdgeoptError, ValueError, RuntimeError) as exc:
        raise UpdateRejected(f"model does not load: {exc}") from None
    expected = tuple(manifest["input"]["shape"][1:])
    if tuple(session.input.shape[1:]) != expected:
        raise UpdateRejected(f"model input shape {session.input.shape} differs from the manifest's {expected}")
    files = sorted(p for p in samples.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if samples.is_dir() else []
    size = session.input.image_size
    if files:
        frames = np.stack([load_pixels(p, size) for p in files[:32]])
    else:  # no samples: at least one well-formed frame
        frames = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    times, outputs = [], []
    try:
        for frame in frames:
            start = time.perf_counter()
            outputs.append(session.predict(frame[None])[0])
            times.append((time.perf_counter() - start) * 1000)
    except Exception as exc:  # a broken model can fail inside the runtime in many ways
        raise UpdateRejected(f"model fails on a sample image: {type(exc).__name__}: {exc}") from None
    probs = np.stack(outputs)
    if not np.isfinite(probs).all():
        raise UpdateRejected("model outputs non-finite values (NaN or inf) on the sample images")
    if probs.shape[1] != len(classes):
        raise UpdateRejected(f"model outputs {probs.shape[1]} classes, labels have {len(classes)}")
    latency = statistics.median(times)
    if latency > config.latency_budget_ms:
        raise UpdateRejected(f"median latency {latency:.1f} ms exceeds the budget of {config.latency_budget_ms:g} ms")
    accuracy = None
    # samples/<class>/*.jpg carry a label; frames directly in samples/ do not
    labelled = [(i, classes.index(p.parent.name)) for i, p in enumerate(files[:32])
                if p.parent != samples and p.parent.name in classes]
    if config.min_accuracy is not None and labelled:
        rows, truth = (np.array(v) for v in zip(*labelled, strict=True))
        accuracy = float(np.mean(probs[rows].argmax(1) == truth))
        if accuracy < config.min_accuracy:
            raise UpdateRejected(f"accuracy {accuracy:.2f} on {len(labelled)} labelled samples is under {config.min_accuracy}")
    return {"latency_ms": latency, "accuracy": accuracy, "samples": len(frames)}


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        import httpx

        self.config = config
        self.state = Path(config.state)
        for sub in ("releases", "staging"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.public_key = load_public_key(config.pubkey)
        # One connection per request: a device polls rarely, and a pooled connection that the
        # server closed meanwhile would only turn into a spurious failure.
        self.client = httpx.Client(
            base_url=config.server.rstrip("/"), timeout=config.timeout_s,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None

    # --- state -------------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> None:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
        with open(self.state / "agent.log", "a") as f:
            f.write(json.dumps(line) + "\n")

    def active_version(self) -> int:
        manifest = self._manifest_of(self.state / "active")
        return int(manifest["version"]) if manifest else 0

    def _manifest_of(self, link: Path) -> dict[str, Any] | None:
        return release_is_complete(link, self.public_key) if link.exists() else None

    def _rejected(self) -> dict[str, str]:
        path = self.state / "rejected.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _reject(self, version: int, reason: str) -> None:
        rejected = self._rejected()
        rejected[str(version)] = reason
        tmp = self.state / "rejected.json.tmp"
        tmp.write_text(json.dumps(rejected, indent=1))
        os.replace(tmp, self.state / "rejected.json")

    def _point(self, name: str, version: int) -> None:
        """Atomically make state/<name> a symlink to releases/<version>."""
        tmp = self.state / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("releases") / str(version), tmp)
        os.replace(tmp, self.state / name)

    def recover(self) -> None:
        """After a crash: make sure `active` is a complete release (else fall back to previous)."""
        active = self.state / "active"
        if active.is_symlink() and self._manifest_of(active) is None:
            previous = self._manifest_of(self.state / "previous")
            if previous:
                self._point("active", int(previous["version"]))
                self.log("recovered", active=previous["version"])
            else:
                active.unlink()
                self.log("recovered", active=None)

    # --- network -----------------------------------------------------------------------
    def _get(self, path: str) -> bytes:
        response = self.client.get("/" + path)
        response.raise_for_status()
        return response.content

    def _download(self, path: str, entry: dict[str, Any], staging: Path) -> Path:
        """Fetch one file into staging, resuming a partial .part with a Range request."""
        final = staging / entry["file"]
        if matches_entry(final, entry):
            return final
        part = staging / (entry["file"] + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > entry["size_bytes"]:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", "/" + path, headers=headers) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)
                raise RetryLater(f"server refused the range for {entry['file']}; the download restarts")
            response.raise_for_status()
            mode = "ab" if response.status_code == 206 else "wb"  # 200: the server sent it all again
            with open(part, mode) as f:
                reported = False
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    if not reported:  # a partial file exists from here on
                        f.flush()
                        fault_point("download")
                        reported = True
                    if f.tell() > entry["size_bytes"]:
                        raise UpdateRejected(f"{entry['file']} is larger than its manifest says")
                f.flush()
                os.fsync(f.fileno())
        if not matches_entry(part, entry):
            part.unlink()
            raise UpdateRejected(f"{entry['file']} does not match the signed sha256/size (corrupt or tampered)")
        os.replace(part, final)
        return final

    def report(self) -> None:
        try:
            self.client.post("/status", json={
                "device_id": self.config.device_id, "active_version": self.active_version(),
                "latency_ms": self.last_latency_ms, "last_error": self.last_error,
            })
        except Exception:  # reporting is best effort; the next check reports again
            pass

    # --- one check -----------------------------------------------------------------------
    def check_once(self) -> str:
        """Look for a newer release and activate it if it passes every check. Returns what happened."""
        import httpx

        self.recover()
        channel = self.config.channel
        version: int | None = None  # known once the pointer verified
        try:
            pointer_bytes = self._get(f"channels/{channel}.json")
            pointer = verify(self.public_key, pointer_bytes, self._get(f"channels/{channel}.json{SIG_SUFFIX}"))
            if not isinstance(pointer.get("version"), int):
                raise SignatureError("pointer has no integer version")
            version = int(pointer["version"])
            active = self.active_version()
            if version <= active:
                if version < active:
                    self.log("ignored", version=version, active=active, reason="older than the active release")
                return "up-to-date"
            if str(version) in self._rejected():
                return f"skipped {version} (rejected before)"
            if pointer.get("manifest") != f"releases/{version}/{MANIFEST}":
                raise SignatureError(f"pointer names manifest {pointer.get('manifest')!r}, not releases/{version}/{MANIFEST}")
            manifest_bytes = self._get(pointer["manifest"])
            if sha256_bytes(manifest_bytes) != pointer.get("manifest_sha256"):
                raise SignatureError("manifest does not match the pointer's sha256")
            manifest = verify(self.public_key, manifest_bytes, self._get(pointer["manifest"] + SIG_SUFFIX))
            check_manifest(manifest)
            if manifest["version"] != version:
                raise SignatureError("manifest version differs from the pointer's")
            return self._install(version, manifest, manifest_bytes)
        except SignatureError as exc:
            return self._fail(version, f"rejected: {exc}", permanent=False)
        except UpdateRejected as exc:
            return self._fail(version, f"rejected: {exc}", permanent=True)
        except RetryLater as exc:
            return self._fail(version, f"will retry: {exc}", permanent=False)
        except (httpx.HTTPError, OSError) as exc:
            self.last_error = f"server unreachable: {type(exc).__name__}"
            self.log("unreachable", error=str(exc)[:200])
            return "unreachable"

    def _fail(self, version: int | None, reason: str, permanent: bool) -> str:
        self.last_error = reason
        self.log("rejected", version=version, reason=reason)
        if permanent and version is not None:
            self._reject(version, reason)
        self.report()
        return reason

    def _install(self, version: int, manifest: dict[str, Any], manifest_bytes: bytes) -> str:
        release = self.state / "releases" / str(version)
        if release_is_complete(release, self.public_key) is None:
            if release.exists():
                shutil.rmtree(release)
            staging = self.state / "staging" / str(version)
            staging.mkdir(parents=True, exist_ok=True)
            for entry in (manifest["model"], manifest["labels"]):
                self._download(f"releases/{version}/{entry['file']}", entry, staging)
            (staging / MANIFEST).write_bytes(manifest_bytes)
            (staging / (MANIFEST + SIG_SUFFIX)).write_bytes(self._get(f"releases/{version}/{MANIFEST}{SIG_SUFFIX}"))
            if release_is_complete(staging, self.public_key) is None:
                raise UpdateRejected("staged release does not verify")
            try:
                smoke_test(staging, manifest, self.state / "samples", self.config)
            except UpdateRejected:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fault_point("staged")
            os.replace(staging, release)
        old = self.active_version()
        fault_point("renamed")
        if old:
            self._point("previous", old)
        fault_point("previous")
        self._point("active", version)
        self.log("activated", version=version, previous=old or None)
        fault_point("switched")
        try:
            check = smoke_test(self.state / "active", manifest, self.state / "samples", self.config)
        except UpdateRejected as exc:
            if old:
                self._point("active", old)
            else:
                (self.state / "active").unlink()
            self._reject(version, f"post-switch check failed: {exc}")
            self.last_error = f"rolled back {version}: {exc}"
            self.log("rolled-back", version=version, to=old or None, reason=str(exc))
            self.report()
            return f"rolled back {version}"
        self.last_latency_ms = check["latency_ms"]
        self.last_error = None
        self.report()
        return f"activated {version}"

    def run(self, max_checks: int | None = None) -> None:
        """Check forever (or max_checks times), backing off while the server is unreachable."""
        delay = self.config.interval_s
        checks = 0
        while max_checks is None or checks < max_checks:
            outcome = self.check_once()
            checks += 1
            if max_checks is not None and checks >= max_checks:
                break
            delay = min(delay * 2, self.config.max_backoff_s) if outcome == "unreachable" else self.config.interval_s
            time.sleep(delay)

