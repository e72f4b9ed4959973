"""`pacsguard scan --cluster/--resume`: the sharded scan's command-line side.

Kept apart from `cli/scan.py` so that Dask is imported only when a cluster is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import typer

from pacsguard.errors import UsageError
from pacsguard.report.jsonl import TextSink
from pacsguard.report.table import ScanSummary
from pacsguard.scan.distributed import ShardedRun, parse_cluster, scan_on_cluster
from pacsguard.scan.geo import GeoDatabases
from pacsguard.scan.http_session import HttpOptions
from pacsguard.scan.journal import default_state_dir
from pacsguard.scan.model import HostReport, Target
from pacsguard.scan.probe import ProbeOptions
from pacsguard.scan.scheduler import Limits
from pacsguard.scan.targets import Scope


def scan_sharded(
    cluster: str | None,
    resume: str | None,
    shard_size: int,
    state_dir: Path | None,
    output: Path | None,
    scope: Scope | Sequence[Target],
    options: ProbeOptions,
    limits: Limits,
    *,
    stdout: TextSink | None,
    keep: list[HostReport] | None,
    http: HttpOptions,
    history: AbstractContextManager[TextSink | None] | None = None,
    geo: GeoDatabases | None = None,
) -> ScanSummary:
    """Run or resume the sharded scan; announce its run id on standard error first.

    `history` (the `--store` run, not yet started) gets the complete output once the last
    shard is written: never a partial run, never a record twice, however many resumes it
    took."""
    if cluster is None:
        raise UsageError("--resume needs --cluster: say where the remaining shards run")
    run = ShardedRun(
        cluster=parse_cluster(cluster),
        output=output,
        state_dir=state_dir or default_state_dir(),
        shard_size=shard_size,
        resume=resume,
    )
    from pacsguard.cli.scan import _progress_bar

    progress = _progress_bar() if sys.stderr.isatty() else None
    total = scope.target_count if isinstance(scope, Scope) else len(scope)
    task = progress.add_task("scanning", total=total) if progress else None

    def advance(count: int) -> None:
        if progress is not None and task is not None:
            progress.advance(task, count)

    def announce(text: str) -> None:
        typer.echo(text, err=True)

    if progress is not None:
        with progress:
            outcome = scan_on_cluster(
                run, scope, options, limits, stdout=stdout, keep=keep, http=http,
                on_progress=advance, announce=announce, geo=geo,
            )  # fmt: skip
    else:
        outcome = scan_on_cluster(
            run, scope, options, limits, stdout=stdout, keep=keep, http=http, announce=announce,
            geo=geo,
        )  # fmt: skip
    if outcome.earlier_records:
        typer.echo(
            f"run {outcome.run_id}: {outcome.earlier_records} records written before the "
            f"resume, {outcome.summary.targets - outcome.earlier_records} now",
            err=True,
        )
    if history is not None:
        with history as sink, outcome.output.open(encoding="utf-8") as written:
            if sink is not None:
                for line in written:
                    sink.write(line)
    return outcome.summary
