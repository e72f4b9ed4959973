"""`pacsguard demo`: start a lab of simulated PACS on loopback, scan it, report, check the truth.

Everything runs in one process and one event loop: the farm serves while the scanner probes it.
Results go to a directory (default `./pacsguard-demo`): `scan.jsonl`, `truth.json` and the
self-contained HTML report `report.html`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pacsguard.cli._signals import hold_stop_signals, wait_for_stop_signal
from pacsguard.errors import LabError, UsageError

if TYPE_CHECKING:  # the lab, scanner and archive are imported when the demo runs, not for --help
    from rich.console import Console

    from pacsguard.archive.demo_web import WebDemo
    from pacsguard.lab.verify import Agreement
    from pacsguard.report.table import ScanSummary
    from pacsguard.scan.model import HostReport


async def _run_demo(
    hosts: int, seed: int, base_address: str, out: Path
) -> tuple[ScanSummary, list[HostReport], Agreement]:
    from pacsguard.cli.scan import scan_scope
    from pacsguard.dicom.client import Timeouts
    from pacsguard.lab.farm import Farm
    from pacsguard.lab.profiles import plan_farm
    from pacsguard.lab.truth import write_truth
    from pacsguard.lab.verify import compare
    from pacsguard.scan.model import Target
    from pacsguard.scan.probe import ProbeOptions
    from pacsguard.scan.scheduler import Limits

    plan = plan_farm(hosts, base_address=base_address, port=0, seed=seed)
    async with Farm(plan) as farm:
        bound = farm.plan
        truth = write_truth(out / "truth.json", bound)
        targets = [Target(h.address, h.port) for h in bound.hosts]
        reports: list[HostReport] = []
        options = ProbeOptions(timeouts=Timeouts(connect=2.0, read=2.0), total_timeout=15.0)
        with (out / "scan.jsonl").open("w", encoding="utf-8") as jsonl:
            summary = await scan_scope(
                targets, options, Limits(concurrency=128), jsonl=jsonl, on_report=reports
            )
    return summary, reports, compare(reports, truth["hosts"])


def demo(
    hosts: Annotated[int, typer.Option(min=1, max=5000, help="Simulated PACS to start.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the lab.")] = 2026,
    base_address: Annotated[
        str, typer.Option(help="First lab address (127.0.0.0/8 only).")
    ] = "127.77.0.1",
    out: Annotated[Path, typer.Option(help="Where to write results.")] = Path("pacsguard-demo"),
    keep_serving: Annotated[
        bool, typer.Option("--serve", help="Keep the secure archive running until Ctrl-C.")
    ] = False,
) -> None:
    """Scan a lab of simulated exposed PACS, then run a secure archive and scan that too."""
    from rich.console import Console

    from pacsguard.archive.demo import run_archive_demo
    from pacsguard.archive.selfcheck import describe_web, web_reports
    from pacsguard.report.table import render_table
    from pacsguard.scan.model import Severity

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]pacsguard demo[/]: starting {hosts} simulated PACS on loopback from "
        f"{base_address} (synthetic patients only) and scanning them."
    )
    try:
        summary, reports, agreement = asyncio.run(_run_demo(hosts, seed, base_address, out))
    except LabError as exc:
        raise UsageError(str(exc)) from None
    render_table(reports, console)
    console.print(summary.render(), highlight=False)
    console.print(
        f"Ground truth: the scan got {agreement.agreeing} of {agreement.hosts} hosts exactly "
        "right (verdict, AE policy, counts, identifier categories)."
    )
    for line in agreement.mismatches[:10]:
        console.print(f"  [yellow]differs[/]: {line}")
    from pacsguard.report.digest import digest, read_records
    from pacsguard.report.html import render_html

    page = out / "report.html"
    page.write_text(
        render_html(digest(read_records(out / "scan.jsonl")), source="scan.jsonl"),
        encoding="utf-8",
    )
    console.print(
        f"Records: {out / 'scan.jsonl'}   truth: {out / 'truth.json'}   report: {page}",
        highlight=False,
    )
    console.print()
    console.print("[bold]Now the fix:[/] a pacsguard archive with its secure defaults.")
    archive = run_archive_demo(out / "archive", seed)
    try:
        endpoint = archive.running.endpoints[0]
        console.print(
            f"Archive listening on {endpoint} (TLS; every peer must be registered and "
            f"authenticated). The administrator stored {archive.stored} synthetic instances "
            f"over TLS with a PS3.7 user identity ({archive.refused} refused).",
            highlight=False,
        )
        # Informational findings (e.g. "DICOMweb requires authentication") are what a secure
        # archive should show a stranger; anything above them is a problem.
        findings = sorted(
            {f.id for r in archive.reports for f in r.findings if f.severity is not Severity.INFO}
        )
        verdict = (
            "was refused and found nothing" if not findings else f"found {', '.join(findings)}"
        )
        console.print(
            f"The scanner, knocking on the archive as a stranger (DIMSE and HTTPS), {verdict}.",
            highlight=False,
        )
        for report in web_reports(archive.reports):
            console.print(f"  {describe_web(report)}", highlight=False)
        web_ok = _show_web(archive.web, console)
        console.print(
            f"Audit log: {archive.audit_lines} hash-chained events, chain "
            + ("intact." if archive.audit_ok else "BROKEN."),
            highlight=False,
        )
        console.print(f"Archive data, config and CA: {out / 'archive'}", highlight=False)
        if keep_serving:
            console.print("Serving until Ctrl-C.")
            _wait_for_interrupt()
    finally:
        archive.running.stop()
    console.print(
        "Next: scan a network you are allowed to scan: .venv/bin/pacsguard scan <CIDR> "
        "--format table; run your own archive: .venv/bin/pacsguard serve",
        highlight=False,
    )
    if agreement.mismatches or findings or not archive.audit_ok or not web_ok:
        raise typer.Exit(1)


def _show_web(web: WebDemo | None, console: Console) -> bool:
    """Print the DICOMweb round trip for a new user; False when it did not go as it must."""
    if web is None:
        console.print("DICOMweb round trip skipped (the demo folder was not fresh).")
        return True
    console.print(f"[bold]DICOMweb[/] (QIDO-RS, WADO-RS) on {web.url}, same gate and audit:")
    console.print(f"  $ {web.command}", highlight=False)
    if web.token_id is not None:
        console.print(
            f"    issued token {web.token_id} (printed once; the archive keeps only its SHA-256)",
            highlight=False,
        )
    if web.anonymous_status is not None:
        challenge = f" ({web.anonymous_challenge})" if web.anonymous_challenge else ""
        console.print(
            f"  GET /studies without a token   -> {web.anonymous_status}{challenge}",
            highlight=False,
        )
    if web.studies is not None:
        console.print(
            f"  GET /studies with the token    -> 200, {web.studies} studies (QIDO-RS search)",
            highlight=False,
        )
    if web.instances_in_study is not None:
        console.print(
            f"  GET /studies/…/instances       -> 200, {web.instances_in_study} instances "
            "in the first study (QIDO-RS search)",
            highlight=False,
        )
    if web.wado_status is not None:
        same = (
            "byte-identical to what the administrator stored over DIMSE"
            if web.identical
            else "[bold red]NOT identical[/] to what was stored"
        )
        console.print(
            f"  GET /studies/…/instances/…     -> {web.wado_status}, one instance of "
            f"{web.wado_bytes:,} bytes (WADO-RS retrieve), {same}",
            highlight=False,
        )
    for problem in web.problems:
        console.print(f"  [bold red]problem[/]: {problem}", highlight=False)
    return web.ok


def _wait_for_interrupt() -> None:
    hold_stop_signals()
    wait_for_stop_signal()
