"""What a device sends and how it proves who it is: the report schema (health fields, old reports,
size), device keys, and the signature over each request -- checked without a server."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgeopt.errors import ConfigError, OutputExistsError
from edgeopt.fleet import auth
from edgeopt.fleet.report import MAX_REPORT_BYTES, DeviceReport, InstallOutcome, Refusal, ServiceWindow

NOW = 1_796_000_000.0


def _window(**fields) -> ServiceWindow:
    values = dict(release=7, model_sha256="a" * 64, start="2026-12-01T10:00:00Z", end="2026-12-01T10:10:00.5+01:00",
                  frames=600, latency_p50_ms=4.2, latency_p90_ms=6.0, mean_confidence=0.93, low_confidence_share=0.04)
    return ServiceWindow(**{**values, **fields})


def test_a_report_of_an_older_agent_still_validates_and_health_is_unknown_not_zero():
    old = {"device_id": "sorter-1", "channel": "stable", "active_release": 3, "active_sha256": "b" * 64,
           "latency_ms": 12.5, "last_error": None, "refusals": [{"time": "2026-01-01T00:00:00Z", "what": "x"}],
           "device_class": "x86_64-4c", "profile": {"cores": 4}}
    report = DeviceReport.model_validate_json(json.dumps(old))
    assert report.rollbacks is None and report.restarts is None and report.service is None and report.install is None


def test_health_fields_are_typed_and_bounded():
    report = DeviceReport(device_id="sorter-1", channel="stable", active_release=7, previous_release=6, rollbacks=1,
                          restarts=4, install=InstallOutcome(release=7, result="activated", smoke_test="passed",
                                                             time="2026-12-01T10:00:00Z"),
                          service=_window(), previous_service=_window(release=6, mean_confidence=0.95))
    assert DeviceReport.model_validate_json(report.model_dump_json()) == report
    for bad in (dict(latency_p50_ms=7.0, latency_p90_ms=6.0), dict(mean_confidence=1.2), dict(low_confidence_share=-0.1),
                dict(frames=0), dict(start="yesterday"), dict(frames=-1)):
        with pytest.raises(ValidationError):
            _window(**bad)
    assert _window(frames=0, mean_confidence=None, low_confidence_share=None).frames == 0
    with pytest.raises(ValidationError):
        InstallOutcome(release=7, result="exploded", time="2026-12-01T10:00:00Z")
    with pytest.raises(ValidationError):  # a field this side does not know is refused, not dropped
        DeviceReport(device_id="sorter-1", channel="stable", uptime_s=5)


def test_the_largest_report_the_schema_allows_fits_the_servers_cap():
    """Every string at its maximum length, every list full, and this machine's real profile."""
    from edgeopt.machine import describe_machine

    long_window = _window(model_sha256="c" * 64)
    report = DeviceReport(
        device_id="d" * 64, channel="c" * 32, active_release=2**31, active_sha256="e" * 64, latency_ms=1e6,
        last_error="x" * 500, refusals=[Refusal(time="t" * 32, what="w" * 300)] * 10, device_class="k" * 200,
        profile=describe_machine(), previous_release=2**31, rollbacks=10**9, restarts=10**9,
        install=InstallOutcome(release=2**31, result="smoke-test-failed", smoke_test="failed",
                               time="2026-12-01T10:00:00.123456+01:00", detail="y" * 300),
        service=long_window, previous_service=long_window)
    size = len(report.model_dump_json().encode())
    assert size < MAX_REPORT_BYTES, size


def test_device_keys_are_owner_only_never_overwritten_and_checked_when_loaded(tmp_path):
    public = auth.generate_device_key(tmp_path / "device.key")
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert len(auth.parse_public_key(public)) == 32 and public.startswith("ed25519:")
    assert auth.public_key_text(auth.load_device_key(tmp_path / "device.key")) == public
    before = (tmp_path / "device.key").read_bytes()
    with pytest.raises(OutputExistsError):
        auth.generate_device_key(tmp_path / "device.key")
    assert (tmp_path / "device.key").read_bytes() == before
    (tmp_path / "token").write_text("an old bearer token\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key; make one with 'edgeopt device keygen'"):
        auth.load_device_key(tmp_path / "token")
    with pytest.raises(ConfigError, match="cannot read the device key"):
        auth.load_device_key(tmp_path / "missing.key")
    for text in ("ed25519:short", "not base64!", ""):
        with pytest.raises(ConfigError, match="not an Ed25519 public key"):
            auth.parse_public_key(text)


