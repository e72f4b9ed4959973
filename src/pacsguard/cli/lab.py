"""`pacsguard lab`: synthetic DICOM data and a farm of simulated PACS on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pacsguard.errors import LabError, UsageError
from pacsguard.lab.farm import Farm, FarmStats
from pacsguard.lab.internet import InternetPlan
from pacsguard.lab.profiles import FarmPlan, Profile, plan_farm, require_loopback
from pacsguard.lab.synth import generate_archive, write_files
from pacsguard.lab.truth import phi_categories, write_truth

app = typer.Typer(
    help="Synthetic patients and simulated exposed PACS, on loopback addresses only.",
    no_args_is_help=True,
)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Directory for the DICOM Part 10 files.")],
    patients: Annotated[int, typer.Option(min=1, max=100_000, help="Synthetic patients.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 1,
) -> None:
    """Write a synthetic archive as DICOM files, plus counts.json with what it holds."""
    archive = generate_archive(seed, patients)
    paths = write_files(archive, out)
    counts = archive.counts
    document = {
        "schema": "pacsguard-lab-archive/1",
        "seed": seed,
        "files": len(paths),
        "counts": {
            "patients": counts.patients,
            "studies": counts.studies,
            "series": counts.series,
            "instances": counts.instances,
        },
        "phi_categories": phi_categories(archive),
    }
    (out / "counts.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    table = Table(title=f"Synthetic archive (seed {seed})")
    for column in ("patients", "studies", "series", "instances"):
        table.add_column(column, justify="right")
    table.add_row(*map(str, (counts.patients, counts.studies, counts.series, counts.instances)))
    console = Console()
    console.print(table)
    console.print(f"{len(paths)} files in {out}; counts in {out / 'counts.json'}")


@app.command()
def serve(
    truth: Annotated[Path, typer.Option(help="Where to write the ground-truth JSON.")],
    hosts: Annotated[int, typer.Option(min=1, max=60_000, help="Simulated hosts.")] = 50,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port every host listens on.")
    ] = 11112,
    base_address: Annotated[
        str, typer.Option(help="First host address; must lie in 127.0.0.0/8.")
    ] = "127.77.0.1",
    seed: Annotated[int, typer.Option(help="Seed for profiles and archives.")] = 1,
    profile: Annotated[
        Profile | None, typer.Option(help="Give every host this profile instead of a mix.")
    ] = None,
    internet: Annotated[
        bool,
        typer.Option(
            "--internet",
            help="Serve a lab that looks like the internet over --base: mostly closed, tarpits, "
            "other services, honeypots, ~0.5 % real DICOM; MMDB files next to the truth.",
        ),
    ] = False,
    base: Annotated[
        str, typer.Option(help="--internet: the loopback network to fill (a /16).")
    ] = "127.80.0.0/16",
    internet_ports: Annotated[
        str,
        typer.Option(help="--internet: ports the listening hosts spread over (0: ephemeral)."),
    ] = "104,11112,4242,2762",
) -> None:
    """Serve simulated PACS on loopback addresses until Ctrl-C or SIGTERM."""
    if internet:
        _serve_internet_command(truth, base, internet_ports, seed)
        return
    try:
        require_loopback(base_address)
        plan = plan_farm(hosts, base_address=base_address, port=port, seed=seed, profile=profile)
    except LabError as exc:
        raise UsageError(str(exc)) from None
    # A stale truth file would tell a waiting script that the lab is up before it is.
    truth.unlink(missing_ok=True)
    console = Console()
    try:
        stats = asyncio.run(_serve(plan, truth, console))
    except LabError as exc:
        raise UsageError(str(exc)) from None
    console.print(
        f"stopped: {stats.connections} connections, {stats.associations_accepted} associations "
        f"accepted, {stats.associations_rejected} rejected, {stats.finds} C-FIND, "
        f"{stats.stores} C-STORE, {stats.peer_errors} peer errors"
    )


def _serve_internet_command(truth: Path, base: str, ports_text: str, seed: int) -> None:
    from pacsguard.lab.internet import plan_internet
    from pacsguard.scan.targets import parse_ports

    try:
        # "0": one ephemeral port per host, as tests ask for.
        ports = (0,) if ports_text.strip() == "0" else parse_ports(ports_text)
        plan = plan_internet(base, seed=seed, ports=ports)
    except (LabError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    truth.unlink(missing_ok=True)
    console = Console()
    try:
        stats = asyncio.run(_serve(plan.farm, truth, console, internet=plan))
    except LabError as exc:
        raise UsageError(str(exc)) from None
    console.print(
        f"stopped: {stats.connections} connections, {stats.associations_accepted} associations "
        f"accepted, {stats.peer_errors} peer errors"
    )


async def _serve(
    plan: FarmPlan, truth: Path, console: Console, *, internet: InternetPlan | None = None
) -> FarmStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with Farm(plan) as farm:
        if internet is None:
            # Written only once every host listens: its existence tells scripts the lab is up.
            write_truth(truth, farm.plan)
            console.print(_summary(farm.plan, truth))
        else:
            _write_internet(internet.with_farm(farm.plan), truth, console)
        await stop.wait()
    return farm.stats


def _write_internet(plan: InternetPlan, truth: Path, console: Console) -> None:
    """MMDB files first, the truth last: its existence tells scripts the lab is up."""
    from pacsguard.lab.geoip import write_mmdb
    from pacsguard.lab.internet import internet_truth

    files = write_mmdb(truth.parent, plan)
    document = internet_truth(plan)
    partial = truth.with_name(truth.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(truth)
    table = Table(
        title=f"internet lab {plan.network}: {document['listening']} listening, "
        f"{document['closed']} closed",
        caption=f"ports {', '.join(map(str, plan.ports))}; truth in {truth}; "
        f"MMDB: {files.country}, {files.asn}; Ctrl-C to stop",
    )
    table.add_column("kind")
    table.add_column("hosts", justify="right")
    for kind, count in document["kinds"].items():
        table.add_row(kind, str(count))
    table.add_row("clusters", str(len(document["clusters"])))
    console.print(table)
    print(f"truth: {truth}\ncountry mmdb: {files.country}\nasn mmdb: {files.asn}", flush=True)


def _summary(plan: FarmPlan, truth: Path) -> Table:
    first, last = plan.hosts[0], plan.hosts[-1]
    ports = sorted({h.port for h in plan.hosts})
    port_text = f"port {ports[0]}" if len(ports) == 1 else f"{len(ports)} ports"
    table = Table(
        title=f"{len(plan.hosts)} simulated PACS",
        caption=f"{first.address} to {last.address}, {port_text}; truth in {truth}; Ctrl-C to stop",
    )
    table.add_column("profile")
    table.add_column("hosts", justify="right")
    for profile in Profile:
        count = sum(1 for h in plan.hosts if h.profile is profile)
        if count:
            table.add_row(str(profile), str(count))
    return table
