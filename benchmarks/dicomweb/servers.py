"""The two DICOMweb servers under test, each started as its own process on loopback.

- `pacsguard serve` from a data folder made by `pacsguard init` (the secure default profile,
  untouched): DICOMweb over HTTPS with the first-run certificate, every request carrying an API
  token issued by `pacsguard token issue` for the first-run admin user.
- Debian's Orthanc 1.10 with Debian's orthanc-dicomweb plugin: its defaults (HTTP, no
  authentication on loopback since RemoteAccessAllowed is false, SyncStorageArea true, 50 HTTP
  threads) plus the plugin, storage in a folder of its own.
- The same Orthanc with HTTP Basic authentication ("AuthenticationEnabled", one registered
  user) behind Debian's stunnel4 for HTTPS (an ECDSA P-256 certificate from `openssl`, like
  pacsguard's; TLS 1.2-1.3). Orthanc's own "SslEnabled" was tried first: Debian's Orthanc
  1.10.1 completes the TLS handshake, then closes every connection without an answer (curl:
  "Empty reply from server"), with an RSA or an EC key alike.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.interop.peers import LOOPBACK, executable, free_port, peer_env, wait_for_port

from benchmarks.archive.peers import Processes

_TOKEN_LINE = re.compile(r"^\s{4}(\S+)\s*$", re.MULTILINE)
#: `pacsguard serve` with asyncio's TCP_NODELAY rule relaxed, for the "what if" variant: the
#: web listener comes from `socket.create_server` (proto 0), so its connections have proto 0
#: and asyncio's `_set_nodelay` (which requires proto == IPPROTO_TCP) leaves Nagle on.
_NODELAY_SERVE = """
import socket, sys
import asyncio.base_events as base_events
def _set_nodelay(sock):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
base_events._set_nodelay = _set_nodelay
from pacsguard.cli import main
sys.argv[0] = "pacsguard"
sys.exit(main())
"""


def dicomweb_plugin() -> Path:
    found = sorted(Path("/usr/share/orthanc/plugins").glob("libOrthancDicomWeb.so*"))
    if not found:
        raise RuntimeError("Debian's orthanc-dicomweb is not installed (apt-get install it)")
    return found[0]


def vm_kib(pid: int, name: str) -> int:
    """VmRSS or VmHWM (peak RSS) of `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for {pid}")


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


def _wait(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    try:
        wait_for_port(LOOPBACK, port, 90.0)
    except Exception as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{log.name}: nothing listens on {port}: {tail}") from exc
    if proc.poll() is not None:
        raise RuntimeError(f"{log.name}: exited: {log.read_text(errors='replace')[-2000:]}")


@dataclass
class Server:
    """What the workloads need of a running server."""

    name: str
    base_url: str
    headers: dict[str, str]
    verify: ssl.SSLContext | bool
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """An HTTP/1.1 keep-alive client (no proxies from the environment)."""
        return httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            verify=self.verify,
            timeout=timeout,
            trust_env=False,
        )


def start_pacsguard(
    work: Path,
    processes: Processes,
    *,
    nodelay: bool = False,
    pacsguard: str | None = None,
    name: str = "pacsguard",
) -> Server:
    """`pacsguard serve`; with `nodelay`, TCP_NODELAY forced on its connections (not the
    shipped code: a measurement of what setting it would change); `pacsguard`: another
    installation's executable (e.g. an older revision's), `name` its data folder and label."""
    data_dir = work / ("pacsguard-nodelay-data" if nodelay else f"{name}-data")
    executable = pacsguard or _pacsguard()
    subprocess.run(
        [executable, "init", "--data-dir", str(data_dir)],
        env=peer_env(), capture_output=True, check=True,
    )  # fmt: skip
    admin = _admin_user(data_dir / "pacsguard.toml")
    issued = subprocess.run(
        [executable, "token", "issue", "--user", admin, "--days", "2",
         "--data-dir", str(data_dir)],
        env=peer_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = _TOKEN_LINE.search(issued.stdout)
    if found is None:
        raise RuntimeError(f"no token in `pacsguard token issue` output: {issued.stdout!r}")
    dimse_port, web_port = free_port(), free_port()
    log = work / f"{data_dir.name}.serve.log"
    launcher = [sys.executable, "-c", _NODELAY_SERVE] if nodelay else [executable]
    argv = [
        *launcher, "serve", "--data-dir", str(data_dir), "--port", str(dimse_port),
        "--web-port", str(web_port), "--no-self-check",
    ]  # fmt: skip
    proc = processes.start(argv, log, env=peer_env())
    _wait(proc, web_port, log)
    tls = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))
    return Server(
        "pacsguard+nodelay" if nodelay else name,
        f"https://{LOOPBACK}:{web_port}",
        {"Authorization": f"Bearer {found.group(1)}"},
        tls,
        proc,
    )


def _admin_user(config: Path) -> str:
    import tomllib

    users = tomllib.loads(config.read_text(encoding="utf-8")).get("users", {})
    admins = [name for name, user in users.items() if "admin" in user.get("roles", [])]
    if not admins:
        raise RuntimeError(f"no admin user in {config}")
    return str(admins[0])


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """(key, certificate) PEM files for 127.0.0.1."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, check=True,
    )  # fmt: skip
    return key, cert


def start_orthanc(work: Path, processes: Processes, *, secured: bool = False) -> Server:
    folder = work / ("orthanc-https" if secured else "orthanc")
    folder.mkdir(parents=True)
    http_port, dicom_port = free_port(), free_port()
    config: dict[str, object] = {
        "Name": "pacsguard-bench-dicomweb",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,  # Orthanc's default, stated: loopback only
        "Plugins": [str(dicomweb_plugin())],
    }
    headers: dict[str, str] = {}
    verify: ssl.SSLContext | bool = False
    scheme = "http"
    if secured:
        password = secrets.token_urlsafe(18)
        config.update(AuthenticationEnabled=True, RegisteredUsers={"bench": password})
        headers["Authorization"] = "Basic " + base64.b64encode(f"bench:{password}".encode()).decode(
            "ascii"
        )
        scheme = "https"
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    log = folder / "orthanc.log"
    proc = processes.start([str(executable("Orthanc")), str(path)], log, cwd=folder, env=peer_env())
    _wait(proc, http_port, log)
    port = http_port
    if secured:
        port, verify = _stunnel(folder, http_port, processes)
    name = "Orthanc+stunnel+auth" if secured else "Orthanc"
    root = f"{scheme}://{LOOPBACK}:{port}"
    server = Server(name, root + "/dicom-web", headers, verify, proc)
    with httpx.Client(trust_env=False, timeout=30, headers=headers, verify=verify) as client:
        client.get(root + "/system").raise_for_status()
    return server


def _stunnel(folder: Path, backend: int, processes: Processes) -> tuple[int, ssl.SSLContext]:
    key, cert = _self_signed(folder)
    port = free_port()
    config = folder / "stunnel.conf"
    config.write_text(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n\n[https]\n"
        f"accept = {LOOPBACK}:{port}\nconnect = {LOOPBACK}:{backend}\n"
        f"cert = {cert}\nkey = {key}\nsslVersionMin = TLSv1.2\n"
    )
    log = folder / "stunnel.log"
    proc = processes.start([str(executable("stunnel4")), str(config)], log, env=peer_env())
    _wait(proc, port, log)
    return port, ssl.create_default_context(cafile=str(cert))


def orthanc_rest(server: Server, path: str) -> object:
    root = server.base_url.removesuffix("/dicom-web")
    with httpx.Client(
        trust_env=False, timeout=60, headers=server.headers, verify=server.verify
    ) as client:
        answer = client.get(root + path)
        answer.raise_for_status()
        return answer.json()
