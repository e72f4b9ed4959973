"""CSV: one row per scan record, for spreadsheets and ticketing imports."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Final, TextIO

from pacsguard.report.digest import HostRow

COLUMNS: Final = (
    "host", "port", "transport", "tls", "reachable", "dicom", "association", "product",
    "worst_severity", "finding_ids", "patients", "studies", "series", "instances",
    "lower_bound", "phi_categories", "honeypot", "honeypot_reasons", "error", "scanned_at",
)  # fmt: skip


def _cell(value: str) -> str:
    """Neutralise spreadsheet formulas (CWE-1236): peer-chosen text must not run in Excel."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(rows: Iterable[HostRow], stream: TextIO) -> int:
    """Write the header and one row per host; returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        values = (
            row.host, row.port, row.transport, row.tls, row.reachable, row.dicom, row.status,
            row.product or "", row.worst or "", " ".join(f.id for f in row.findings),
            row.patients, row.studies, row.series, row.instances, row.lower_bound,
            " ".join(row.phi_categories), row.honeypot, "; ".join(row.honeypot_reasons),
            row.error or "", row.scanned_at,
        )  # fmt: skip
        writer.writerow([_cell(str(v).lower() if isinstance(v, bool) else str(v)) for v in values])
        count += 1
    return count
