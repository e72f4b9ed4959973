"""The DICOMweb benchmark's Markdown table."""

from __future__ import annotations

from typing import Any

_HOW = """\
Both servers run on this machine, on loopback, loaded with the same synthetic data in the
same run; clients are httpx (HTTP/1.1 keep-alive), `concurrency` threads with one connection
each, on the same machine (they share its CPUs with the servers). **pacsguard** runs its
default secure profile: HTTPS (TLS 1.2+/1.3 with its first-run certificate) and an API token
checked on every request, every request audited in its hash-chained log, patient data
encrypted at rest. **Orthanc 1.10.1** (Debian) with Debian's orthanc-dicomweb 1.7 plugin runs
its defaults: plain HTTP, no authentication on loopback, no audit, no encryption at rest
(SyncStorageArea on). **Orthanc HTTPS+auth** is the same Orthanc with HTTPS (ECDSA P-256
certificate, like pacsguard's) and HTTP Basic authentication: the closest Orthanc gets to
pacsguard's transport security without further plugins (still no audit, no encryption at
rest). The first comparison is pacsguard *with* TLS, authentication, audit and encryption
against Orthanc *without* any of them. **pacsguard+nodelay** (only with `--dicomweb-nodelay-row`)
is the same `pacsguard serve` started with asyncio's TCP_NODELAY rule relaxed. It was the
what-if that found the listener leaving Nagle's algorithm on (its socket comes from
`socket.create_server`, proto 0, so asyncio did not set TCP_NODELAY, and a response written
as headers then body waited about 40 ms for the client's delayed ACK); the listener has set
TCP_NODELAY itself since, so the row is now a control that should match **pacsguard**.

Rates: QIDO-RS in requests/s, WADO-RS in MB/s (10^6 bytes of multipart body per second, whole
series retrieved), STOW-RS in instances/s (one instance per request, 200 only once durable).
Ratio = pacsguard / the other server (above 1: pacsguard faster), the median of per-round
ratios over interleaved rounds, with the range; p50/p99 latencies are pooled over all rounds.
"""


def _wrong(result: dict[str, Any], operation: str) -> list[str]:
    """Servers that answered some of this QIDO shape's queries with a wrong study count."""
    shape = operation.removeprefix("QIDO-RS ")
    return [name for name, by_shape in result["query_check"].items() if by_shape.get(shape)]


def markdown(result: dict[str, Any]) -> str:
    p = result["parameters"]
    load = result["load_average"]
    names = list(result["load"])
    others = list(result["rows"][0]["ratios"]) if result["rows"] else []
    lines = [
        "# DICOMweb: pacsguard against Orthanc 1.10 + orthanc-dicomweb",
        "",
        f"Measured {result.get('measured_at', '?')} on {p['cpus']} CPUs; load average (1, 5, "
        f"15 min) {load['before']} before, {load['after']} after: a shared, noisy machine.",
        "",
        _HOW,
        f"Data: {p['studies']:,} studies of one small image each (QIDO), {p['series']} series "
        f"of {p['instances_per_series']} 512x512 16-bit images ({p['series_mb']} MB each, "
        f"WADO; each run retrieves every series twice), STOW runs of {p['stow_per_run']} fresh "
        f"instances of {p['stow_instance_bytes']:,} bytes; {p['queries_per_shape']} queries "
        f"per shape per run; {p['pairs']} rounds, each server once per round, order rotated; "
        f"seed {p['seed']}.",
        "",
        "| operation | conc. | unit | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{n} (range)" for n in others)
        + " | "
        + " | ".join(f"{n} p50/p99 ms" for n in names)
        + " |",
        "|---" * (3 + 2 * len(names) + len(others)) + "|",
    ]
    flagged = False
    for row in result["rows"]:
        wrong = _wrong(result, row["operation"])
        mark = " (*)" if wrong else ""
        flagged = flagged or bool(wrong)
        cells = [f"{row['operation']}{mark}", str(row["concurrency"]), row["unit"]]
        cells += [f"{row[n]['rate_median']:g}" for n in names]
        for n in others:
            ratio = row["ratios"][n]
            lo, hi = ratio["range"]
            cells.append(f"**{ratio['median']:.2f}x** ({lo:.2f}-{hi:.2f})")
        cells += [f"{row[n]['p50_ms']:g} / {row[n]['p99_ms']:g}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    if flagged:
        lines += [
            "",
            "(*) not comparable: a server answered this shape's queries with the wrong "
            "studies (see below); Orthanc's DICOMweb plugin 1.7 returns no study for any "
            "PatientName query (exact or wildcard) here, while Orthanc's own /tools/find "
            "matches the same names, so its rate is that of empty answers.",
        ]
    lines += [
        "",
        "| server | bulk STOW load (instances/s, 100 per request, 2 clients) "
        "| RSS after load MiB | peak RSS (VmHWM) MiB |",
        "|---|---|---|---|",
    ]
    for name, loaded in result["load"].items():
        rss = result["rss"].get(name, {})
        lines.append(
            f"| {name} | {loaded['index_instances_per_s']:g} | {loaded['rss_after_load_mib']:g} "
            f"| {rss.get('peak_rss_mib', '?')} |"
        )
    lines += [
        "",
        "Queries answered with another number of studies than the data holds "
        f"(per shape, out of {p['queries_per_shape']}): {result['query_check']}.",
    ]
    for note in result.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"
