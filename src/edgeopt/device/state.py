"""The device's state folder: releases, the active/previous switch, and what it remembers.

    tuf/                         TUF metadata the device trusts (root chain, timestamp, ...)
    releases/<n>-<sha12>/        complete, verified releases: model.<ext>, labels.json, release.json
    staging/<sha>/               downloads in progress (<file>.part grows; resumed with HTTP Range)
    active, previous             symlinks to releases/...; switched with an atomic rename
    samples/                     images for the smoke test (samples/<class>/*.jpg also checks accuracy)
    failures.json                failures per release (by model sha256), so a fault must repeat
    jobs.json                    fleet benchmark jobs run or given up, and failed attempts (back-off)
    bench/<job>.json             a job's results when the server has no /bench to take them
    rejected.json                releases refused for good, with the reason
    agent.log, agent.log.1       one JSON line per event (rotated past LOG_MAX_BYTES)

release.json records the target metadata (length, sha256, custom) that TUF verified when the
release was fetched; a release folder is complete when every file matches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edgeopt.methods.base import sha256_of

RELEASE_RECORD = "release.json"
LOG_MAX_BYTES = 1024 * 1024


def file_matches(path: Path, length: int, sha256: str) -> bool:
    """True when the file has exactly this length and sha256 (read in chunks, never whole)."""
    try:
        return path.stat().st_size == length and sha256_of(path) == sha256
    except OSError:
        return False


class DeviceState:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("releases", "staging", "tuf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- releases -----------------------------------------------------------------------------
    def release_dir(self, record: dict[str, Any]) -> Path:
        return self.root / "releases" / f"{record['release']}-{record['model']['sha256'][:12]}"

    @staticmethod
    def complete(folder: Path) -> dict[str, Any] | None:
        """The release record of a folder whose files all match it, else None."""
        try:
            record = json.loads((folder / RELEASE_RECORD).read_text())
            files = (record["model"], record["labels"])
            if all(file_matches(folder / f["file"], int(f["length"]), str(f["sha256"])) for f in files):
                return dict(record)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def local_copies(self, length: int, sha256: str) -> list[Path]:
        """Files of the device's releases whose release.json gives them this length and sha256. A
        hint of where to look, no more: whoever uses one checks its bytes."""
        found = []
        for path in sorted((self.root / "releases").glob(f"*/{RELEASE_RECORD}")):
            try:
                record = json.loads(path.read_text())
                for entry in (record["model"], record["labels"]):
                    name = str(entry["file"])
                    if entry["sha256"] == sha256 and entry["length"] == length and Path(name).name == name:
                        found.append(path.parent / name)
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def record_of(self, link: str) -> dict[str, Any] | None:
        path = self.root / link
        return self.complete(path) if path.exists() else None

    def point(self, name: str, folder: Path) -> None:
        """Atomically make state/<name> a symlink to `folder` (a release)."""
        tmp = self.root / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(folder.relative_to(self.root), tmp)
        os.replace(tmp, self.root / name)

    def recover(self) -> str | None:
        """After a crash: `active` must be a complete release (else previous, else none)."""
        active = self.root / "active"
        if active.is_symlink() and self.record_of("active") is None:
            if self.record_of("previous") is not None:
                self.point("active", self.root / os.readlink(self.root / "previous"))
                return "previous"
            active.unlink()
            return "none"
        return None

    def prune(self, keep_others: int) -> list[str]:
        """Remove releases other than active, previous and the newest `keep_others` of the rest."""
        linked = {os.path.realpath(self.root / n) for n in ("active", "previous") if (self.root / n).is_symlink()}
        others = sorted((p for p in (self.root / "releases").iterdir() if os.path.realpath(p) not in linked),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        for folder in others[keep_others:]:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        return removed

    def clean_staging(self, keep: str | None) -> None:
        for folder in (self.root / "staging").iterdir():
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # --- memory of failures -------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any]:
        try:
            value = json.loads((self.root / name).read_text())
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, name: str, value: dict[str, Any]) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, self.root / name)

    def rejected(self, sha256: str) -> str | None:
        return self._read("rejected.json").get(sha256)

    def reject(self, sha256: str, reason: str) -> None:
        value = self._read("rejected.json")
        value[sha256] = reason
        self._write("rejected.json", value)

    def count_failure(self, sha256: str, kind: str) -> int:
        """Count one more failure of this kind for this release; returns how many in a row."""
        value = self._read("failures.json")
        counts = value.setdefault(sha256, {})
        counts[kind] = int(counts.get(kind, 0)) + 1
        self._write("failures.json", value)
        return counts[kind]

    def clear_failures(self, sha256: str) -> None:
        value = self._read("failures.json")
        if value.pop(sha256, None) is not None:
            self._write("failures.json", value)

    def job_due(self, sha256: str) -> bool:
        """The job is neither done (or given up) nor waiting out the back-off of a failed attempt."""
        jobs = self._read("jobs.json")
        failed = jobs.get("failed", {}).get(sha256, {})
        return sha256 not in jobs.get("done", []) and time.time() >= float(failed.get("next", 0))

    def job_done(self, sha256: str) -> None:
        jobs = self._read("jobs.json")
        jobs["done"] = [*[d for d in jobs.get("done", []) if d != sha256], sha256][-50:]
        jobs.get("failed", {}).pop(sha256, None)
        self._write("jobs.json", jobs)

    def job_failed(self, sha256: str, retry_s: float, max_attempts: int) -> int:
        """Count a failed attempt; the next one waits retry_s, doubling; after max_attempts the job
        is given up (done). Returns the attempts so far."""
        jobs = self._read("jobs.json")
        failed = jobs.setdefault("failed", {})
        attempts = int(failed.get(sha256, {}).get("attempts", 0)) + 1
        failed[sha256] = {"attempts": attempts, "next": time.time() + retry_s * 2 ** (attempts - 1)}
        self._write("jobs.json", jobs)
        if attempts >= max_attempts:
            self.job_done(sha256)
        return attempts

    def log(self, event: str, **fields: Any) -> None:
        """One JSON line in agent.log; past LOG_MAX_BYTES it becomes agent.log.1 (one generation kept).
        On a full or failing disk the line goes to stderr instead (the service's journal): a log
        that cannot be written never ends the agent."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields})
        path = self.root / "agent.log"
        with contextlib.suppress(OSError):
            if path.stat().st_size > LOG_MAX_BYTES:
                os.replace(path, path.with_name("agent.log.1"))
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError as exc:
            print(f"{line} (agent.log not written: {exc})", file=sys.stderr, flush=True)
