"""The fleet database, the same tests on SQLite and on a real PostgreSQL: reports kept as history
and as each device's latest, enrollment, nonces accepted once, operators, and migrations that
apply to an empty database and to an existing one."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pytest
import sqlalchemy as sa

from edgeopt.errors import ConfigError
from edgeopt.fleet.auth import MAX_SKEW_S, Replayed
from edgeopt.fleet.report import DeviceReport, InstallOutcome, ServiceWindow
from edgeopt.fleet.store import FleetStore, database_url

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def report(device: str, release: int, **fields) -> DeviceReport:
    return DeviceReport(device_id=device, channel="stable", active_release=release, **fields)


@pytest.fixture
def store(db_url):
    with FleetStore(db_url) as opened:
        for device in ("sorter-1", "sorter-2"):
            opened.enroll(device, os.urandom(32), T0)
        yield opened


def test_each_report_is_kept_in_the_history_and_as_the_devices_latest(store):
    window = ServiceWindow(release=2, start="2026-12-01T10:00:00Z", end="2026-12-01T10:10:00Z", frames=600,
                           latency_p50_ms=4.1, latency_p90_ms=5.9, mean_confidence=0.91, low_confidence_share=0.03)
    install = InstallOutcome(release=2, result="activated", smoke_test="passed", time="2026-12-01T10:00:00Z")
    for minute, release in ((0, 1), (5, 1), (10, 2)):
        store.record_report(report("sorter-1", release, profile={"cores": 4}), T0 + dt.timedelta(minutes=minute))
    full = report("sorter-1", 2, previous_release=1, install=install, rollbacks=0, restarts=3, service=window,
                  profile={"cores": 4})
    last_id = store.record_report(full, T0 + dt.timedelta(minutes=15))
    store.record_report(report("sorter-2", 1), T0 + dt.timedelta(minutes=1))

    latest = store.latest()
    assert [(s.device_id, s.report.active_release) for s in latest] == [("sorter-1", 2), ("sorter-2", 1)]
    assert latest[0].report == full and latest[0].id == last_id  # health fields round-trip, profile included
    assert latest[0].received == T0 + dt.timedelta(minutes=15) and latest[0].received.tzinfo is not None

    history = store.history(device_id="sorter-1")
    assert [s.report.active_release for s in history] == [1, 1, 2, 2] and store.count_reports() == 5
    assert history[-1].report == full.model_copy(update={"profile": {}})  # history rows leave the profile out
    assert [s.received for s in store.history(device_id="sorter-1", since=T0 + dt.timedelta(minutes=5),
                                              until=T0 + dt.timedelta(minutes=15))] == \
        [T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(minutes=10)]
    assert [s.id for s in store.history(limit=2, newest_first=True)] == [last_id + 1, last_id]
    assert [s.device_id for s in store.latest(channel="beta")] == []


def test_a_report_of_a_device_that_is_not_enrolled_is_refused(store):
    with pytest.raises(ConfigError, match="not enrolled"):
        store.record_report(report("intruder", 1), T0)
    assert store.count_reports() == 0 and store.latest() == []


def test_a_nonce_is_accepted_once_and_forgotten_when_it_cannot_be_fresh_any_more(store):
    store.record_report(report("sorter-1", 1), T0, nonce=("a" * 32, int(T0.timestamp())))
    with pytest.raises(Replayed):
        store.record_report(report("sorter-1", 2), T0 + dt.timedelta(seconds=1), nonce=("a" * 32, int(T0.timestamp())))
    assert store.count_reports() == 1 and store.latest()[0].report.active_release == 1  # the replay changed nothing
    store.record_report(report("sorter-2", 1), T0, nonce=("a" * 32, int(T0.timestamp())))  # another device's nonce space
    with pytest.raises(Replayed):
        store.use_nonce("sorter-1", "a" * 32, int(T0.timestamp()), T0)
    assert store.nonce_used("sorter-1", "a" * 32)
    later = T0 + dt.timedelta(seconds=3 * MAX_SKEW_S)  # a request of T0 is stale by now: its nonce goes
    store.use_nonce("sorter-1", "b" * 32, int(later.timestamp()), later)
    assert not store.nonce_used("sorter-1", "a" * 32) and store.nonce_used("sorter-1", "b" * 32)


def test_enrollment_is_replaced_only_when_asked_and_a_revoked_device_has_no_key(store):
    first = store.public_key("sorter-1")
    with pytest.raises(ConfigError, match="already enrolled; pass --replace"):
        store.enroll("sorter-1", os.urandom(32), T0)
    assert store.public_key("sorter-1") == first
    assert store.enroll("sorter-1", b"k" * 32, T0, replace=True) is True
    assert store.public_key("sorter-1") == b"k" * 32
    store.revoke("sorter-1", T0 + dt.timedelta(days=1))
    assert store.public_key("sorter-1") is None
    assert [(d.device_id, d.revoked) for d in store.devices()] == [("sorter-1", T0 + dt.timedelta(days=1)), ("sorter-2", None)]
    with pytest.raises(ConfigError, match="not enrolled"):
        store.revoke("nobody", T0)
    with pytest.raises(ConfigError, match="device id"):
        store.enroll("../etc", os.urandom(32), T0)


def test_a_batch_of_devices_is_enrolled_at_once_or_not_at_all(store):
    store.enroll_many({f"belt-{i}": bytes([i]) * 32 for i in range(50)}, T0)
    assert len(store.devices()) == 52 and store.public_key("belt-7") == bytes([7]) * 32
    with pytest.raises(ConfigError, match="enrolled already"):
        store.enroll_many({"belt-50": b"n" * 32, "belt-3": b"n" * 32}, T0)
    assert store.public_key("belt-50") is None and store.public_key("belt-3") == bytes([3]) * 32


def test_old_history_is_pruned_and_each_devices_latest_report_stays(store):
    for day in range(5):
        store.record_report(report("sorter-1", day + 1), T0 + dt.timedelta(days=day))
    assert store.prune_history(T0 + dt.timedelta(days=3)) == 3
    assert [s.report.active_release for s in store.history()] == [4, 5]
    assert store.latest()[0].report.active_release == 5


def test_operator_tokens_are_kept_as_digests_and_can_be_revoked(store):
    store.add_operator("alice", "d" * 64, T0)
    assert store.operator("d" * 64) == "alice" and store.operator("e" * 64) is None
    with pytest.raises(ConfigError, match="operator named alice"):
        store.add_operator("alice", "f" * 64, T0)
    store.revoke_operator("alice", T0)
    assert store.operator("d" * 64) is None


def test_the_marker_changes_with_every_report_enrollment_and_revocation(store):
    """What the fleet page re-reads on: anything that changes a device's row changes the marker."""
    seen = [store.marker()]
    assert store.marker() == seen[-1]  # nothing happened: the same
    for change in (lambda: store.record_report(report("sorter-1", 1), T0),
                   lambda: store.record_report(report("sorter-2", 1), T0),
                   lambda: store.record_report(report("sorter-1", 2), T0),  # a device's second report
                   lambda: store.enroll("sorter-3", os.urandom(32), T0),
                   lambda: store.enroll("sorter-3", os.urandom(32), T0 + dt.timedelta(minutes=1), replace=True),
                   lambda: store.revoke("sorter-2", T0 + dt.timedelta(minutes=2))):
        change()
        assert store.marker() not in seen
        seen.append(store.marker())


