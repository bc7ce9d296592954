"""What a device tells the release side: the typed, size-limited report the agent sends and the
server accepts. Every field added after the first version is optional, so a report from an older
agent still validates; a field a newer agent adds that this side does not know is refused
(extra="forbid"), never silently dropped."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Largest report body the server reads; anything longer is refused unread.
MAX_REPORT_BYTES = 16 * 1024
# Largest device benchmark upload.
MAX_BENCH_BYTES = 4 * 1024 * 1024
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A UTC time as the agent writes it: 2026-12-01T10:00:00Z (fractions and offsets allowed).
ISO_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
MAX_RELEASE = 2**31
SHA256 = r"^[0-9a-f]{64}$"

InstallResult = Literal["activated", "smoke-test-failed", "rolled-back", "refused", "download-failed"]


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: str = Field(max_length=32)
    what: str = Field(max_length=300)


class InstallOutcome(BaseModel):
    """The device's last attempt to install a release, and how its smoke test went."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The release it tried to install.
    release: int = Field(ge=0, le=MAX_RELEASE)
    # activated: installed and running; smoke-test-failed: refused before the switch; rolled-back:
    # switched, failed its post-switch check, switched back; refused: its signed metadata or files
    # prove it unusable; download-failed: not (yet) fetched, retried later.
    result: InstallResult
    # The smoke test's outcome; None when it did not run (e.g. the download failed).
    smoke_test: Literal["passed", "failed"] | None = None
    time: str = Field(pattern=ISO_TIME)
    detail: str | None = Field(None, max_length=300)


class ServiceWindow(BaseModel):
    """What one release did in service over a window of sorted frames (the sorting loop's own
    figures, not a test set): latency, and how sure the model was of its answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The release the frames were classified with, and its model's sha256.
    release: int = Field(ge=0, le=MAX_RELEASE)
    model_sha256: str | None = Field(None, pattern=SHA256)
    # The window: first and last frame's time, and how many frames it holds.
    start: str = Field(pattern=ISO_TIME)
    end: str = Field(pattern=ISO_TIME)
    frames: int = Field(ge=0, le=10**9)
    # Wall time of one frame's inference, median and 90th percentile, ms.
    latency_p50_ms: float | None = Field(None, ge=0, le=1e6)
    latency_p90_ms: float | None = Field(None, ge=0, le=1e6)
    # Mean of the top-1 probability over the window's frames.
    mean_confidence: float | None = Field(None, ge=0, le=1)
    # Share of the window's frames whose top-1 probability was below `low_confidence_below`.
    low_confidence_share: float | None = Field(None, ge=0, le=1)
    low_confidence_below: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> ServiceWindow:
        if self.latency_p50_ms is not None and self.latency_p90_ms is not None and self.latency_p50_ms > self.latency_p90_ms:
            raise ValueError("latency_p50_ms must not exceed latency_p90_ms")
        if self.frames == 0 and (self.mean_confidence is not None or self.low_confidence_share is not None):
            raise ValueError("a window of 0 frames has no confidence figures")
        return self


class DeviceReport(BaseModel):
    """One report of an agent: what is active, how it runs, what went wrong, what it refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(pattern=DEVICE_ID)
    channel: str = Field(max_length=32)
    active_release: int | None = Field(None, ge=0, le=MAX_RELEASE)
    active_sha256: str | None = Field(None, pattern=SHA256)
    # The smoke test's median latency of the active release, ms.
    latency_ms: float | None = Field(None, ge=0, le=1e6)
    last_error: str | None = Field(None, max_length=500)
    refusals: list[Refusal] = Field(default_factory=list, max_length=10)
    device_class: str | None = Field(None, max_length=200)
    profile: dict[str, Any] = Field(default_factory=dict)
    # --- health (issue 32): None means "not reported" (an older agent), never "none happened" ---
    # The release that was active before the current one (the rollback target).
    previous_release: int | None = Field(None, ge=0, le=MAX_RELEASE)
    # The last install attempt and its smoke test.
    install: InstallOutcome | None = None
    # Counters kept on the device since it was set up (they only grow, so a lost report loses nothing):
    # post-switch rollbacks, and starts of the agent process.
    rollbacks: int | None = Field(None, ge=0, le=10**9)
    restarts: int | None = Field(None, ge=0, le=10**9)
    # The latest in-service window of the active release, and the last one of the previous release,
    # so a release is compared with the model the same device had before.
    service: ServiceWindow | None = None
    previous_service: ServiceWindow | None = None