def test_a_signature_covers_the_method_endpoint_device_time_nonce_and_body():
    key = Ed25519PrivateKey.generate()
    public = auth.parse_public_key(auth.public_key_text(key))
    body = b'{"device_id": "sorter-1"}'
    headers = auth.sign_request(key, "sorter-1", "POST", "/status", body, NOW)
    signed = auth.read_signed_headers(headers)
    auth.check_signature(public, signed, "POST", "/status")
    auth.check_fresh(signed, NOW + auth.MAX_SKEW_S)
    auth.check_body(signed, body)
    with pytest.raises(auth.Unauthenticated, match="does not match its signed sha256"):
        auth.check_body(signed, body + b" ")
    for method, endpoint in (("PUT", "/status"), ("POST", "/bench")):
        with pytest.raises(auth.Unauthenticated, match="bad signature"):
            auth.check_signature(public, signed, method, endpoint)
    for header, value in ((auth.HEADER_DEVICE, "sorter-2"), (auth.HEADER_TIME, str(int(NOW) + 1)),
                          (auth.HEADER_NONCE, "0" * 32), (auth.HEADER_BODY_SHA256, "0" * 64)):
        with pytest.raises(auth.Unauthenticated, match="bad signature"):
            auth.check_signature(public, auth.read_signed_headers({**headers, header: value}), "POST", "/status")
    other = auth.parse_public_key(auth.public_key_text(Ed25519PrivateKey.generate()))
    with pytest.raises(auth.Unauthenticated, match="bad signature"):
        auth.check_signature(other, signed, "POST", "/status")
    with pytest.raises(auth.Unauthenticated, match="behind the server's clock"):
        auth.check_fresh(signed, NOW + auth.MAX_SKEW_S + 1)
    with pytest.raises(auth.Unauthenticated, match="ahead of the server's clock"):
        auth.check_fresh(signed, NOW - auth.MAX_SKEW_S - 1)
    assert auth.sign_request(key, "sorter-1", "POST", "/status", body, NOW)[auth.HEADER_NONCE] != headers[auth.HEADER_NONCE]


def test_malformed_credentials_are_refused_by_name():
    key = Ed25519PrivateKey.generate()
    headers = auth.sign_request(key, "sorter-1", "POST", "/status", b"{}", NOW)
    lowered = {k.lower(): v for k, v in headers.items()}
    assert auth.read_signed_headers(lowered).device_id == "sorter-1"  # header names are case-insensitive
    for header, value, word in ((auth.HEADER_DEVICE, "../x", "X-Edgeopt-Device"), (auth.HEADER_TIME, "soon", "X-Edgeopt-Time"),
                                (auth.HEADER_NONCE, "short", "X-Edgeopt-Nonce"), (auth.HEADER_SIGNATURE, "AAAA", "Signature"),
                                (auth.HEADER_BODY_SHA256, "x", "SHA256")):
        with pytest.raises(auth.Unauthenticated, match=f"malformed .*{word}"):
            auth.read_signed_headers({**headers, header: value})
    without = {k: v for k, v in headers.items() if k != auth.HEADER_SIGNATURE}
    with pytest.raises(auth.Unauthenticated, match="no X-Edgeopt-Signature header"):
        auth.read_signed_headers(without)
    assert auth.bearer_token({"Authorization": "Bearer abc"}) == "abc" and auth.bearer_token({}) is None
    assert auth.token_digest("abc\n") == auth.token_digest("abc")


def test_the_device_signs_its_reports_without_the_server_stack(tmp_path):
    """The agent's signing and report, and 'device keygen', with SQLAlchemy, Alembic, psycopg and
    the web server unimportable, as on a device with the light install."""
    script = textwrap.dedent(f"""
        import sys, time
        for name in ("sqlalchemy", "alembic", "psycopg", "starlette", "uvicorn", "tensorflow"):
            sys.modules[name] = None
        from edgeopt.cli import main
        assert main(["device", "keygen", "--out", {str(tmp_path / "device.key")!r}]) == 0
        import edgeopt.device.agent
        from edgeopt.fleet import DeviceReport
        from edgeopt.fleet.auth import load_device_key, sign_request
        body = DeviceReport(device_id="sorter-1", channel="stable").model_dump_json().encode()
        headers = sign_request(load_device_key({str(tmp_path / "device.key")!r}), "sorter-1", "POST", "/status", body,
                               time.time())
        print("SIGNED", sorted(headers))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "SIGNED" in proc.stdout and "X-Edgeopt-Signature" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ed25519:")  # keygen prints the public key for the operator