def test_a_reader_fetches_only_the_latest_reports_that_changed(store):
    assert store.latest_ids() == {} and store.latest(devices=[]) == []
    first = store.record_report(report("sorter-1", 1), T0)
    store.record_report(report("sorter-2", 1), T0)
    ids = store.latest_ids()
    assert ids["sorter-1"] == first and set(ids) == {"sorter-1", "sorter-2"}
    newer = store.record_report(report("sorter-1", 2), T0 + dt.timedelta(minutes=5))
    changed = [d for d, i in store.latest_ids().items() if ids.get(d) != i]
    assert changed == ["sorter-1"]
    assert [(s.device_id, s.id, s.report.active_release) for s in store.latest(devices=changed)] == [("sorter-1", newer, 2)]
    assert [s.device_id for s in store.latest(devices=["sorter-2", "nobody"])] == ["sorter-2"]


def test_concurrent_reports_are_all_kept(store):
    """The server records from many threads at once: no report lost, no 'database is locked'."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                store.record_report(report(f"sorter-{worker % 2 + 1}", i), T0 + dt.timedelta(seconds=i),
                                    nonce=(f"{worker:02d}{i:030d}", int(T0.timestamp())))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.count_reports() == 120
    assert store.count_reports("sorter-1") == 60 and len(store.latest()) == 2


# --- migrations ---------------------------------------------------------------------------------

def test_migrations_build_exactly_the_tables_the_store_uses(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from edgeopt.fleet.tables import VERSION_TABLE, metadata

    with FleetStore(db_url) as store:
        assert store.revision() == _head()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            assert compare_metadata(context, metadata) == []


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from edgeopt.fleet.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(config).get_current_head())


def test_migrations_apply_to_an_existing_database_and_leave_what_is_not_theirs(db_url):
    """A database shared with another application (its own tables and alembic_version), then
    reopened by every later edgeopt: nothing of the other application or of earlier reports is lost."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY, item VARCHAR(20))"))
        conn.execute(sa.text("INSERT INTO orders VALUES (1, 'belt')"))
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('their0001')"))
    with FleetStore(db_url) as store:
        store.enroll("sorter-1", os.urandom(32), T0)
        store.record_report(report("sorter-1", 1), T0)
    with FleetStore(db_url) as store:  # reopened: already at head, nothing redone
        assert store.revision() == _head() and store.count_reports() == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT item FROM orders")).scalar_one() == "belt"
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "their0001"
    engine.dispose()


