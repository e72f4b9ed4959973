"""`pacsguard products`: check the fingerprint and CVE data file; merge an NVD feed offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pacsguard.errors import UsageError
from pacsguard.scan import fingerprints

app = typer.Typer(
    help="The data that maps server fingerprints to products and versions to CVEs.",
    no_args_is_help=True,
)

EXIT_INVALID = 1


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="Data file to check (default: the one shipped).")
    ] = None,
) -> None:
    """Check rules, version ranges, CVSS vectors and citations; exit 1 listing each problem."""
    target = path or fingerprints.default_path()
    problems = fingerprints.validate(_read_json(target, "product data file"))
    if problems:
        for problem in problems:
            typer.echo(f"{target}: {problem}")
        raise typer.Exit(EXIT_INVALID)
    data = fingerprints.load(target)
    typer.echo(
        f"{target}: valid, {len(data.products)} products, "
        f"{len(data.vulnerabilities)} vulnerabilities"
    )


@app.command()
def update(
    feed: Annotated[Path, typer.Argument(help="An NVD CVE API 2.0 JSON document you downloaded.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Write the merged data file here.")],
    data_file: Annotated[
        Path | None, typer.Option("--data", help="Data file to start from (default: shipped).")
    ] = None,
) -> None:
    """Merge the feed's CVEs for known products (by CPE) into a new data file; no network."""
    source = data_file or fingerprints.default_path()
    data = _read_json(source, "product data file")
    problems = fingerprints.validate(data)
    if problems:
        raise UsageError(f"{source} is not valid to start from: {'; '.join(problems)}")
    nvd = _read_json(feed, "NVD feed")
    if not isinstance(nvd, dict) or "vulnerabilities" not in nvd:
        raise UsageError(f"{feed}: not an NVD CVE API 2.0 document (no 'vulnerabilities')")
    try:
        summary = fingerprints.update_from_nvd(data, nvd)
    except fingerprints.ProductDataError as exc:
        raise UsageError(f"{feed}: the merged data would not validate: {exc}") from None
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    typer.echo(
        f"{out}: {len(summary.added)} added ({', '.join(summary.added) or '-'}), "
        f"{len(summary.updated)} updated, {summary.skipped} feed entries not about known "
        "products; review each added entry's 'surface' (NVD does not say how a flaw is reached)"
    )
