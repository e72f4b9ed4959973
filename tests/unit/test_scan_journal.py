"""The resume journal and shard cutting of a sharded scan (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsguard.errors import ResumeError, UsageError
from pacsguard.scan.distributed import parse_cluster, shards
from pacsguard.scan.journal import RunJournal, done_shards, new_run_id, scan_fingerprint
from pacsguard.scan.model import Target
from pacsguard.scan.probe import ProbeOptions
from pacsguard.scan.targets import build_scope


def _line(host: str) -> str:
    return json.dumps({"host": host}) + "\n"


def _start(tmp_path: Path, run_id: str = "run-1", fingerprint: str = "f") -> RunJournal:
    return RunJournal.start(
        tmp_path / "state",
        run_id,
        fingerprint=fingerprint,
        output=tmp_path / "out.jsonl",
        shard_size=2,
    )


def test_shards_are_contiguous_numbered_slices() -> None:
    targets = [Target(f"127.0.0.{i}", 104) for i in range(1, 8)]
    cut = list(shards(targets, 3))
    assert [i for i, _ in cut] == [0, 1, 2]
    assert [len(s) for _, s in cut] == [3, 3, 1]
    assert [t for _, s in cut for t in s] == targets
    assert list(shards([], 3)) == []


def test_scope_order_and_so_shards_are_deterministic() -> None:
    scope = build_scope(["127.0.0.0/28", "127.0.1.5:11112"], ports=(104, 4242))
    again = build_scope(["127.0.0.0/28", "127.0.1.5:11112"], ports=(104, 4242))
    assert list(shards(scope, 5)) == list(shards(again, 5))
    options = ProbeOptions()
    assert scan_fingerprint(scope, options, 5) == scan_fingerprint(again, options, 5)
    other = build_scope(["127.0.0.0/28"], ports=(104, 4242))
    assert scan_fingerprint(scope, options, 5) != scan_fingerprint(other, options, 5)
    assert scan_fingerprint(scope, options, 5) != scan_fingerprint(scope, options, 6)
    assert scan_fingerprint(scope, options, 5) != scan_fingerprint(
        scope, ProbeOptions(count=False), 5
    )


def test_parse_cluster() -> None:
    assert parse_cluster("local:2").local_workers == 2
    assert parse_cluster("tcp://127.0.0.1:8786").scheduler == "tcp://127.0.0.1:8786"
    for bad in ("local:0", "local:x", "127.0.0.1:8786", "http://127.0.0.1:8786", ""):
        with pytest.raises(UsageError):
            parse_cluster(bad)


def test_appended_shards_are_journaled_with_their_offsets(tmp_path: Path) -> None:
    with _start(tmp_path) as journal:
        journal.append_shard(1, [_line("a"), _line("b")])
        journal.append_shard(0, [_line("c")])
    assert done_shards(tmp_path / "state", "run-1") == {0, 1}
    text = (tmp_path / "out.jsonl").read_text()
    assert [json.loads(x)["host"] for x in text.splitlines()] == ["a", "b", "c"]


def test_shards_written_together_are_journaled_each_with_its_own_offsets(
    tmp_path: Path,
) -> None:
    with _start(tmp_path) as journal:
        journal.append_shards(
            [(3, (_line("a") + _line("b")).encode(), 2), (1, _line("c").encode(), 1), (2, b"", 0)]
        )
        journal.append_shards([])
        journal.append_shard(0, [_line("d")])
    text = (tmp_path / "out.jsonl").read_text()
    assert [json.loads(x)["host"] for x in text.splitlines()] == ["a", "b", "c", "d"]
    assert done_shards(tmp_path / "state", "run-1") == {0, 1, 2, 3}
    # A resume finds where each shard ended, and the output's end after the last.
    journal, earlier = RunJournal.resume(
        tmp_path / "state", "run-1", fingerprint="f", output=tmp_path / "out.jsonl"
    )
    with journal:
        assert earlier.end_offset == len(text.encode())
        assert [r["host"] for r in journal.earlier_records(len(_line("a")))] == ["a"]


def test_resume_cuts_a_torn_shard_and_skips_done_ones(tmp_path: Path) -> None:
    with _start(tmp_path) as journal:
        journal.append_shard(0, [_line("a"), _line("b")])
        journal.append_shard(2, [_line("e")])
    written = (tmp_path / "out.jsonl").read_bytes()
    # The coordinator died while writing shard 1: part of it reached the file, no journal row.
    with (tmp_path / "out.jsonl").open("ab") as out:
        out.write(_line("c").encode() + b'{"host": "d')
    journal, earlier = RunJournal.resume(
        tmp_path / "state", "run-1", fingerprint="f", output=tmp_path / "out.jsonl"
    )
    with journal:
        assert earlier.done == {0, 2}
        assert earlier.end_offset == len(written)
        assert [r["host"] for r in journal.earlier_records(earlier.end_offset)] == ["a", "b", "e"]
        assert (tmp_path / "out.jsonl").read_bytes() == written
        journal.append_shard(1, [_line("c"), _line("d")])
    hosts = [json.loads(x)["host"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(hosts) == ["a", "b", "c", "d", "e"]
    assert done_shards(tmp_path / "state", "run-1") == {0, 1, 2}


def test_resume_refuses_another_scan_or_output_and_loses_nothing(tmp_path: Path) -> None:
    with _start(tmp_path) as journal:
        journal.append_shard(0, [_line("a")])
    before = (tmp_path / "out.jsonl").read_bytes()
    state = tmp_path / "state"
    with pytest.raises(ResumeError, match="other targets"):
        RunJournal.resume(state, "run-1", fingerprint="g", output=None)
    with pytest.raises(ResumeError, match="same -o"):
        RunJournal.resume(state, "run-1", fingerprint="f", output=tmp_path / "other.jsonl")
    with pytest.raises(ResumeError, match="no run"):
        RunJournal.resume(state, "run-2", fingerprint="f", output=None)
    with pytest.raises(ResumeError, match="bad run id"):
        RunJournal.resume(state, "../run-1", fingerprint="f", output=None)
    with pytest.raises(ResumeError, match="already exists"):
        _start(tmp_path)
    assert (tmp_path / "out.jsonl").read_bytes() == before
    (tmp_path / "out.jsonl").write_bytes(before[:3])
    with pytest.raises(ResumeError, match="shorter"):
        RunJournal.resume(state, "run-1", fingerprint="f", output=None)
    assert (tmp_path / "out.jsonl").read_bytes() == before[:3]


def test_one_coordinator_per_run(tmp_path: Path) -> None:
    with _start(tmp_path), pytest.raises(ResumeError, match="in use"):
        RunJournal.resume(tmp_path / "state", "run-1", fingerprint="f", output=None)
    journal, _ = RunJournal.resume(tmp_path / "state", "run-1", fingerprint="f", output=None)
    journal.close()


def test_run_ids_are_distinct_and_valid(tmp_path: Path) -> None:
    ids = {new_run_id() for _ in range(5)}
    assert len(ids) == 5
    for run_id in ids:
        (tmp_path / run_id).mkdir()
        _start(tmp_path / run_id, run_id).close()


def test_an_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="cannot write"):
        RunJournal.start(
            tmp_path / "state",
            "run-1",
            fingerprint="f",
            output=tmp_path / "missing" / "out.jsonl",
            shard_size=2,
        )
    assert not (tmp_path / "state" / "run-1.sqlite").exists()


def test_cli_cluster_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pacsguard.cli import main

    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["scan", "127.0.0.1", "--cluster", "local:2", *state]) == 2
    assert "needs -o" in capsys.readouterr().err
    assert main(["scan", "127.0.0.1", "--resume", "run-1", *state]) == 2
    assert "--resume needs --cluster" in capsys.readouterr().err
    assert main(["scan", "127.0.0.1", "--cluster", "127.0.0.1:8786", *state]) == 2
    assert "local:N" in capsys.readouterr().err
    out = ["-o", str(tmp_path / "out.jsonl")]
    assert (
        main(["scan", "127.0.0.1", "--cluster", "local:2", "--resume", "nope", *out, *state]) == 2
    )
    assert "no run nope" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_dask_is_imported_only_for_cluster_scans() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pacsguard.cli import main\n"
        "assert main(['scan', '--help']) == 0\n"
        "assert main(['scan', '127.0.0.1', '--cluster', 'bad']) == 2\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_edited_target_file_changes_the_fingerprint(tmp_path: Path) -> None:
    listed = tmp_path / "targets.txt"
    listed.write_text("127.0.0.1:104\n127.0.0.2:104\n")
    options = ProbeOptions()
    before = scan_fingerprint(build_scope([], target_files=[listed]), options, 5)
    assert before == scan_fingerprint(build_scope([], target_files=[listed]), options, 5)
    listed.write_text("127.0.0.3:104\n127.0.0.2:104\n127.0.0.9:104\n")
    assert before != scan_fingerprint(build_scope([], target_files=[listed]), options, 5)
