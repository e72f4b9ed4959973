"""A lab without hostile responders: real pynetdicom Verification SCPs on loopback addresses.

`python -m benchmarks.pynetdicom_lab --hosts 60 --base-address 127.96.0.1 --truth truth.json`
starts one pynetdicom AE per address (all in this process, as a user trying the scanner on a
handful of test servers would), every third one with `require_called_aet` (it answers
A-ASSOCIATE-RJ "called AE title not recognised" unless asked for its own title, `PYNETDICOM`,
which is not a vendor default the scanner knows). Nothing else listens on the range, so every
other address refuses the TCP connection at once and no tool waits for a time-out. The truth file
is written once every server listens; SIGTERM or SIGINT stops them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import threading
from pathlib import Path
from typing import Any, Final

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")
AE_TITLE: Final = "PYNETDICOM"


def addresses(base: str, count: int) -> list[str]:
    """`count` consecutive loopback addresses from `base`; refuses anything off loopback."""
    first = ipaddress.IPv4Address(base)
    if first not in LOOPBACK or first + (count - 1) not in LOOPBACK:
        raise SystemExit(f"{base} + {count} leaves 127.0.0.0/8: the lab binds loopback only")
    return [str(first + i) for i in range(count)]


def checks_called_ae(index: int) -> bool:
    """A third of the hosts check the called AE title."""
    return index % 3 == 2


def truth(hosts: list[str], port: int) -> dict[str, Any]:
    return {
        "schema": "pacsguard-bench-pynetdicom-lab/1",
        "port": port,
        "hosts": [
            {
                "address": address,
                "profile": "called-ae-check" if checks_called_ae(i) else "open",
                "stack": "pynetdicom",
                "expected_dicom": True,
                "accepts_any_called_ae": not checks_called_ae(i),
                "calling_ae_checked": False,
            }
            for i, address in enumerate(hosts)
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pynetdicom_lab")
    parser.add_argument("--hosts", type=int, default=60)
    parser.add_argument("--base-address", default="127.96.0.1")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--truth", type=Path, required=True)
    args = parser.parse_args()
    hosts = addresses(args.base_address, args.hosts)
    args.truth.unlink(missing_ok=True)
    servers = []
    for i, address in enumerate(hosts):
        ae = AE(ae_title=AE_TITLE)
        ae.add_supported_context(Verification)
        ae.require_called_aet = checks_called_ae(i)
        server = ae.start_server((address, args.port), block=False)
        assert server is not None  # block=False returns the running server
        servers.append(server)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    args.truth.write_text(json.dumps(truth(hosts, args.port), indent=2) + "\n")
    stop.wait()
    # Each server's loop notices a shutdown only at its next poll (0.5 s): stop them together.
    stoppers = [threading.Thread(target=server.shutdown) for server in servers]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
