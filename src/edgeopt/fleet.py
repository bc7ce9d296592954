"""What a device tells the release side: the typed, size-limited report the agent sends and the
server accepts, and the device credentials that authenticate it."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgeopt.errors import ConfigError

# Largest report body the server reads; anything longer is refused unread.
MAX_REPORT_BYTES = 16 * 1024
# Largest device benchmark upload.
MAX_BENCH_BYTES = 4 * 1024 * 1024
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: str = Field(max_length=32)
    what: str = Field(max_length=300)


class DeviceReport(BaseModel):
    """One report of an agent: what is active, how it runs, what went wrong, what it refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(pattern=DEVICE_ID)
    channel: str = Field(max_length=32)
    active_release: int | None = Field(None, ge=0, le=2**31)
    active_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    latency_ms: float | None = Field(None, ge=0, le=1e6)
    last_error: str | None = Field(None, max_length=500)
    refusals: list[Refusal] = Field(default_factory=list, max_length=10)
    device_class: str | None = Field(None, max_length=200)
    profile: dict[str, Any] = Field(default_factory=dict)


def _credentials_file(repo: Path) -> Path:
    return Path(repo) / "fleet" / "devices.json"


def enroll(repo: Path, device_id: str) -> str:
    """Issue a device's credential: a random token, of which the server keeps only the sha256."""
    import re

    if not re.match(DEVICE_ID, device_id):
        raise ConfigError(f"device id {device_id!r} must be letters, digits, '.', '_' or '-' (up to 64)")
    path = _credentials_file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    devices = json.loads(path.read_text()) if path.is_file() else {}
    token = secrets.token_urlsafe(32)
    devices[device_id] = hashlib.sha256(token.encode()).hexdigest()
    tmp = path.with_name(".devices.json.tmp")
    tmp.write_text(json.dumps(devices, indent=1))
    tmp.replace(path)
    return token


def authenticated(repo: Path, device_id: str, token: str | None) -> bool:
    """True when `token` is the credential issued to `device_id` (compared in constant time)."""
    if not token:
        return False
    path = _credentials_file(repo)
    try:
        expected = json.loads(path.read_text()).get(device_id)
    except (OSError, ValueError):
        return False
    return isinstance(expected, str) and hmac.compare_digest(expected, hashlib.sha256(token.encode()).hexdigest())
