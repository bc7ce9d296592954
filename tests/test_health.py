"""The device's in-service health record: windows per model, install outcomes, restarts -- and that
what the agent reports validates as the fleet's report schema."""

from __future__ import annotations

from edgeopt.device.health import (
    KEEP_BUSY,
    HealthRecorder,
    busy_intervals,
    count_start,
    record_busy,
    record_install,
    report_fields,
    service_window,
)
from edgeopt.fleet.report import DeviceReport

OLD, NEW = "b" * 64, "a" * 64


def test_windows_keep_the_last_frames_per_model_and_survive_a_restart(tmp_path):
    recorder = HealthRecorder(tmp_path, window=100, flush_s=5.0)
    for i in range(150):  # the model before: confident and quick
        recorder.record(OLD, 1, latency_ms=2.0 + (i % 10) / 10, confidence=0.9, now=1000.0 + i)
    for i in range(40):  # the new one: slower, unsure on one frame in four
        recorder.record(NEW, 2, latency_ms=4.0 + (i % 10) / 10, confidence=0.3 if i % 4 == 0 else 0.8, now=2000.0 + i)
    recorder.flush(3000.0)
    old = service_window(tmp_path, OLD)
    assert old["frames"] == 100 and old["release"] == 1 and old["start"] == "1970-01-01T00:17:30Z"
    assert old["latency_p50_ms"] == 2.45 and old["mean_confidence"] == 0.9 and old["low_confidence_share"] == 0.0
    reopened = HealthRecorder(tmp_path)  # the sorting loop restarted: its windows go on
    reopened.record(NEW, 2, 4.0, 0.8, now=2100.0)
    reopened.flush(2100.0)
    new = service_window(tmp_path, NEW)
    assert new["frames"] == 41 and new["low_confidence_share"] == round(10 / 41, 4)
    assert 4.0 <= new["latency_p50_ms"] <= new["latency_p90_ms"] <= 4.9


def test_the_report_fields_validate_as_the_fleets_schema(tmp_path):
    recorder = HealthRecorder(tmp_path)
    for i in range(60):
        recorder.record(OLD, 1, 2.0, 0.9, now=1000.0 + i)
        recorder.record(NEW, 2, 2.5, 0.6, now=2000.0 + i)
    recorder.flush(3000.0)
    record_install(tmp_path, 2, "rolled-back", now=1500.0, detail="post-switch check failed")
    record_install(tmp_path, 2, "activated", now=1600.0)
    for _ in range(3):
        count_start(tmp_path, "agent")
    count_start(tmp_path, "sort")
    active = {"release": 2, "model": {"sha256": NEW}}
    previous = {"release": 1, "model": {"sha256": OLD}}
    fields = report_fields(tmp_path, active, previous)
    report = DeviceReport(device_id="sorter-1", channel="stable", active_release=2, **fields)
    assert report.install.result == "activated" and report.install.smoke_test == "passed"
    assert report.rollbacks == 1 and report.restarts == 2  # two agent starts after its first
    assert report.service.release == 2 and report.service.mean_confidence == 0.6
    assert report.previous_service.release == 1 and report.previous_service.frames == 60
    assert len(report.model_dump_json()) < 4096  # far under the 16 KB report cap


def test_a_broken_health_file_costs_the_report_fields_not_the_device(tmp_path):
    (tmp_path / "health.json").write_text("{not json")
    (tmp_path / "installs.json").write_text("[]")
    fields = report_fields(tmp_path, {"release": 1, "model": {"sha256": OLD}}, None)
    assert fields["service"] is None and fields["install"] is None and fields["rollbacks"] == 0
    recorder = HealthRecorder(tmp_path)  # and the sorting loop starts afresh
    recorder.record(OLD, 1, 2.0, 0.9, now=1.0)
    assert service_window(tmp_path, OLD)["frames"] == 1


def test_frames_classified_while_an_install_is_busy_count_in_no_window(tmp_path):
    """The model before classifies frames at 1000-1009 s, then at 1020-1024 s while an install runs
    its smoke tests; the new one at 1025-1029 s (switched to, its post-switch check still running)
    and from 1040 s. Each window holds only the frames outside the busy interval: the new release's
    starts after its install, and neither is judged by the slow frames under the install's load."""
    recorder = HealthRecorder(tmp_path)
    for i in range(10):
        recorder.record(OLD, 1, 2.0, 0.9, now=1000.0 + i)
    for i in range(5):
        recorder.record(OLD, 1, 20.0, 0.9, now=1020.0 + i)
        recorder.record(NEW, 2, 20.0, 0.4, now=1025.0 + i)
    for i in range(6):
        recorder.record(NEW, 2, 2.5, 0.8, now=1040.0 + i)
    recorder.flush(1100.0)
    record_busy(tmp_path, start=1020.0004, end=1029.9996)  # the millisecond frames are stored in: widened
    old, new = service_window(tmp_path, OLD), service_window(tmp_path, NEW)
    assert old["frames"] == 10 and old["latency_p90_ms"] == 2.0
    assert new["frames"] == 6 and new["start"] == "1970-01-01T00:17:20Z" and new["mean_confidence"] == 0.8
    for i in range(30):  # the record stays small: the newest intervals are kept
        record_busy(tmp_path, start=2000.0 + i, end=2000.5 + i)
    assert busy_intervals(tmp_path) == [(2000.0 + i, 2000.5 + i) for i in range(30 - KEEP_BUSY, 30)]
