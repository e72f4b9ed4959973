"""`python -m benchmarks [scan] [--hosts N]`: run benchmarks, write JSON + Markdown results."""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import scan_vs_nmap

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("which", nargs="?", default="scan", choices=["scan"])
    parser.add_argument("--hosts", type=int, default=512, help="live simulated PACS in the lab")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsguard-bench-") as tmp:
        result = scan_vs_nmap.run(Path(tmp), args.hosts, args.seed)
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scan.json").write_text(json.dumps(result, indent=2) + "\n")
    text = scan_vs_nmap.markdown(result)
    (RESULTS / "scan.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
