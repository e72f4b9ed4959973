"""`pacsguard scan`: probe DICOM endpoints (DIMSE and web) and report what they expose.

Start-up matters (a scan of one closed port should take a fraction of a second): rich is
imported only for a progress bar on a terminal or `--format table`, the probe imports pydicom
and pynetdicom only to exchange DIMSE messages (echo, count), and the HTTP tier (httpx, its
catalog, `HttpOptions`) only once a web target comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pacsguard.dicom.connect import Timeouts
from pacsguard.errors import UsageError
from pacsguard.report.jsonl import TextSink, write_record
from pacsguard.report.table import ScanSummary, render_table
from pacsguard.scan.candidates import InputFormat
from pacsguard.scan.geo import GeoDatabases, GeoLookup
from pacsguard.scan.model import HostReport, Observations, Severity, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.scheduler import Limits, run_scan
from pacsguard.scan.targets import (
    DEFAULT_PORTS,
    DEFAULT_WEB_PORTS,
    WEB_SCHEMES,
    Scope,
    build_scope,
    parse_ports,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from pacsguard.scan.http_probe import HttpOptions


class OutputFormat(StrEnum):
    JSONL = "jsonl"
    TABLE = "table"


async def scan_scope(
    scope: Scope | Sequence[Target],
    options: ProbeOptions,
    limits: Limits,
    *,
    jsonl: TextSink | None,
    on_report: list[HostReport] | None = None,
    progress: Progress | None = None,
    http: HttpOptions | Callable[[], HttpOptions] | None = None,
    geo: GeoLookup | None = None,
) -> ScanSummary:
    """Run the scan, streaming JSON Lines; keep reports only when `on_report` asks for them.
    With `geo`, each report gets the host's country and AS."""
    summary = ScanSummary()
    total = scope.target_count if isinstance(scope, Scope) else len(scope)
    task = progress.add_task("scanning", total=total) if progress else None
    if total > 1 and limits.concurrency > 1 and (options.echo or options.count):
        # Probes in flight share one event loop: left to the first port that answers, loading
        # pydicom and pynetdicom (0.1 to 0.3 s, more on a loaded machine) would stall every
        # other probe's timers meanwhile. One target alone loads them only if it answers; a
        # verification-only scan (no echo, no count) never needs them.
        import pacsguard.dicom.dimse
        import pacsguard.scan.counting  # noqa: F401

    http_options: HttpOptions | None = None

    async def prober(target: Target) -> Observations:
        nonlocal http_options
        if http_options is None and target.transport in WEB_SCHEMES:
            if callable(http):
                http_options = http()
            else:
                from pacsguard.scan.http_probe import HttpOptions

                http_options = http or HttpOptions()
        return await probe_target(target, options, http_options)

    flush_pending = False

    def flush() -> None:
        nonlocal flush_pending
        flush_pending = False
        if jsonl is not None:
            jsonl.flush()

    loop = asyncio.get_running_loop()
    async for report in run_scan(scope, prober, limits):
        if geo is not None:
            report = replace(report, location=geo.locate(report.observations.target.host))
        summary.add(report)
        if jsonl is not None:
            # Flushed once the loop turns: every record is out as soon as nothing else is
            # ready, and the records of targets that finished together share one write.
            write_record(jsonl, report, flush=False)
            if not flush_pending:
                flush_pending = True
                loop.call_soon(flush)
        if on_report is not None and report.observations.reachable:
            on_report.append(report)
        if progress is not None and task is not None:
            progress.advance(task)
    flush()
    return summary


async def probe_target(
    target: Target, options: ProbeOptions, http: HttpOptions | None
) -> Observations:
    """Probe one target by its transport: the web tier for http(s), DIMSE otherwise.

    Also what each shard of a `--cluster` scan runs on its worker (`pacsguard.scan.distributed`).
    """
    if target.transport in WEB_SCHEMES:
        from pacsguard.scan.http_probe import HttpOptions, probe_http  # httpx and its catalog

        return await probe_http(target, http or HttpOptions())
    return await probe_dimse(target, options)


