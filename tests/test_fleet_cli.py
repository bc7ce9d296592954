"""`edgeopt fleet ...` and `edgeopt device keygen` as an operator uses them, on both databases:
enroll (a key made here, or one made on the device), show (table, JSON, history), revoke,
operators; every mistake one line and exit code 2."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest

from edgeopt.cli import main
from edgeopt.fleet import auth
from edgeopt.fleet.report import DeviceReport, InstallOutcome, ServiceWindow
from edgeopt.fleet.store import FleetStore


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enroll_writes_an_owner_only_key_that_the_store_knows_and_refuses_to_redo_it(tmp_path, db_url, capsys):
    key = tmp_path / "sorter-1.key"
    code, out, _ = run(capsys, "fleet", "enroll", "sorter-1", "--db", db_url, "--out", str(key))
    assert code == 0 and "pass it as --key-file" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = auth.public_key_text(auth.load_device_key(key))
    with FleetStore(db_url) as store:
        assert store.public_key("sorter-1") == auth.parse_public_key(public)
    code, _, err = run(capsys, "fleet", "enroll", "sorter-1", "--db", db_url, "--out", str(tmp_path / "again.key"))
    assert code == 2 and "already enrolled; pass --replace" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again.key").exists()
    code, _, _ = run(capsys, "fleet", "enroll", "sorter-1", "--db", db_url, "--out", str(tmp_path / "new.key"), "--replace")
    assert code == 0
    with FleetStore(db_url) as store:
        assert store.public_key("sorter-1") == auth.parse_public_key(auth.public_key_text(auth.load_device_key(tmp_path / "new.key")))
    for argv in ([], ["--out", str(tmp_path / "x.key"), "--public-key", public]):  # one of the two, not none or both
        code, _, err = run(capsys, "fleet", "enroll", "sorter-2", "--db", db_url, *argv)
        assert code == 2 and "either --out FILE" in err


def test_a_key_made_on_the_device_is_enrolled_from_its_public_half(tmp_path, db_url, capsys):
    code, out, err = run(capsys, "device", "keygen", "--out", str(tmp_path / "device" / "device.key"))
    public = out.strip()
    assert code == 0 and public.startswith("ed25519:") and "--public-key" in err
    code, out, _ = run(capsys, "fleet", "enroll", "sorter-7", "--db", db_url, "--public-key", public)
    assert code == 0 and "accepted now" in out
    code, _, err = run(capsys, "fleet", "enroll", "sorter-8", "--db", db_url, "--public-key", "ed25519:nonsense")
    assert code == 2 and "not an Ed25519 public key" in err


def test_fleet_show_lists_every_device_with_its_health_and_history(tmp_path, db_url, capsys):
    now = dt.datetime.now(dt.UTC)  # `fleet show` uses the real clock: ages in hours leave room for a slow machine
    with FleetStore(db_url) as store:
        for device in ("sorter-1", "sorter-2"):
            store.enroll(device, auth.parse_public_key(auth.generate_device_key(tmp_path / f"{device}.key")), now)
        window = ServiceWindow(release=2, start="2026-12-01T10:00:00Z", end="2026-12-01T10:10:00Z", frames=500,
                               latency_p50_ms=4.0, latency_p90_ms=6.5, mean_confidence=0.9, low_confidence_share=0.05)
        store.record_report(DeviceReport(device_id="sorter-1", channel="stable", active_release=1), now - dt.timedelta(hours=5))
        store.record_report(DeviceReport(
            device_id="sorter-1", channel="stable", active_release=2, previous_release=1, device_class="pi-class",
            install=InstallOutcome(release=2, result="activated", smoke_test="passed", time="2026-12-01T10:00:00Z"),
            rollbacks=0, restarts=2, service=window, last_error="disk nearly full"), now - dt.timedelta(hours=3))
    code, out, _ = run(capsys, "fleet", "show", "--db", db_url, "--json")
    rows = {r["device_id"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"sorter-1", "sorter-2"}
    one = rows["sorter-1"]
    assert (one["release"], one["previous_release"], one["device_class"], one["restarts"]) == (2, 1, "pi-class", 2)
    assert one["install"]["result"] == "activated" and one["service"]["mean_confidence"] == 0.9
    assert 3 * 3600 <= one["report_age_s"] < 4 * 3600 and rows["sorter-2"]["reported"] is None
    code, out, _ = run(capsys, "fleet", "show", "--db", db_url)
    assert code == 0 and "3 h ago" in out and "never" in out and "activated (2)" in out and "4.0/6.5" in out
    assert "disk nearly full" in out
    code, out, _ = run(capsys, "fleet", "show", "--db", db_url, "--history", "sorter-1", "--json")
    assert code == 0 and [r["release"] for r in json.loads(out)] == [2, 1]  # newest first
    code, _, err = run(capsys, "fleet", "show", "--db", db_url, "--history", "sorter-9")
    assert code == 2 and "sorter-9 is not enrolled" in err
    code, _, _ = run(capsys, "fleet", "revoke", "sorter-2", "--db", db_url)
    code, out, _ = run(capsys, "fleet", "show", "--db", db_url, "--json")
    assert code == 0 and {r["device_id"]: r["revoked"] is not None for r in json.loads(out)} == {"sorter-1": False, "sorter-2": True}


def test_operators_get_an_owner_only_token_and_names_are_not_reused(tmp_path, db_url, capsys):
    code, out, _ = run(capsys, "fleet", "add-operator", "alice", "--db", db_url, "--out", str(tmp_path / "alice.token"))
    assert code == 0 and "/fleet.json" in out
    token = (tmp_path / "alice.token").read_text().strip()
    assert stat.S_IMODE((tmp_path / "alice.token").stat().st_mode) == 0o600
    with FleetStore(db_url) as store:
        assert store.operator(auth.token_digest(token)) == "alice"
    code, _, err = run(capsys, "fleet", "add-operator", "alice", "--db", db_url, "--out", str(tmp_path / "other.token"))
    assert code == 2 and "operator named alice" in err
    code, out, _ = run(capsys, "fleet", "revoke-operator", "alice", "--db", db_url)
    assert code == 0 and "revoked operator alice" in out
    with FleetStore(db_url) as store:
        assert store.operator(auth.token_digest(token)) is None
    code, _, err = run(capsys, "fleet", "revoke-operator", "bob", "--db", db_url)
    assert code == 2 and "no operator named bob" in err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_missing_repository_or_an_unreachable_database_is_one_line(tmp_path, db_url, capsys):
    code, _, err = run(capsys, "fleet", "show", str(tmp_path / "nothing"))
    assert code == 2 and "is not a release repository" in err
    code, _, err = run(capsys, "fleet", "show")
    assert code == 2 and "--repo REPO" in err
    code, _, err = run(capsys, "fleet", "show", "--db", "postgresql://nobody@127.0.0.1:1/fleet")
    assert code == 2 and "cannot open the fleet database" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "device", "run", "--server", "http://127.0.0.1:1", "--state", str(tmp_path / "d"),
                       "--root", str(tmp_path), "--key-file", str(tmp_path / "missing.key"))
    assert code == 2 and "'edgeopt device keygen'" in err


def test_a_database_that_is_not_one_is_one_line_and_show_takes_repo_as_the_others_do(tmp_path, capsys):
    from edgeopt.release.keys import generate_keys
    from edgeopt.release.repository import Repository

    notes = tmp_path / "notes.json"
    notes.write_text('{"not": "a database"}' * 100)
    for command in (("fleet", "show"), ("fleet", "revoke", "sorter-1"), ("fleet", "prune", "--older-than-days", "1")):
        code, _, err = run(capsys, *command, "--db", str(notes))
        assert code == 2 and "file is not a database" in err and len(err.strip().splitlines()) == 1, err
    generate_keys(tmp_path / "keys", ("stable",))
    Repository(tmp_path / "repo").init(tmp_path / "keys", ("stable",))
    code, out, _ = run(capsys, "fleet", "show", "--repo", str(tmp_path / "repo"), "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = run(capsys, "fleet", "show", str(tmp_path / "repo"), "--repo", str(tmp_path / "other"))
    assert code == 2 and "pass one" in err


def test_device_run_refuses_spinning_intervals_and_names_reports_cannot_carry(tmp_path, capsys, monkeypatch):
    base = ("device", "run", "--server", "http://127.0.0.1:1", "--state", str(tmp_path / "d"), "--root", str(tmp_path),
            "--once")
    for option, fragment in ((("--interval", "0"), "--interval"), (("--max-backoff", "0.5"), "--max-backoff"),
                             (("--device-class", "x" * 201), "--device-class must be 1 to 200 characters"),
                             (("--device-id", "sorter 1"), "--device-id 'sorter 1' must be letters")):
        code, _, err = run(capsys, *base, *option)
        assert code == 2 and fragment in err and "Traceback" not in err, err
    monkeypatch.setattr("socket.gethostname", lambda: "raspberrypi")
    code, _, err = run(capsys, *base, "--key-file", str(tmp_path / "missing.key"))
    assert "no --device-id, and the host name 'raspberrypi' is one an OS image gives every machine" in err
    code, _, err = run(capsys, *base, "--device-id", "sorter-1", "--key-file", str(tmp_path / "missing.key"))
    assert code == 2 and "host name" not in err
