"""The agent's configuration: one frozen object that every part of the agent reads
(`edgeopt device run` builds it from its options). When to check is the loop's: poll.LoopConfig."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.device.fetch import Limits
from edgeopt.device.smoke import SmokeLimits


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
    smoke: SmokeLimits = SmokeLimits()
    limits: Limits = Limits()
    # Releases kept besides active and previous.
    keep_releases: int = 2
    # Faults of one release in a row before it is refused for good.
    failures_to_reject: int = 2

    @property
    def base(self) -> str:
        """The server's URL without a trailing slash."""
        return self.server.rstrip("/")
