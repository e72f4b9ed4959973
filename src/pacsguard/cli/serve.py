"""`pacsguard serve`: run the archive (DIMSE over TLS), secure by default; `fsck` checks it.

The archive's modules are imported inside the commands, and `serve` blocks its stop signals
before importing them: an import may start a native thread (numpy, through pydicom, starts
OpenBLAS's worker threads), and a thread that does not block SIGTERM takes the signal with its
default action, killing the archive without an orderly stop (see `_signals`).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pacsguard.cli._signals import (
    RELOAD_SIGNAL,
    STOP_SIGNALS,
    hold_stop_signals,
    wait_for_signal,
)
from pacsguard.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from pacsguard.archive.app import RunningArchive
    from pacsguard.archive.config import Settings

log = logging.getLogger(__name__)


def _settings(data_dir: Path, config: Path | None, overrides: dict[str, object]) -> Settings:
    from pacsguard.archive.config import DataLayout, load_settings
    from pacsguard.archive.security.bootstrap import initialize

    layout = DataLayout(data_dir.absolute())
    path = config or layout.config_file
    if config is None and not path.exists():
        from pacsguard.cli.init import show_initialized

        typer.echo(f"First run: {data_dir} set up as `pacsguard init` does.")
        port = overrides.get("server.dimse_port")
        show_initialized(
            initialize(data_dir), "PACSGUARD", port=port if isinstance(port, int) else 2762
        )
        typer.echo("")
    return load_settings(path, overrides=overrides)


def serve(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Data folder; initialized on first run.")
    ] = Path("pacsguard-data"),
    config: Annotated[
        Path | None, typer.Option(help="Config file (default: DATA_DIR/pacsguard.toml).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="'secure' (default) or 'lab': deliberately open, loopback only."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address of the TLS listener.")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the TLS listener (2762).")] = None,
    plaintext_port: Annotated[
        int | None, typer.Option(help="Also listen without TLS on loopback, on this port.")
    ] = None,
    web_port: Annotated[
        int | None,
        typer.Option(help="Serve DICOMweb (HTTPS) on this port ([dicomweb] enabled, port)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--self-check/--no-self-check", help="Scan ourselves at start-up.")
    ] = True,
    log_level: Annotated[
        str,
        typer.Option(
            help="Journal (stderr) level: debug, info, warning or error. No level logs patient "
            "data: exceptions are logged by class, without their messages."
        ),
    ] = "warning",
) -> None:
    """Run the archive until SIGTERM or Ctrl-C.

    These options override the config file, which holds everything else (worker processes as
    [server] workers, limits, DICOMweb, users, registered AEs), each setting commented;
    `pacsguard init`, or the first `serve`, writes it."""
    hold_stop_signals()  # first: before any import can start a thread (module docstring)
    from pacsguard.archive.journal import LEVELS, configure_journal

    if log_level.lower() not in LEVELS:
        raise UsageError(f"--log-level {log_level!r}: expected one of {', '.join(LEVELS)}")
    configure_journal(log_level.lower())
    from pacsguard.archive.app import start_archive
    from pacsguard.archive.config import DataLayout, load_settings
    from pacsguard.archive.reload import reload_archive

    overrides: dict[str, object] = {
        "profile": profile,
        "server.host": host,
        "server.dimse_port": port,
        "server.plaintext_port": plaintext_port,
        "dicomweb.port": web_port,
        "dicomweb.enabled": None if web_port is None else True,
    }
    settings = _settings(data_dir, config, overrides)
    console = Console()
    config_file = config or DataLayout(data_dir.absolute()).config_file
    if settings.server.workers > 1:  # a supervisor and its workers (archive.workers)
        from pacsguard.archive.workers import Supervisor

        with _start_errors_explained():
            Supervisor(
                settings,
                config_file.absolute(),
                overrides,
                check,
                lambda text: console.print(text, highlight=False),
            ).run()
        return
    # A C-STORE object too large to keep in memory is received into a temporary file before the
    # archive stores it: keep those (plaintext, in transit) in the private data folder, not /tmp.
    incoming = settings.storage.data_dir / "incoming"
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in incoming.iterdir():  # left by a crash: never acknowledged
        if stale.is_file():  # (folders: those of worker processes, each sweeps its own)
            stale.unlink(missing_ok=True)
    tempfile.tempdir = str(incoming)
    with _start_errors_explained():
        running = start_archive(settings)
    try:
        console.print(
            f"pacsguard archive {settings.server.ae_title!r} ({settings.profile} profile) on "
            + ", ".join(str(e) for e in running.endpoints),
            highlight=False,
        )
        console.print(f"audit log: {settings.audit.log_path}", highlight=False)
        if check:
            _check_ourselves(running, settings.profile, console)
        # The start-up heap (modules, pydicom's dictionary, SQLAlchemy's metadata) lives as
        # long as the process: keep it out of the collector, so that a full collection, which
        # a burst of allocations triggers (a 1 MiB identifier is 40,000 objects), does not walk
        # it with the GIL held (250-500 ms of event-loop stall measured without this).
        gc.collect()
        gc.freeze()
        console.print("ready", highlight=False)

        def reload(requested_by: str) -> str:
            load = partial(load_settings, config_file, overrides=overrides)
            return reload_archive(running, load, running.audit, requested_by).summary()

        while (received := wait_for_signal()) not in STOP_SIGNALS:
            try:  # an operator request must never take the archive down
                _answer_requests(received, settings.storage.data_dir, running, reload, console)
            except Exception:
                log.exception("operator request failed")
    finally:
        running.stop()


@contextmanager
def _start_errors_explained() -> Iterator[None]:
    """A port that cannot be bound, or an audit log another process holds, as a usage error
    saying what to do (exit 2), not a traceback."""
    from pacsguard.errors import AuditLogError

    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _BIND_ERRORS:
            raise
        raise ConfigError(
            f"cannot listen: {exc}. Stop what holds that address (another `pacsguard serve`?) "
            "or choose another port: --port ([server] dimse_port), --plaintext-port "
            "([server] plaintext_port), --web-port ([dicomweb] port); ports below 1024 need root"
        ) from None
    except AuditLogError as exc:
        raise UsageError(f"the archive cannot start: {exc}") from None


_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _check_ourselves(running: RunningArchive, profile: str, console: Console) -> None:
    """Scan our own endpoints as a stranger and say what was seen; ConfigError (the start
    fails) when, in the secure profile, DICOMweb answered a search without a token."""
    from pacsguard.archive.selfcheck import describe_web, refusal, self_check, web_reports, worst
    from pacsguard.scan.model import Severity

    reports = self_check(running)
    found = sorted({f.id for r in reports for f in r.findings})
    level = worst(reports)
    if level is None:
        verdict = "no findings"
    elif level is Severity.INFO:
        verdict = "nothing above informational"
    else:
        verdict = f"worst finding: {level.value}"
    console.print(
        f"self-check (scanned as a stranger): {verdict}"
        + (f" ({', '.join(found)})" if found else ""),
        highlight=False,
    )
    for report in web_reports(reports):
        console.print(f"self-check {describe_web(report)}", highlight=False)
    reason = refusal(reports, profile)
    if reason is not None:
        raise ConfigError(reason)
    if level is not None and level.rank >= Severity.HIGH.rank:
        console.print(
            "[bold red]This archive is open to strangers.[/] "
            + ("(lab profile: expected)" if profile == "lab" else "")
        )


def _answer_requests(
    received: int,
    data_dir: Path,
    running: RunningArchive,
    reload: Callable[[str], str],
    console: Console,
) -> None:
    """Carry out what the signal asks: SIGHUP reloads; SIGUSR1 answers pending request files."""
    from pacsguard.archive.control import REQUEST, answer_reload, answer_unlock

    if received == RELOAD_SIGNAL:
        try:
            console.print(reload("SIGHUP"), highlight=False)
        except UsageError as exc:
            console.print(f"config reload refused, keeping the running one: {exc}", highlight=False)
        return
    answered = answer_reload(data_dir, reload)
    if answered is not None:
        console.print(
            answered[1] if answered[0] else f"config reload refused: {answered[1]}", highlight=False
        )
    if (data_dir / REQUEST).exists():
        console.print(_lifted(answer_unlock(data_dir, running.gate.lift_lockouts)), highlight=False)


def _lifted(sources: list[str]) -> str:
    return ("lockout lifted for " + ", ".join(sources)) if sources else "no lockout to lift"


def unlock(
    addresses: Annotated[
        list[str] | None,
        typer.Argument(help="Source addresses to let in again (default: every locked source)."),
    ] = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The archive's data folder.")] = Path(
        "pacsguard-data"
    ),
) -> None:
    """Lift lockouts in the running archive now, instead of waiting for them to expire."""
    from pacsguard.archive.control import ask_unlock

    for address in addresses or ():
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise UsageError(
                f"{address!r} is not an IP address (lockouts are per source address)"
            ) from None
    lifted = ask_unlock(data_dir.absolute(), addresses or None)
    Console().print(_lifted(lifted) + " (audited)", highlight=False)


def fsck(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The archive's data folder.")] = Path(
        "pacsguard-data"
    ),
    config: Annotated[
        Path | None, typer.Option(help="Config file (default: DATA_DIR/pacsguard.toml).")
    ] = None,
    verify_hashes: Annotated[
        bool, typer.Option("--verify-hashes/--no-verify-hashes", help="Read every blob.")
    ] = True,
) -> None:
    """Check that index and blob store agree (exit 1 when they do not)."""
    from pacsguard.archive.app import open_storage
    from pacsguard.archive.config import DataLayout, load_settings
    from pacsguard.archive.fsck import run_fsck

    layout = DataLayout(data_dir.absolute())
    settings = load_settings(config or layout.config_file)
    index, blobs = open_storage(settings)
    try:
        report = run_fsck(index, blobs, verify_hashes=verify_hashes)
    finally:
        index.close()
    console = Console()
    console.print(
        f"fsck: {report.checked} instances in the index; "
        f"{len(report.missing)} missing blobs, {len(report.orphans)} orphan blobs, "
        f"{len(report.mismatches)} size/hash mismatches, {len(report.unreadable)} unreadable"
        + ("" if report.verified else " (hashes not verified)"),
        highlight=False,
    )
    for key in report.missing[:20]:
        console.print(f"  missing blob: {key}", highlight=False)
    for key in report.orphans[:20]:
        console.print(f"  orphan blob: {key}", highlight=False)
    for mismatch in report.mismatches[:20]:
        console.print(f"  mismatch: {mismatch}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def reload(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The archive's data folder.")] = Path(
        "pacsguard-data"
    ),
) -> None:
    """Make the running archive re-read its config (users, AEs, roles); audited."""
    from pacsguard.archive.control import ask_reload

    applied, message = ask_reload(data_dir.absolute())
    if not applied:
        raise UsageError(f"the archive refused the config and keeps the running one: {message}")
    Console().print(message + " (audited)", highlight=False)
