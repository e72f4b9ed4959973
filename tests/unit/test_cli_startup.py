"""`pacsguard --help` and `pacsguard scan` start without the archive's stack.

Start-up time is what users feel, but timing is not deterministic on a loaded machine; what
makes it slow is. Each check runs in a fresh interpreter and looks at `sys.modules`: the
database stack (SQLAlchemy, Alembic, psycopg), cryptography, and pydicom/pynetdicom (loaded
once a port answers) must not be there, nor rich when no table or progress bar is drawn, nor
the GeoIP reader and the XML parser unless a database or an XML target file is given.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pacsguard.cli import SUBCOMMANDS, load_subcommand

HEAVY = frozenset(
    {
        "sqlalchemy",
        "alembic",
        "psycopg",
        "cryptography",
        "argon2",
        "jwt",
        "pydicom",
        "pynetdicom",
        "numpy",
        "rich",
        "cvss",
        "maxminddb",  # only with --geoip-country / --geoip-asn
        "defusedxml",  # only for an XML -iL file
        "pydantic",  # typer's value conversion; pacsguard.cli._coerce does without for ours
    }
)


def modules_after(code: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run `code` in a fresh interpreter; the top-level packages it had imported at the end."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        "print('MODULES=' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES="))), done


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_importing_the_cli_and_the_scanner_loads_nothing_heavy() -> None:
    loaded, _ = modules_after(
        "import pacsguard.cli, pacsguard.cli.scan, pacsguard.scan.probe, "
        "pacsguard.scan.scheduler, pacsguard.scan.checks, pacsguard.report.jsonl, "
        "pacsguard.report.table"
    )
    assert loaded & HEAVY == set()


def test_help_imports_no_subcommand() -> None:
    loaded, done = modules_after(
        "from pacsguard.cli import main\n"
        "code = main(['--help'])\n"
        "assert code == 0, code\n"
        "from pacsguard.cli import SUBCOMMANDS\n"
        "assert not {e.module for e in SUBCOMMANDS.values()} & set(sys.modules), sys.modules"
    )
    assert loaded & HEAVY == set()
    for name in SUBCOMMANDS:
        assert name in done.stdout


def test_scanning_a_closed_port_loads_nothing_heavy(closed_port: int) -> None:
    loaded, done = modules_after(
        "from pacsguard.cli import main\n"
        f"code = main(['scan', '127.0.0.1', '-p', '{closed_port}'])\n"
        "assert code == 0, code\n"
        "assert 'pacsguard.scan.http_probe' not in sys.modules  # HTTP tier: for web targets"
    )
    assert loaded & HEAVY == set()
    record = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("{")))
    assert (record["port"], record["association"]["status"]) == (closed_port, "refused")


def test_a_scan_of_several_targets_loads_the_dicom_stack_before_probing() -> None:
    """So that the first answering port does not stall the probes in flight with imports."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = f"{a.getsockname()[1]},{b.getsockname()[1]}"
        loaded, _ = modules_after(
            "from pacsguard.cli import main\n"
            f"code = main(['scan', '127.0.0.1', '-p', '{ports}'])\n"
            "assert code == 0, code"
        )
    assert {"pydicom", "pynetdicom"} <= loaded
    assert loaded & {"sqlalchemy", "alembic", "psycopg", "cryptography", "rich"} == set()


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_help_summaries_match_the_subcommands(name: str) -> None:
    command = load_subcommand(name)
    assert command.name == name
    assert command.get_short_help_str(limit=500) == SUBCOMMANDS[name].summary


def test_the_archive_loads_the_web_stack_only_to_serve_dicomweb() -> None:
    # `pacsguard serve` without [dicomweb]: no Starlette, uvicorn or httpx in its memory.
    loaded, _ = modules_after(
        "import pacsguard.cli.serve, pacsguard.archive.app, pacsguard.archive.reload, "
        "pacsguard.archive.selfcheck"
    )
    assert loaded & {"starlette", "uvicorn", "httpx", "multipart", "python_multipart"} == set()


def _command_paths() -> list[list[str]]:
    """Every subcommand and sub-subcommand, as the words a user types before `--help`."""
    paths: list[list[str]] = []
    for name in SUBCOMMANDS:
        paths.append([name])
        group = load_subcommand(name)
        paths.extend([name, sub] for sub in getattr(group, "commands", {}))
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_help_is_plain_text_with_brackets_kept(path: list[str]) -> None:
    # rich's markup ate "[dicomweb]" from `serve --help` and broke docstrings mid-sentence.
    from typer.testing import CliRunner

    from pacsguard.cli import app

    done = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"Usage: pacsguard {' '.join(path)} ")
    assert "│" not in done.output and "\\[" not in done.output
    if path == ["serve"]:
        assert "([dicomweb] enabled, port)" in " ".join(done.output.split())
    # A group lists each subcommand's first paragraph whole (click cut them at 45 characters).
    group = load_subcommand(path[0])
    if len(path) == 1 and getattr(group, "commands", None):
        squeezed = "".join(done.output.split())
        for sub in group.commands.values():
            first = (sub.help or "").split("\n\n", 1)[0]
            assert "".join(first.split()) in squeezed, sub.name


def test_demo_help_loads_neither_the_lab_nor_the_archive() -> None:
    # It imported the archive, the lab and the scanner (over a second) just to print its help.
    loaded, done = modules_after(
        "from pacsguard.cli import main\n"
        "code = main(['demo', '--help'])\n"
        "assert code == 0, code\n"
        "assert 'pacsguard.archive.demo' not in sys.modules"
    )
    assert "--serve" in done.stdout
    assert loaded & HEAVY == set()