def scan(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="IP addresses, CIDRs, host names, host:port or [v6]:port; "
            "http://host:port or https://host:port for web targets."
        ),
    ] = None,
    ports: Annotated[
        str,
        typer.Option(
            "-p",
            "--ports",
            help="Ports for targets without their own; 80, 443, 8042, 8080 and 8443 are web.",
        ),
    ] = ",".join(map(str, DEFAULT_PORTS + DEFAULT_WEB_PORTS)),
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write JSON Lines records here.")
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="What to print on standard output.")
    ] = OutputFormat.JSONL,
    input_list: Annotated[
        list[Path] | None,
        typer.Option(
            "-iL", "--input-list", help="File of targets, or masscan, ZMap or nmap output."
        ),
    ] = None,
    input_format: Annotated[
        InputFormat, typer.Option(help="Format of the -iL files (auto: recognised by content).")
    ] = InputFormat.AUTO,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Addresses or CIDRs never to touch.")
    ] = None,
    exclude_file: Annotated[
        list[Path] | None, typer.Option("--exclude-file", help="File of exclusions.")
    ] = None,
    allow_large_scope: Annotated[
        bool, typer.Option("--allow-large-scope", help="Confirm a scope larger than a /16.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, max=20000, help="Targets in flight at once.")
    ] = 256,
    rate: Annotated[
        float, typer.Option(min=0.0, help="New targets per second (0: no limit).")
    ] = 0.0,
    connect_timeout: Annotated[float, typer.Option(min=0.05)] = 3.0,
    read_timeout: Annotated[float, typer.Option(min=0.05)] = 5.0,
    total_timeout: Annotated[
        float, typer.Option(min=0.1, help="Budget for one target, in seconds.")
    ] = 60.0,
    count: Annotated[
        bool, typer.Option("--count/--no-count", help="Count exposed studies with C-FIND.")
    ] = True,
    echo: Annotated[bool, typer.Option("--echo/--no-echo", help="Send C-ECHO.")] = True,
    guess_aets: Annotated[
        bool,
        typer.Option("--guess-aets", help="Also try a longer list of common called AE titles."),
    ] = False,
    vendor_aets: Annotated[
        bool,
        typer.Option(
            "--vendor-aets/--no-vendor-aets",
            help="When ANY-SCP is refused as an unknown called AE, try the curated "
            "vendor-default titles (all at once).",
        ),
    ] = True,
    called_aet: Annotated[
        list[str] | None,
        typer.Option("--called-aet", help="A called AE title you know; tried right after ANY-SCP."),
    ] = None,
    guess_interval: Annotated[
        float, typer.Option(min=0.0, help="Seconds between guessed AE titles on one host.")
    ] = 0.5,
    geoip_country: Annotated[
        Path | None,
        typer.Option(help="GeoLite2-Country/City or DB-IP Country Lite .mmdb: adds location."),
    ] = None,
    geoip_asn: Annotated[
        Path | None,
        typer.Option(help="GeoLite2-ASN or DB-IP ASN Lite .mmdb: adds the AS to location."),
    ] = None,
    default_credentials: Annotated[
        bool,
        typer.Option(
            "--default-credentials",
            help="On web targets, try a short cited list of default logins; only report a "
            "working one (no data is read with it).",
        ),
    ] = False,
    fail_on: Annotated[
        Severity, typer.Option(help="Exit 1 when a finding is at least this severe.")
    ] = Severity.LOW,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="PACSGUARD_HISTORY",
            help="Also record the run in this history store (sqlite:///PATH, postgresql+psycopg://..).",
        ),
    ] = None,
    recheck: Annotated[
        int | None, typer.Option("--recheck", help="Re-scan endpoints of this stored run (--org).")
    ] = None,
    org: Annotated[
        str | None, typer.Option("--org", help="With --recheck: only this organisation's hosts.")
    ] = None,
    contacts: Annotated[
        Path | None, typer.Option("--contacts", help="With --org: CSV cidr,organisation[,email].")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="Shard the scan on Dask: local:N worker processes, or tcp://HOST:PORT."),
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue the --cluster run with this id.")
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Targets per --cluster shard.")
    ] = 256,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Resume journals (default ~/.local/state/pacsguard/runs)."),
    ] = None,
) -> None:
    """Probe DICOM endpoints; one JSON Lines record per target.

    Exit codes: 0 no finding at --fail-on or above, 1 such findings, 2 usage error.
    """
    if (org is not None or contacts is not None) and recheck is None:
        raise UsageError("--org and --contacts go with --recheck RUN")
    if recheck is not None:
        from pacsguard.survey.hook import recheck_targets

        if org is None:
            raise UsageError("--recheck needs --org NAME (as `pacsguard survey disclose` names it)")
        targets = [*(targets or []), *recheck_targets(store, recheck, org, contacts)]
    scope = build_scope(
        targets or [],
        ports=parse_ports(ports),
        target_files=input_list or [],
        input_format=input_format,
        excludes=exclude or [],
        exclude_files=exclude_file or [],
        allow_large=allow_large_scope,
    )
    options = ProbeOptions(
        timeouts=Timeouts(connect=connect_timeout, read=read_timeout),
        total_timeout=total_timeout,
        echo=echo,
        count=count,
        guess_aets=guess_aets,
        vendor_aets=vendor_aets,
        guess_interval=guess_interval,
        called_aets=tuple(_valid_aet(a) for a in called_aet or ()),
    )

    def http_options() -> HttpOptions:
        from pacsguard.scan.http_probe import HttpOptions

        return HttpOptions(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_timeout=max(2 * read_timeout, read_timeout + connect_timeout),
            total_timeout=total_timeout,
            default_credentials=default_credentials,
        )

    # The probe ends itself at --total-timeout; the scheduler's backstop follows just after.
    limits = Limits(concurrency=concurrency, rate=rate, target_timeout=total_timeout + 1.0)
    geo = (
        GeoLookup(country_db=geoip_country, asn_db=geoip_asn)
        if geoip_country or geoip_asn
        else None
    )
    keep: list[HostReport] | None = [] if output_format is OutputFormat.TABLE else None
    stdout_jsonl = sys.stdout if output_format is OutputFormat.JSONL else None
    history: contextlib.AbstractContextManager[TextSink | None] = contextlib.nullcontext()
    if store is not None or recheck is not None:
        from pacsguard.survey.hook import history_sink  # SQLAlchemy only when asked for

        run_scope = {
            "targets": targets or [],
            "input_lists": [str(p) for p in input_list or []],
            "input_format": input_format.value,
            "excludes": exclude or [],
            "exclude_files": [str(p) for p in exclude_file or []],
            "ports": ports,
            "target_count": scope.target_count,
        }
        run_options = {
            **{
                k: getattr(options, k)
                for k in ("echo", "count", "guess_aets", "vendor_aets", "total_timeout")
            },
            "called_aets": list(options.called_aets),
            "timeouts": [connect_timeout, read_timeout],
            "concurrency": concurrency,
            "rate": rate,
        }
        history = history_sink(store, scope=run_scope, options=run_options, parent_run=recheck)
    if cluster is not None or resume is not None:
        from pacsguard.cli._cluster import scan_sharded  # imports Dask: only when asked for

        if recheck is not None:
            raise UsageError("--recheck runs in one process: leave out --cluster and --resume")
        if geo is not None:
            geo.close()  # opened above to check the files; each worker opens its own
        summary = scan_sharded(
            cluster, resume, shard_size, state_dir, output, scope, options, limits,
            stdout=stdout_jsonl, keep=keep, http=http_options(), history=history,
            geo=GeoDatabases(geoip_country, geoip_asn) if geo is not None else None,
        )  # fmt: skip
        _finish(summary, keep, fail_on)
        return
    with (
        geo or contextlib.nullcontext(),
        output.open("w", encoding="utf-8") if output else contextlib.nullcontext() as file_sink,
        history as store_sink,
    ):
        sinks = [s for s in (stdout_jsonl, file_sink, store_sink) if s is not None]
        tee = _Tee(sinks) if sinks else None
        progress = _progress_bar() if sys.stderr.isatty() else None
        if progress is not None:
            with progress:
                summary = asyncio.run(
                    scan_scope(
                        scope,
                        options,
                        limits,
                        jsonl=tee,
                        on_report=keep,
                        progress=progress,
                        http=http_options,
                        geo=geo,
                    )
                )
        else:
            summary = asyncio.run(
                scan_scope(
                    scope, options, limits, jsonl=tee, on_report=keep, http=http_options, geo=geo
                )
            )
    _finish(summary, keep, fail_on)


def _finish(summary: ScanSummary, keep: list[HostReport] | None, fail_on: Severity) -> None:
    if keep is not None:
        from rich.console import Console

        render_table(keep, Console())
    typer.echo(summary.render(), err=True)
    if any(s.rank >= fail_on.rank for s in summary.severities):
        raise typer.Exit(1)


def _progress_bar() -> Progress:
    """A transient progress bar on standard error (only when it is a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]scan"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _valid_aet(title: str) -> str:
    """AE titles are 1-16 characters of default repertoire, no backslash (PS3.5 6.2)."""
    stripped = title.strip()
    if not 0 < len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
        raise UsageError(f"bad AE title {title!r}: use 1-16 printable characters, no backslash")
    return stripped


class _Tee:
    """Write the same text to several streams (stdout and the -o file)."""

    def __init__(self, streams: Sequence[TextSink]) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for s in self._streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self._streams:
            s.flush()
