"""What `pacsguard scan` needs from the survey package: a history sink and recheck targets.

Kept apart so the scan command's own module only gains a few lines, and imported lazily so
`pacsguard scan` without `--store` loads no SQLAlchemy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from pacsguard.errors import UsageError
from pacsguard.report.digest import row_from_record
from pacsguard.survey.store import RunWriter, open_store


def recheck_targets(
    store_url: str | None, run_id: int, organisation: str, contacts: Path | None
) -> list[str]:
    """`host:port` of the run's endpoints that belong to `organisation` (as `survey disclose`
    assigns them: contact table first, then the AS organisation), deduplicated, in order."""
    from pacsguard.survey.disclose import organisation_of, read_contacts

    table = read_contacts(contacts) if contacts is not None else []
    with open_store(store_url) as store:
        found: dict[str, None] = {}
        for record in store.records(run_id):
            row = row_from_record(record)
            if organisation_of(row, table)[0] == organisation:
                host = f"[{row.host}]" if ":" in row.host else row.host
                found[f"{host}:{row.port}"] = None
    if not found:
        raise UsageError(
            f"run {run_id} has no endpoint of organisation {organisation!r} "
            "(`pacsguard survey disclose` lists the organisations)"
        )
    return list(found)


@contextlib.contextmanager
def history_sink(
    store_url: str | None,
    *,
    scope: dict[str, Any],
    options: dict[str, Any],
    parent_run: int | None = None,
) -> Iterator[RunWriter | None]:
    """A run in the history store for this scan (None without a store); prints its id."""
    if store_url is None and parent_run is None:
        yield None
        return
    with open_store(store_url) as store:
        if parent_run is not None:
            store.run(parent_run)
        writer = store.start_run(
            "recheck" if parent_run is not None else "scan",
            source="pacsguard scan",
            scope=scope,
            options=options,
            parent_run=parent_run,
        )
        typer.echo(f"history run {writer.run_id}", err=True)
        with writer:
            yield writer
