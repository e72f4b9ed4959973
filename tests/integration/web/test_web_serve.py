"""`pacsguard serve --web-port` as a process: DICOMweb over HTTPS next to DIMSE, refusing
anonymous requests, and stopping cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx

from pacsguard.archive import tokens
from tests.integration.serve.conftest import PACSGUARD, make_data_dir

from .conftest import USERS, free_ports


def test_serve_with_web_port(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data", USERS)
    web_port, dimse_port = free_ports(2)
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                PACSGUARD, "serve", "--data-dir", str(data), "--no-self-check",
                "--port", str(dimse_port), "--web-port", str(web_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not listen"
            try:
                socket.create_connection(("127.0.0.1", web_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        token = tokens.issue(data / tokens.TOKENS_FILE, "reader", days=1)[1]
        context = ssl.create_default_context(cafile=str(data / "tls" / "ca.crt"))
        with httpx.Client(base_url=f"https://127.0.0.1:{web_port}", verify=context) as client:
            assert client.get("/studies").status_code == 401
            authorized = client.get("/studies", headers={"Authorization": f"Bearer {token}"})
            assert authorized.status_code == 200
            assert authorized.json() == []
        assert f"https://127.0.0.1:{web_port}" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
