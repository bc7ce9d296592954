"""What the device tells the release side: its signed report (fleet.report.DeviceReport) and its
benchmark results, each a POST signed with the device's key (fleet.auth).

Best effort: a static server has no /status; a report that is not taken is sent again after the
next check; a report that cannot be built is logged ("report-failed"), never the end of a check.
Without a key file nothing is sent.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from typing import Any

import httpx

from edgeopt.device.config import AgentConfig
from edgeopt.device.fetch import deadline, paced
from edgeopt.device.health import report_fields
from edgeopt.device.state import DeviceState
from edgeopt.errors import ConfigError

# Seconds a report or an upload may take, answer included.
REPORT_S = 60.0


class Reporter:
    def __init__(self, config: AgentConfig, state: DeviceState, client: httpx.Client) -> None:
        self.config, self.state, self.client = config, state, client
        self._profile: dict[str, Any] | None = None

    def profile(self) -> dict[str, Any]:
        if self._profile is None:
            from edgeopt.machine import describe_machine, device_class

            self._profile = describe_machine()
            self._profile["device_class"] = self.config.device_class or device_class(self._profile)
        return self._profile

    def post(self, path: str, body: str) -> int:
        """POST to the release side, signed with the device's key, within REPORT_S, answer included,
        at the minimum rate from the answer's first byte; its status (the body is not read)."""
        from edgeopt.fleet.auth import load_device_key, sign_request

        config = self.config
        if config.key_file is None:
            raise ConfigError("no --key-file: the device cannot sign what it sends")
        data = body.encode()
        signed = sign_request(load_device_key(config.key_file), config.device_id, "POST", path, data, time.time())
        with deadline(REPORT_S, f"POST {path}"), paced(config.limits, None, f"POST {path}"), self.client.stream(
                "POST", f"{config.base}{path}", content=data,
                headers={**signed, "Content-Type": "application/json"}) as response:
            return int(response.status_code)

    def report(self, last_error: str | None, latency_ms: float | None, refusals: Iterable[dict[str, str]]) -> None:
        """Tell the release side (best effort: a static server has no /status; the next check reports again)."""
        config = self.config
        if config.key_file is None:
            return
        from edgeopt.fleet.report import DeviceReport

        try:
            active = self.state.record_of("active")
            report = DeviceReport(
                device_id=config.device_id, channel=config.channel,
                active_release=active["release"] if active else None,
                active_sha256=active["model"]["sha256"] if active else None,
                latency_ms=latency_ms, last_error=(last_error or None) and last_error[:500],
                refusals=list(refusals), device_class=self.profile()["device_class"], profile=self.profile(),
                **report_fields(self.state.root, active, self.state.record_of("previous")),
            )
        except Exception:  # a field the device cannot fill (a bug, a state file nobody expected): logged, never fatal
            self.state.log("report-failed", error=traceback.format_exc()[-3000:])
            return
        try:
            status = self.post("/status", report.model_dump_json())
        except Exception:  # reporting is best effort; the next check reports again
            return
        if status in (401, 413, 400):  # refused: a clock off by minutes, a revoked key, ... -- say so locally
            self.state.log("report-refused", status=status)