def test_every_earlier_schema_revision_is_upgraded_with_its_data(db_url):
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from edgeopt.fleet.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    revisions = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()][::-1]  # oldest first
    engine = sa.create_engine(db_url)
    for revision in revisions:  # each step from the one before it; the last open takes it to head
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    engine.dispose()
    with FleetStore(db_url) as store:
        assert store.revision() == revisions[-1] == _head()


def test_a_database_from_a_newer_edgeopt_is_refused_with_the_fix(db_url):
    with FleetStore(db_url) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE fleet_alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="newer edgeopt; upgrade edgeopt"):
        FleetStore(db_url)


def test_several_servers_opening_an_empty_database_at_once_all_succeed(db_url):
    barrier = threading.Barrier(3)
    results: list[object] = []

    def open_it() -> None:
        barrier.wait()
        try:
            with FleetStore(db_url) as store:
                results.append(store.revision())
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [_head()] * 3


def test_database_urls(tmp_path):
    assert database_url(tmp_path / "repo") == f"sqlite:///{(tmp_path / 'repo' / 'fleet' / 'fleet.db').resolve()}"
    assert database_url(db="postgresql://u@h/db") == "postgresql+psycopg://u@h/db"  # psycopg 3, the installed driver
    assert database_url(db="fleet.db").startswith("sqlite:////")
    with pytest.raises(ConfigError, match="--repo REPO"):
        database_url()
    with pytest.raises(ConfigError, match="must be a file"):
        FleetStore("sqlite://")
    with pytest.raises(ConfigError, match="cannot open the fleet database .*check --db"):
        FleetStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_a_revoked_devices_reports_can_be_left_out(store):
    for device in ("sorter-1", "sorter-2"):
        store.record_report(report(device, 2), T0)
    store.revoke("sorter-2", T0)
    assert [s.device_id for s in store.latest("stable")] == ["sorter-1", "sorter-2"]  # fleet show lists it, as revoked
    assert [s.device_id for s in store.latest("stable", enrolled_only=True)] == ["sorter-1"]  # a rollout does not count it


def test_a_reader_opens_the_database_while_a_writer_holds_it(tmp_path):
    """`fleet show` on a database another process is writing to (or one it may not write to): opening
    no longer takes the write lock when the schema is current."""
    import sqlite3

    path = tmp_path / "fleet.db"
    with FleetStore(f"sqlite:///{path}") as first:
        first.enroll("sorter-1", os.urandom(32), T0)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock until the end of the test
    try:
        with FleetStore(f"sqlite:///{path}") as reader:
            assert [d.device_id for d in reader.devices()] == ["sorter-1"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_file_that_is_not_a_database_or_is_missing_is_one_line(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"not": "a database"}' * 100)
    with pytest.raises(ConfigError, match="cannot open the fleet database .*notes.json: file is not a database; check --db"):
        FleetStore(f"sqlite:///{notes}")
    with pytest.raises(ConfigError, match="missing.db does not exist; check --db"):
        FleetStore(f"sqlite:///{tmp_path / 'missing.db'}", must_exist=True)
    assert not (tmp_path / "missing.db").exists()


def test_a_full_disk_is_said_in_one_line_and_the_store_works_again_when_there_is_room(tmp_path):
    from edgeopt.fleet.store import StoreUnavailable

    with FleetStore(f"sqlite:///{tmp_path / 'fleet.db'}") as full:
        full.enroll("sorter-1", os.urandom(32), T0)
        with full.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

        @sa.event.listens_for(full.engine, "connect")
        def _tiny(dbapi_connection, _record):  # SQLite's own "database or disk is full", without filling a disk
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

        full.engine.dispose()
        with pytest.raises(StoreUnavailable, match="unavailable: database or disk is full"):
            for i in range(1000):
                full.record_report(report("sorter-1", 1, last_error="x" * 400 + str(i)), T0)
        sa.event.remove(full.engine, "connect", _tiny)
        full.engine.dispose()
        full.record_report(report("sorter-1", 2), T0)
        assert full.latest()[0].report.active_release == 2
