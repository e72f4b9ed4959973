"""What a new user sees when `pacsguard serve` cannot start: a sentence saying what to do
(exit 2), not a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.serve.conftest import PACSGUARD, free_port, make_data_dir, start_serve


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACSGUARD, "serve", "--no-self-check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_second_serve_on_the_same_folder_or_port_says_why_it_cannot_start(
    tmp_path: Path,
) -> None:
    data, port = make_data_dir(tmp_path / "data"), free_port()
    first = start_serve(data, port, tmp_path / "serve.log")
    try:
        same_folder = _serve("--data-dir", str(data), "--port", str(free_port()))
        assert same_folder.returncode == 2, same_folder.stderr
        assert "Traceback" not in same_folder.stderr
        assert "already running on this data folder" in same_folder.stderr

        tls_port = free_port()
        same_port = _serve(
            "--data-dir", str(tmp_path / "other"), "--port", str(tls_port),
            "--plaintext-port", str(port),
        )  # fmt: skip
        assert same_port.returncode == 2, same_port.stderr
        assert "Traceback" not in same_port.stderr
        assert "cannot listen" in same_port.stderr and str(port) in same_port.stderr
        assert "--plaintext-port" in same_port.stderr
        # A first serve set up its (fresh) folder as `pacsguard init` does, and said so.
        assert "set up as `pacsguard init` does" in same_port.stdout
        assert f"localhost {tls_port} FILE.dcm" in same_port.stdout  # its --port, not 2762
        for said in ("shown now and never again", "storescu +tla", "Back up", "tail -n 3"):
            assert said in same_port.stdout, said
    finally:
        first.terminate()
        first.wait(timeout=60)
