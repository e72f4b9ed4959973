"""The history store on SQLite and a real PostgreSQL: runs, records, migrations, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from pacsguard import __version__
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.cli import main
from pacsguard.errors import UsageError
from pacsguard.survey.schema import VERSION_TABLE, metadata
from pacsguard.survey.store import HistoryStore
from tests.unit.test_survey import host


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_import_records_a_run_with_counts_and_every_record(
    history_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [
        host("127.0.0.1", 3, country="DE", as_org="Klinik"),
        host("127.0.0.2", 0),
        host("127.0.0.3", 0, reachable=False),
    ]
    scan_file = write_jsonl(tmp_path / "scan.jsonl", records)
    assert main(["survey", "import", str(scan_file), "--store", history_url]) == 0
    run_id = int(capsys.readouterr().out.strip())
    with HistoryStore(history_url) as store:
        run = store.run(run_id)
        assert (run.kind, run.records, run.reachable, run.dicom) == ("import", 3, 2, 2)
        assert (run.exposed, run.studies, run.instances) == (1, 3, 30)
        assert run.tool_version == __version__
        assert run.started_at == records[0]["scanned_at"]
        assert run.finished_at == records[-1]["scanned_at"]
        assert list(store.records(run_id)) == records
        assert [r["host"] for r in store.records(run_id, exposed_only=True)] == ["127.0.0.1"]
    table = tmp_path / "survey.csv"
    assert main(["survey", "report", str(run_id), "--store", history_url, "--csv", str(table)]) == 0
    lines = table.read_text().splitlines()
    assert lines[-1].startswith("total,3,3,2,2,1,3,30,")  # addresses, targets, DICOM, accepting
    # a second import is a second run; the first is untouched
    assert main(["survey", "import", str(scan_file), "--store", history_url]) == 0
    assert int(capsys.readouterr().out.strip()) == run_id + 1


def test_migrations_create_exactly_the_schema_in_their_own_version_table(
    history_url: str,
) -> None:
    HistoryStore(history_url).close()
    engine = create_engine(history_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == "h0001"
            assert compare_metadata(context, metadata) == []
            assert "alembic_version" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_history_and_archive_index_share_a_database_without_mixing(history_url: str) -> None:
    """Both schemas in one database: each keeps its own revision and tables."""
    SqlIndex(history_url).close()
    HistoryStore(history_url).close()
    engine = create_engine(history_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert {"alembic_version", VERSION_TABLE, "survey_runs", "instances"} <= tables
            index_rev = MigrationContext.configure(conn).get_current_revision()
            history = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert index_rev != history.get_current_revision() == "h0001"
    finally:
        engine.dispose()


def test_an_interrupted_run_keeps_what_was_committed_and_has_no_end(history_url: str) -> None:
    with HistoryStore(history_url) as store:
        writer = store.start_run("scan", scope={"targets": ["127.0.0.0/30"]})
        with pytest.raises(KeyboardInterrupt), writer:
            writer.write(json.dumps(host("127.0.0.1", 2)) + "\n")
            writer.write(json.dumps(host("127.0.0.2", 0)))  # a line in two writes
            writer.write("\n")
            raise KeyboardInterrupt
        run = store.run(writer.run_id)
        assert run.finished_at is None
        assert run.scope == {"targets": ["127.0.0.0/30"]}
        assert store.host_count(writer.run_id) == 2


def test_bad_store_urls_and_unknown_runs_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACSGUARD_HISTORY", raising=False)
    with pytest.raises(UsageError, match="not a database URL"):
        HistoryStore("history.sqlite")
    with pytest.raises(UsageError, match="unsupported"):
        HistoryStore("mysql://x@127.0.0.1/db")
    with pytest.raises(UsageError, match="does not exist"):
        HistoryStore(f"sqlite:///{tmp_path / 'missing' / 'h.sqlite'}")
    with (
        HistoryStore(f"sqlite:///{tmp_path / 'h.sqlite'}") as store,
        pytest.raises(UsageError, match="no run 7"),
    ):
        store.run(7)
    assert main(["survey", "runs"]) == 2  # no --store and no $PACSGUARD_HISTORY
    assert main(["scan", "127.0.0.1", "--org", "X"]) == 2  # --org without --recheck
    assert main(["scan", "--recheck", "1", "--org", "X"]) == 2  # --recheck without a store


def test_records_are_committed_while_the_run_streams(
    history_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second reader sees records before the run ends: by batch size, and by time."""
    import pacsguard.survey.store as store_module

    monkeypatch.setattr(store_module, "BATCH", 3)
    with HistoryStore(history_url) as store, HistoryStore(history_url) as reader:
        writer = store.start_run("scan")
        for n in range(1, 4):
            writer.write(json.dumps(host(f"127.0.0.{n}", n)) + "\n")
            writer.flush()  # less than BATCH_SECONDS since the last commit: no commit yet
        assert reader.host_count(writer.run_id) == 3  # the third record filled a batch
        writer.write(json.dumps(host("127.0.0.4", 0)) + "\n")
        writer.flush()
        assert reader.host_count(writer.run_id) == 3
        monkeypatch.setattr(store_module, "BATCH_SECONDS", 0.0)
        writer.flush()
        assert reader.host_count(writer.run_id) == 4
        assert reader.run(writer.run_id).finished_at is None
        writer.close()
        done = reader.run(writer.run_id)
        assert done.finished_at is not None and done.records == 4 and done.studies == 6


