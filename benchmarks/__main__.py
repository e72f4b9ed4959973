"""`python -m benchmarks [scan|scan-clean|archive|distributed|load|dicomweb|survey] [options]`:
run a benchmark, write JSON + Markdown results.

- scan: pacsguard's scanner against nmap's dicom-ping on the mixed lab (`--hosts`, `--seed`).
- scan-clean: the same comparison on a lab without hostile responders (60 pynetdicom servers),
  in interleaved pairs (`--pairs`), plus per-host TLS and HTTP probing costs.
- distributed: one scan process against `--cluster local:1` and `local:2` (`--hosts`, `--seed`).
- distributed-sparse: one scan process against `--cluster local:2` on a /19 of the internet lab
  (mostly closed ports, a few tarpits), in interleaved pairs (`--pairs`, `--seed`).
- archive: the archive against Orthanc and storescp: ingest (one and several senders), sync
  counts, C-FIND latency, peak RSS (`--repeats`, `--only ingest,syncs`, `--sets 1,3`,
  `--targets`, `--compare-with REV`, `--find-studies`, `--find-queries`, `--big-study-mib`,
  `--seed`).
- load: sustained load, 6 storing + 4 querying associations against one `pacsguard serve`
  (and Orthanc for context): failures, lost instances, audit chain, latency percentiles,
  association set-up, peak RSS (`--duration`, `--no-orthanc`, `--seed`).
- dicomweb: pacsguard's DICOMweb (HTTPS, token) against Orthanc + orthanc-dicomweb: QIDO-RS,
  WADO-RS, STOW-RS (`--pairs`, `--dicomweb-studies`, `--seed`).
- survey: the end-to-end survey on the internet lab (a /16), 1 process and Dask
  `--cluster local:2`, against nmap on a random sample of addresses (`--seed`, `--network`,
  `--nmap-sample`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    archive,
    dicomweb,
    scan_clean_lab,
    scan_distributed,
    scan_vs_nmap,
    survey_internet,
)

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "which",
        nargs="?",
        default="scan",
        choices=[
            "scan",
            "scan-clean",
            "archive",
            "distributed",
            "distributed-sparse",
            "load",
            "survey",
            "dicomweb",
        ],
    )
    parser.add_argument("--hosts", type=int, default=512, help="scan: live simulated PACS")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--pairs", type=int, default=7, help="scan, scan-clean: interleaved pairs")
    parser.add_argument(
        "--repeats", type=int, default=7, help="archive: ingest rounds (interleaved pairs)"
    )
    parser.add_argument(
        "--only",
        default=",".join(archive.PARTS),
        help=f"archive: comma-separated parts to run ({', '.join(archive.PARTS)})",
    )
    parser.add_argument(
        "--sets",
        default=None,
        help="archive: comma-separated ingest sets (small, 512x512, 'small, 4 senders', ...); "
        "by number too: 1,2,3,4",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="archive: the parts run replace theirs in results/archive.json (others are kept, "
        "with when they were measured); without it a partial run writes archive-partial.*",
    )
    parser.add_argument(
        "--compare-with",
        default=None,
        help="archive: also ingest into pacsguard as of this git revision (before/after rows)",
    )
    parser.add_argument(
        "--targets", default=None, help="archive: only ingest targets whose name contains this"
    )
    parser.add_argument("--find-studies", type=int, default=100_000, help="archive: index size")
    parser.add_argument("--find-queries", type=int, default=200, help="archive: C-FIND queries")
    parser.add_argument(
        "--big-study-mib", type=int, default=2048, help="archive: study for the peak RSS test"
    )
    parser.add_argument(
        "--network", default=survey_internet.NETWORK, help="survey: the lab's loopback /16"
    )
    parser.add_argument(
        "--nmap-sample",
        type=int,
        default=survey_internet.NMAP_SAMPLE,
        help="survey: addresses nmap scans, drawn at random (0: the whole network)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="load: seconds of load")
    parser.add_argument("--no-orthanc", action="store_true", help="load: leave Orthanc out")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="load: also a row with [server] workers = N (RSS: the sum over its processes)",
    )
    parser.add_argument(
        "--dicomweb-studies", type=int, default=10_000, help="dicomweb: QIDO index size"
    )
    parser.add_argument(
        "--dicomweb-nodelay-row",
        action="store_true",
        help="dicomweb: also pacsguard with asyncio's TCP_NODELAY rule relaxed (a control)",
    )
    parser.add_argument(
        "--dicomweb-only",
        default=",".join(dicomweb.PARTS),
        help=f"dicomweb: comma-separated measurements ({', '.join(dicomweb.PARTS)}); a partial "
        "run writes dicomweb-partial.*",
    )
    parser.add_argument(
        "--dicomweb-no-stunnel",
        action="store_true",
        help="dicomweb: leave out the Orthanc+stunnel+auth row",
    )
    args = parser.parse_args()
    result: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="pacsguard-bench-") as tmp:
        if args.which == "scan":
            result = scan_vs_nmap.run(Path(tmp), args.hosts, args.seed, args.pairs)
            text = scan_vs_nmap.markdown(result)
        elif args.which == "scan-clean":
            result = scan_clean_lab.run(Path(tmp), pairs=args.pairs)
            text = scan_clean_lab.markdown(result)
        elif args.which == "distributed":
            result = scan_distributed.run(Path(tmp), args.hosts, args.seed)
            text = scan_distributed.markdown(result)
        elif args.which == "load":
            from benchmarks.archive import load

            result = load.run(
                Path(tmp),
                duration_s=args.duration,
                seed=args.seed,
                orthanc=not args.no_orthanc,
                workers=args.workers,
            )
            text = load.markdown(result)
        elif args.which == "distributed-sparse":
            result = scan_distributed.run_sparse(Path(tmp), args.seed, args.pairs)
            text = scan_distributed.markdown_sparse(result)
        elif args.which == "survey":
            result = survey_internet.run(
                Path(tmp), args.seed, network=args.network, nmap_sample=args.nmap_sample
            )
            text = survey_internet.markdown(result)
        elif args.which == "dicomweb":
            result = dicomweb.run(
                Path(tmp),
                studies=args.dicomweb_studies,
                pairs=args.pairs,
                seed=args.seed,
                pacsguard_nodelay=args.dicomweb_nodelay_row,
                orthanc_https=not args.dicomweb_no_stunnel,
                only=frozenset(args.dicomweb_only.split(",")),
            )
            text = dicomweb.markdown(result)
        else:
            result = archive.run(
                Path(tmp),
                repeats=args.repeats,
                find_studies=args.find_studies,
                find_queries=args.find_queries,
                big_study_mib=args.big_study_mib,
                seed=args.seed,
                only=set(args.only.split(",")),
                sets=_sets(args.sets),
                targets_matching=args.targets,
                compare_with=args.compare_with,
            )
            text = archive.markdown(result)
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    name = args.which
    if args.which == "archive":
        parts = set(args.only.split(","))
        if args.merge:  # this run's parts replace those of the last full results
            result = archive.merge(json.loads((RESULTS / "archive.json").read_text()), result)
            text = archive.markdown(result)
        elif parts != set(archive.PARTS) or args.sets or args.targets or args.compare_with:
            name = "archive-partial"  # a partial run never replaces the full results
    if args.which == "dicomweb" and (
        set(args.dicomweb_only.split(",")) != set(dicomweb.PARTS) or args.dicomweb_no_stunnel
    ):
        name = "dicomweb-partial"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0


def _sets(chosen: str | None) -> set[str] | None:
    if chosen is None:
        return None
    labels = [label for label, *_ in archive.INGEST_SETS]
    picked = set()
    for part in chosen.split(";" if ";" in chosen else ","):
        part = part.strip()
        picked.add(labels[int(part) - 1] if part.isdigit() else part)
    return picked


if __name__ == "__main__":
    raise SystemExit(main())
