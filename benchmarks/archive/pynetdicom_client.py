"""A default pynetdicom storage client, as a new user writes one: Nagle's algorithm left on
(pynetdicom does not set TCP_NODELAY), one association, every file of a folder sent by
`send_c_store`; optional PS3.7 username + password. Prints one JSON line: the latency of each
C-STORE in milliseconds. Exit status 1 if any store failed.

    python -m benchmarks.archive.pynetdicom_client HOST PORT CALLED CALLING FOLDER
        [--user U --password P] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import UserIdentityNegotiation


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("called")
    parser.add_argument("calling")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--limit", type=int, help="send only the first N files")
    args = parser.parse_args()
    files = sorted(p for p in args.folder.iterdir() if p.is_file())[: args.limit]
    datasets = [dcmread(p) for p in files]
    ae = AE(ae_title=args.calling)
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    contexts = [build_context(c, syntaxes) for c in classes]
    extended = []
    if args.user is not None:
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = args.user.encode()
        identity.secondary_field = (args.password or "").encode()
        extended.append(identity)
    assoc = ae.associate(
        args.host, args.port, contexts, ae_title=args.called, ext_neg=extended or None
    )
    if not assoc.is_established:
        print("association not established", file=sys.stderr)
        return 1
    latencies: list[float] = []
    failed = 0
    try:
        for ds in datasets:
            started = time.perf_counter()
            status = assoc.send_c_store(ds)
            latencies.append((time.perf_counter() - started) * 1000.0)
            if not status or status.Status != 0x0000:
                failed += 1
    finally:
        assoc.release()
    print(json.dumps({"latencies_ms": [round(x, 3) for x in latencies], "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