def test_an_import_is_all_or_nothing(history_url: str, tmp_path: Path) -> None:
    good = [host("127.0.0.1", 3), host("127.0.0.2", 0)]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(good[0]) + "\n{not json\n")
    no_host = {**good[1]}
    del no_host["host"]
    missing = write_jsonl(tmp_path / "missing.jsonl", [good[0], no_host])
    assert main(["survey", "import", str(bad_json), "--store", history_url]) == 2
    assert main(["survey", "import", str(missing), "--store", history_url]) == 2
    with HistoryStore(history_url) as store:
        assert store.runs() == []
    assert bad_json.read_text().startswith(json.dumps(good[0]))  # the input is untouched


def test_two_scanners_write_to_one_store_at_once(history_url: str) -> None:
    """Shared use: two runs stream into the store interleaved; each gets its own records."""
    import threading

    with HistoryStore(history_url) as first, HistoryStore(history_url) as second:
        writers = [first.start_run("scan"), second.start_run("scan")]
        assert writers[0].run_id != writers[1].run_id

        def stream(n: int) -> None:
            for k in range(1, 41):
                writers[n].add(host(f"127.{n}.0.{k}", k % 3))
                writers[n].commit()
            writers[n].close()

        threads = [threading.Thread(target=stream, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for n, writer in enumerate(writers):
            hosts = {r["host"] for r in first.records(writer.run_id)}
            assert hosts == {f"127.{n}.0.{k}" for k in range(1, 41)}
            assert first.run(writer.run_id).records == 40


def test_recheck_targets_are_the_organisations_endpoints(history_url: str, tmp_path: Path) -> None:
    from pacsguard.survey.hook import recheck_targets

    records = [
        host("127.0.0.1", 3, country="DE", as_org="Provider"),
        host("127.0.0.9", 0, country="DE", as_org="Provider"),  # nothing exposed: rechecked too
        host("::1", 2, country="DE", as_org="Provider"),
        host("127.1.0.1", 2, country="FR", as_org="Other"),
    ]
    records[2]["port"] = 11112
    with HistoryStore(history_url) as store, store.start_run("import") as writer:
        for record in records:
            writer.add(record)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("cidr,organisation\n127.0.0.0/29,Clinic North\n")
    run = writer.run_id
    assert recheck_targets(history_url, run, "Clinic North", contacts) == ["127.0.0.1:104"]
    assert recheck_targets(history_url, run, "Provider", contacts) == [
        "127.0.0.9:104",
        "[::1]:11112",
    ]
    assert recheck_targets(history_url, run, "Provider", None) == [
        "127.0.0.1:104",
        "127.0.0.9:104",
        "[::1]:11112",
    ]
    with pytest.raises(UsageError, match="no endpoint of organisation 'Nobody'"):
        recheck_targets(history_url, run, "Nobody", None)
